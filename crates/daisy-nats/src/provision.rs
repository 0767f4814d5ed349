//! Creates, opens, lists and deletes the JetStream streams and KV buckets of a run.
//!
//! Owns the *configuration* of a run's streams and buckets; their names come from
//! [`daisy_proto::subjects`], and what travels through them is the other modules' business.
//!
//! ```text
//!  DAISY_<run>_BLOCKS   WorkQueue, file, discard new, no message limit   daisy.v1.<run>.block.>
//!  DAISY_<run>_EVENTS   Limits, file, duplicate window 2 min             daisy.v1.<run>.event.>
//!  DAISY_<run>_DLQ      WorkQueue, file                                  $JS.EVENT.ADVISORY.CONSUMER.
//!                                                                          MAX_DELIVERIES.DAISY_<run>_BLOCKS.>
//!  KV DAISY_<run>_META     history 1, no expiry        spec, status
//!  KV DAISY_<run>_LEASE    history 1, max_age = lease TTL      leader
//!  KV DAISY_<run>_WORKERS  history 1, max_age = liveness TTL   <worker id>
//! ```
//!
//! Invariant: provisioning is idempotent. Creating a stream or bucket with the configuration it
//! already has succeeds on the server, so two processes may provision one run at once. If a
//! stream exists with another configuration (an older daisy, another lease TTL), the existing
//! one is kept and a warning names it: the first provisioner's settings win.
//!
//! Why the block stream has no `max_msgs`: a WorkQueue stream with a message limit and
//! DiscardOld silently drops undelivered work (notes B.2); the scheduler bounds the blocks in
//! flight itself (windowed dispatch), and DiscardNew makes any operator-set limit refuse
//! publishes instead of dropping blocks.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{CreateStreamErrorKind, KeyValueErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use daisy_proto::RunId;
use daisy_proto::subjects;
use futures::TryStreamExt;
use tracing::instrument;

use crate::Nats;

/// The duplicate window of the block and event streams: JetStream's default, stated so that a
/// server default never changes it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Settings of a run's streams and buckets, fixed when the run is first provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    /// How long a leader lease lives without renewal (the lease bucket's `max_age`).
    pub lease_ttl: Duration,
    /// How long a worker counts as live without refreshing its key (the workers bucket's
    /// `max_age`).
    pub worker_ttl: Duration,
    /// Replicas of every stream and bucket (1 on a single server, 3 on a cluster).
    pub replicas: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            lease_ttl: Duration::from_secs(10),
            worker_ttl: Duration::from_secs(30),
            replicas: 1,
        }
    }
}

/// Why a run's streams or buckets could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A stream could not be created.
    #[error("could not create stream {name}")]
    CreateStream {
        /// The stream.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// A KV bucket could not be created.
    #[error("could not create kv bucket {name}")]
    CreateBucket {
        /// The bucket.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    /// A stream could not be opened (it does not exist: the run was never provisioned, or it
    /// was deleted).
    #[error("could not open stream {name}: is the run provisioned?")]
    OpenStream {
        /// The stream.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// A KV bucket could not be opened.
    #[error("could not open kv bucket {name}: is the run provisioned?")]
    OpenBucket {
        /// The bucket.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
}

/// Why [`Nats::delete_run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRunError {
    /// A stream could not be deleted.
    #[error("could not delete stream {name} of run {run}")]
    Stream {
        /// The run.
        run: RunId,
        /// The stream.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::DeleteStreamError,
    },
    /// A KV bucket could not be deleted.
    #[error("could not delete kv bucket {name} of run {run}")]
    Bucket {
        /// The run.
        run: RunId,
        /// The bucket.
        name: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
}

/// Why [`Nats::list_runs`] failed.
#[derive(Debug, thiserror::Error)]
#[error("could not list jetstream streams")]
pub struct ListRunsError(#[source] pub async_nats::jetstream::context::StreamsError);

/// Handles to a run's streams and buckets; cheap to clone.
#[derive(Debug, Clone)]
pub struct RunStreams {
    /// The connection.
    pub(crate) nats: Nats,
    /// The run.
    pub(crate) run: RunId,
    /// `DAISY_<run>_BLOCKS`.
    pub(crate) blocks: stream::Stream,
    /// `DAISY_<run>_EVENTS`.
    pub(crate) events: stream::Stream,
    /// `DAISY_<run>_DLQ`.
    pub(crate) dlq: stream::Stream,
    /// `DAISY_<run>_META`.
    pub(crate) meta: kv::Store,
    /// `DAISY_<run>_LEASE`.
    pub(crate) lease: kv::Store,
    /// `DAISY_<run>_WORKERS`.
    pub(crate) workers: kv::Store,
}

impl RunStreams {
    /// The run.
    pub fn run(&self) -> &RunId {
        &self.run
    }

    /// The connection.
    pub fn nats(&self) -> &Nats {
        &self.nats
    }
}

impl Nats {
    /// Creates the streams and buckets of `run` where missing and opens them. Idempotent: safe
    /// to call again, and from several processes at once.
    ///
    /// # Errors
    /// [`ProvisionError`] naming the stream or bucket that could not be created.
    #[instrument(level = "debug", skip_all, fields(%run), err)]
    pub async fn provision_run(
        &self,
        run: &RunId,
        settings: &RunSettings,
    ) -> Result<RunStreams, ProvisionError> {
        let blocks = self.ensure_stream(block_stream_config(run, settings)).await?;
        let events = self.ensure_stream(event_stream_config(run, settings)).await?;
        let dlq = self.ensure_stream(dlq_stream_config(run, settings)).await?;
        let meta =
            self.ensure_bucket(bucket_config(subjects::meta_bucket(run), None, settings)).await?;
        let lease = self
            .ensure_bucket(bucket_config(
                subjects::lease_bucket(run),
                Some(settings.lease_ttl),
                settings,
            ))
            .await?;
        let workers = self
            .ensure_bucket(bucket_config(
                subjects::workers_bucket(run),
                Some(settings.worker_ttl),
                settings,
            ))
            .await?;
        tracing::info!(%run, "run streams provisioned");
        Ok(RunStreams {
            nats: self.clone(),
            run: run.clone(),
            blocks,
            events,
            dlq,
            meta,
            lease,
            workers,
        })
    }

    /// Opens the streams and buckets of an already provisioned run without creating anything
    /// (for `daisy status` and workers, which must not create a run by accident).
    ///
    /// # Errors
    /// [`ProvisionError::OpenStream`] or [`ProvisionError::OpenBucket`] if one is missing.
    #[instrument(level = "debug", skip_all, fields(%run), err(level = "debug"))]
    pub async fn open_run(&self, run: &RunId) -> Result<RunStreams, ProvisionError> {
        let open_stream = |name: String| async move {
            self.jetstream
                .get_stream(&name)
                .await
                .map_err(|source| ProvisionError::OpenStream { name, source })
        };
        let open_bucket = |name: String| async move {
            self.jetstream
                .get_key_value(name.clone())
                .await
                .map_err(|source| ProvisionError::OpenBucket { name, source })
        };
        Ok(RunStreams {
            nats: self.clone(),
            run: run.clone(),
            blocks: open_stream(subjects::block_stream(run)).await?,
            events: open_stream(subjects::event_stream(run)).await?,
            dlq: open_stream(subjects::dlq_stream(run)).await?,
            meta: open_bucket(subjects::meta_bucket(run)).await?,
            lease: open_bucket(subjects::lease_bucket(run)).await?,
            workers: open_bucket(subjects::workers_bucket(run)).await?,
        })
    }

    /// Deletes every stream and bucket of `run` (with their messages and consumers). Missing
    /// ones are skipped, so deleting twice is fine. Returns how many were deleted.
    ///
    /// # Errors
    /// [`DeleteRunError`] naming the first stream or bucket that could not be deleted.
    #[instrument(level = "debug", skip_all, fields(%run), err)]
    pub async fn delete_run(&self, run: &RunId) -> Result<usize, DeleteRunError> {
        let mut deleted = 0;
        for name in subjects::streams(run) {
            match self.jetstream.delete_stream(&name).await {
                Ok(_) => deleted += 1,
                Err(source) if is_stream_not_found(&source) => {}
                Err(source) => {
                    return Err(DeleteRunError::Stream { run: run.clone(), name, source });
                }
            }
        }
        for bucket in subjects::buckets(run) {
            match self.jetstream.delete_key_value(&bucket).await {
                Ok(_) => deleted += 1,
                Err(source) if is_bucket_not_found(&source) => {}
                Err(source) => {
                    return Err(DeleteRunError::Bucket { run: run.clone(), name: bucket, source });
                }
            }
        }
        tracing::info!(%run, deleted, "run deleted");
        Ok(deleted)
    }

    /// The runs on this server, found by their block streams, sorted by id.
    ///
    /// # Errors
    /// [`ListRunsError`] if the stream names could not be listed.
    #[instrument(level = "debug", skip_all, err)]
    pub async fn list_runs(&self) -> Result<Vec<RunId>, ListRunsError> {
        let names: Vec<String> =
            self.jetstream.stream_names().try_collect().await.map_err(ListRunsError)?;
        let mut runs: Vec<RunId> =
            names.iter().filter_map(|name| subjects::run_of_block_stream(name)).collect();
        runs.sort();
        Ok(runs)
    }

    /// Creates a stream, or opens it if it exists (with this or another configuration).
    async fn ensure_stream(
        &self,
        config: stream::Config,
    ) -> Result<stream::Stream, ProvisionError> {
        let name = config.name.clone();
        match self.jetstream.create_stream(config).await {
            Ok(created) => Ok(created),
            Err(error) if is_name_in_use(error.kind()) => {
                tracing::warn!(
                    stream = %name,
                    "stream exists with another configuration, keeping the existing one"
                );
                self.jetstream
                    .get_stream(&name)
                    .await
                    .map_err(|source| ProvisionError::OpenStream { name, source })
            }
            Err(source) => Err(ProvisionError::CreateStream { name, source }),
        }
    }

    /// Creates a KV bucket, or opens it if it exists with another configuration.
    async fn ensure_bucket(&self, config: kv::Config) -> Result<kv::Store, ProvisionError> {
        let name = config.bucket.clone();
        match self.jetstream.create_key_value(config).await {
            Ok(created) => Ok(created),
            Err(error) => {
                let in_use = std::error::Error::source(&error)
                    .and_then(|inner| {
                        inner.downcast_ref::<async_nats::jetstream::context::CreateStreamError>()
                    })
                    .is_some_and(|inner| is_name_in_use(inner.kind()));
                if !in_use {
                    return Err(ProvisionError::CreateBucket { name, source: error });
                }
                tracing::warn!(
                    bucket = %name,
                    "kv bucket exists with another configuration, keeping the existing one"
                );
                self.jetstream
                    .get_key_value(name.clone())
                    .await
                    .map_err(|source| ProvisionError::OpenBucket { name, source })
            }
        }
    }
}

/// Whether a create failed because the name is taken by a stream with another configuration.
fn is_name_in_use(kind: CreateStreamErrorKind) -> bool {
    matches!(kind, CreateStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NAME_EXIST)
}

/// Whether a bucket delete failed because there was no bucket.
fn is_bucket_not_found(error: &async_nats::jetstream::context::KeyValueError) -> bool {
    error.kind() == KeyValueErrorKind::JetStream
        && std::error::Error::source(error)
            .and_then(|inner| {
                inner.downcast_ref::<async_nats::jetstream::context::DeleteStreamError>()
            })
            .is_some_and(is_stream_not_found)
}

/// Whether a delete failed because there was nothing to delete.
fn is_stream_not_found(error: &async_nats::jetstream::context::DeleteStreamError) -> bool {
    matches!(
        error.kind(),
        async_nats::jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

fn block_stream_config(run: &RunId, settings: &RunSettings) -> stream::Config {
    stream::Config {
        name: subjects::block_stream(run),
        description: Some(format!("daisy blocks to process in run {run}")),
        subjects: vec![subjects::block_subjects(run)],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        ..stream::Config::default()
    }
}

fn event_stream_config(run: &RunId, settings: &RunSettings) -> stream::Config {
    stream::Config {
        name: subjects::event_stream(run),
        description: Some(format!("daisy events recording run {run}")),
        subjects: vec![subjects::event_subjects(run)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: settings.replicas,
        ..stream::Config::default()
    }
}

fn dlq_stream_config(run: &RunId, settings: &RunSettings) -> stream::Config {
    stream::Config {
        name: subjects::dlq_stream(run),
        description: Some(format!("daisy blocks of run {run} that exhausted their deliveries")),
        subjects: vec![subjects::max_deliveries_advisories(run)],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        num_replicas: settings.replicas,
        ..stream::Config::default()
    }
}

fn bucket_config(bucket: String, max_age: Option<Duration>, settings: &RunSettings) -> kv::Config {
    kv::Config {
        bucket,
        history: 1,
        max_age: max_age.unwrap_or_default(),
        storage: StorageType::File,
        num_replicas: settings.replicas,
        ..kv::Config::default()
    }
}
