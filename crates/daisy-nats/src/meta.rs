//! Keeps a run's metadata (pipeline spec, status) and its workers' liveness in KV buckets.
//!
//! Owns the values of the meta bucket (`spec`, `status`) and of the workers bucket (one key
//! per live worker). What the status means and how often a worker refreshes its key are the
//! scheduler's and worker's business. Values are JSON (the spec is its TOML text), so `nats kv
//! get` shows them to people.
//!
//! Why worker liveness is a bucket with `max_age` and not heartbeat messages: the set of live
//! workers is then one `keys()` call, and a worker that died simply ages out.

use async_nats::jetstream::kv;
use daisy_core::TaskCounters;
use daisy_proto::WorkerId;
use daisy_proto::subjects::{self, InvalidWorkerKey};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::RunStreams;

/// The state of a run as a whole, for `daisy status` and for workers deciding to exit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// Every block has an outcome (success, skipped, failed or orphaned): workers may exit.
    pub finished: bool,
    /// Every block succeeded or was skipped (meaningful once `finished`).
    pub succeeded: bool,
    /// The epoch of the scheduler that wrote this status.
    pub epoch: u64,
    /// Milliseconds since the Unix epoch when it was written, from the writer's clock.
    pub updated_unix_ms: u64,
    /// Per-task counters, in topological order (written by the leader every second).
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
    /// `daisy cancel` stopped the run: workers finish their blocks in flight and exit. The
    /// run is not finished; the next leader clears this and resumes it.
    #[serde(default)]
    pub cancelled: bool,
}

/// One task's counters in a [`RunStatus`] (Daisy's names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// The task id.
    pub id: String,
    /// Daisy's counters, inline: `total`, `ready`, `dispatched` (handed to a worker, not
    /// started), `processing` (running now), `completed`, `skipped`, `failed`, `orphaned`.
    #[serde(flatten)]
    pub counters: TaskCounters,
    /// Blocks waiting for upstream blocks ([`TaskCounters::pending`], written out for
    /// readers of the JSON).
    pub pending: u64,
    /// The first failure: block id, kind and message.
    #[serde(default)]
    pub first_error: Option<String>,
    /// Why the task was abandoned, if it was.
    #[serde(default)]
    pub abandoned: Option<String>,
    /// Blocks running now for far longer than the task's median block time.
    #[serde(default)]
    pub stragglers: Vec<daisy_proto::Straggler>,
}

/// What a worker says about itself in its liveness key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The tasks it takes blocks of (empty: all).
    pub tasks: Vec<String>,
    /// How many blocks it processes at once.
    pub slots: u32,
}

/// Why a metadata or liveness value could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The value could not be written.
    #[error("could not write {key} in kv bucket {bucket}")]
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What the bucket said.
        #[source]
        source: kv::PutError,
    },
    /// The value could not be deleted.
    #[error("could not delete {key} in kv bucket {bucket}")]
    Delete {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What the bucket said.
        #[source]
        source: kv::PurgeError,
    },
    /// The value could not be read.
    #[error("could not read {key} in kv bucket {bucket}")]
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What the bucket said.
        #[source]
        source: kv::EntryError,
    },
    /// The value is not what daisy wrote there.
    #[error("{key} in kv bucket {bucket} is not valid")]
    Decode {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: DecodeValueError,
    },
    /// The bucket's keys could not be listed.
    #[error("could not list the keys of kv bucket {bucket}")]
    Keys {
        /// The bucket.
        bucket: String,
        /// What the bucket said.
        #[source]
        source: async_nats::Error,
    },
    /// The value could not be written: a conditional write lost.
    #[error("could not write {key} in kv bucket {bucket}")]
    Update {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What the bucket said.
        #[source]
        source: kv::UpdateError,
    },
    /// Other writers kept changing the value between a read and a conditional write.
    #[error("{key} in kv bucket {bucket} kept changing under a conditional write")]
    Contended {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// A leader of a later epoch wrote the run status: this writer is deposed.
    #[error("the run status was written by the leader of epoch {recorded}, later than {ours}")]
    Deposed {
        /// The epoch of the writer.
        ours: u64,
        /// The epoch in the status.
        recorded: u64,
    },
    /// The worker id cannot be a key.
    #[error(transparent)]
    WorkerKey(#[from] InvalidWorkerKey),
}

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeValueError {
    /// Not JSON of the expected shape.
    #[error("not the expected json")]
    Json(#[source] serde_json::Error),
    /// Not UTF-8 text.
    #[error("not utf-8 text")]
    Utf8(#[source] std::string::FromUtf8Error),
}

impl RunStreams {
    /// Stores the pipeline spec (TOML text) in the meta bucket; returns the revision.
    ///
    /// # Errors
    /// [`MetaError::Put`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn put_spec(&self, spec_toml: &str) -> Result<u64, MetaError> {
        put(&self.meta, subjects::SPEC_KEY, spec_toml.as_bytes().to_vec()).await
    }

    /// The pipeline spec text, if stored.
    ///
    /// # Errors
    /// [`MetaError::Get`], or [`MetaError::Decode`] if it is not UTF-8.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn get_spec(&self) -> Result<Option<String>, MetaError> {
        let Some(bytes) = get(&self.meta, subjects::SPEC_KEY).await? else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec()).map(Some).map_err(|source| MetaError::Decode {
            bucket: self.meta.name.clone(),
            key: subjects::SPEC_KEY.to_owned(),
            source: DecodeValueError::Utf8(source),
        })
    }

    /// Stores the run status; returns the revision.
    ///
    /// # Errors
    /// [`MetaError::Put`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn put_status(&self, status: &RunStatus) -> Result<u64, MetaError> {
        put(&self.meta, subjects::STATUS_KEY, to_json(status)).await
    }

    /// Stores the run status of the leader of `status.epoch`, unless a leader of a later
    /// epoch wrote it: a compare-and-set on the key's revision, retried while others (an
    /// operator's `daisy cancel`, a leader of an earlier epoch) write in between. Returns the
    /// revision.
    ///
    /// # Errors
    /// [`MetaError::Deposed`] if a later leader wrote the status; [`MetaError::Get`],
    /// [`MetaError::Decode`] or [`MetaError::Update`] if the bucket failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, epoch = status.epoch), err(level = "debug"))]
    pub async fn put_status_fenced(&self, status: &RunStatus) -> Result<u64, MetaError> {
        let key = subjects::STATUS_KEY;
        let meta_error =
            |source| MetaError::Get { bucket: self.meta.name.clone(), key: key.to_owned(), source };
        for _ in 0..8 {
            let entry = self.meta.entry(key).await.map_err(meta_error)?;
            let revision = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    if let Ok(recorded) = serde_json::from_slice::<RunStatus>(&entry.value)
                        && recorded.epoch > status.epoch
                    {
                        return Err(MetaError::Deposed {
                            ours: status.epoch,
                            recorded: recorded.epoch,
                        });
                    }
                    entry.revision
                }
                Some(entry) => entry.revision,
                None => 0,
            };
            match self.meta.update(key, to_json(status).into(), revision).await {
                Ok(revision) => return Ok(revision),
                Err(source) if source.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(source) => {
                    return Err(MetaError::Update {
                        bucket: self.meta.name.clone(),
                        key: key.to_owned(),
                        source,
                    });
                }
            }
        }
        // Eight writers in a row got in between: give up this time; the caller writes again.
        Err(MetaError::Contended { bucket: self.meta.name.clone(), key: key.to_owned() })
    }

    /// The run status, if stored.
    ///
    /// # Errors
    /// [`MetaError::Get`] or [`MetaError::Decode`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn get_status(&self) -> Result<Option<RunStatus>, MetaError> {
        get_json(&self.meta, subjects::STATUS_KEY).await
    }

    /// Registers or refreshes a worker's liveness key; it ages out after the bucket's TTL
    /// unless refreshed. Returns the revision.
    ///
    /// # Errors
    /// [`MetaError::WorkerKey`] for an id that cannot be a key; [`MetaError::Put`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run, %worker), err)]
    pub async fn register_worker(
        &self,
        worker: &WorkerId,
        info: &WorkerInfo,
    ) -> Result<u64, MetaError> {
        let key = subjects::worker_key(worker)?;
        put(&self.workers, &key, to_json(info)).await
    }

    /// Removes a worker's liveness key (a worker that exits cleanly).
    ///
    /// # Errors
    /// [`MetaError::WorkerKey`]; [`MetaError::Delete`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run, %worker), err)]
    pub async fn unregister_worker(&self, worker: &WorkerId) -> Result<(), MetaError> {
        let key = subjects::worker_key(worker)?;
        self.workers.purge(&key).await.map_err(|source| MetaError::Delete {
            bucket: self.workers.name.clone(),
            key,
            source,
        })
    }

    /// The workers whose liveness key has not aged out, sorted.
    ///
    /// # Errors
    /// [`MetaError::Keys`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn live_workers(&self) -> Result<Vec<WorkerId>, MetaError> {
        let keys_error = |source: async_nats::Error| MetaError::Keys {
            bucket: self.workers.name.clone(),
            source,
        };
        let keys = self.workers.keys().await.map_err(|error| keys_error(Box::new(error)))?;
        let mut workers: Vec<WorkerId> = keys
            .map_ok(WorkerId)
            .try_collect()
            .await
            .map_err(|error| keys_error(Box::new(error)))?;
        workers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(workers)
    }

    /// What a live worker said about itself, if its key has not aged out.
    ///
    /// # Errors
    /// [`MetaError::WorkerKey`], [`MetaError::Get`] or [`MetaError::Decode`].
    #[instrument(level = "debug", skip_all, fields(run = %self.run, %worker), err)]
    pub async fn worker_info(&self, worker: &WorkerId) -> Result<Option<WorkerInfo>, MetaError> {
        let key = subjects::worker_key(worker)?;
        get_json(&self.workers, &key).await
    }
}

async fn put(store: &kv::Store, key: &str, value: Vec<u8>) -> Result<u64, MetaError> {
    store.put(key, value.into()).await.map_err(|source| MetaError::Put {
        bucket: store.name.clone(),
        key: key.to_owned(),
        source,
    })
}

async fn get(store: &kv::Store, key: &str) -> Result<Option<bytes::Bytes>, MetaError> {
    store.get(key).await.map_err(|source| MetaError::Get {
        bucket: store.name.clone(),
        key: key.to_owned(),
        source,
    })
}

async fn get_json<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<T>, MetaError> {
    let Some(bytes) = get(store, key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|source| MetaError::Decode {
        bucket: store.name.clone(),
        key: key.to_owned(),
        source: DecodeValueError::Json(source),
    })
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value)
        .expect("plain structs of strings, integers and bools always serialise")
}
