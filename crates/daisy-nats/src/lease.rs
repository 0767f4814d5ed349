//! Elects one active scheduler per run with a lease in the run's lease bucket.
//!
//! Owns the `leader` key of `DAISY_<run>_LEASE`. Deciding when to renew and what to stop on
//! loss is the scheduler's business.
//!
//! ```text
//!  standby ──try_acquire (KV create)──► leader ──renew (KV update, last revision) every ~TTL/3──┐
//!     ▲           fails while held         │ ◄─────────────────────────────────────────────────┘
//!     │                                    ├─ renew fails ⇒ LOST: stop acting at once
//!     └── polls try_acquire; the bucket's  └─ release (delete, expected revision)
//!         max_age expires an unrenewed lease
//! ```
//!
//! Invariants: at most one holder's `renew` succeeds after any other holder's `try_acquire`,
//! because both are compare-and-set on the key's revision. [`Lease::epoch`] is the revision
//! that won the lease: strictly greater for every later leader, so it fences a deposed one.
//!
//! Why polling instead of watching: before nats-server 2.11 an expired key leaves no delete
//! marker, so a watcher is never told; `try_acquire` on a timer works on every version.
//! Expiry is measured by the server's clock (message age), not the holders'.

use async_nats::jetstream::kv;
use daisy_proto::subjects;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::RunStreams;

/// Who holds (or wants) the lease; stored as JSON so `nats kv get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// A unique id of the scheduler replica.
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
}

impl LeaseHolder {
    /// This process, named by [`crate::process_identity`].
    pub fn this_process() -> Self {
        let (host, id) = crate::process_identity();
        LeaseHolder { id, host, pid: std::process::id() }
    }
}

/// The lease as recorded in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder.
    pub holder: LeaseHolder,
    /// The key's current revision (changes with every renewal).
    pub revision: u64,
}

/// Why the lease could not be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Someone holds it.
    #[error("the scheduler lease is held{}", holder_suffix(.holder))]
    Held {
        /// The current holder, if it could be read.
        holder: Option<LeaseHolder>,
    },
    /// The bucket could not be written.
    #[error("could not write the scheduler lease")]
    Kv(#[source] kv::CreateError),
}

fn holder_suffix(holder: &Option<LeaseHolder>) -> String {
    match holder {
        Some(holder) => format!(" by {} on {} (pid {})", holder.id, holder.host, holder.pid),
        None => String::new(),
    }
}

/// A renewal failed: the lease is lost ([`LeaseLost::is_certain`]: another holder took it
/// or it expired), or the bucket could not be reached (the lease lives on until its TTL
/// passes; renew again before then).
#[derive(Debug, thiserror::Error)]
#[error("could not renew the scheduler lease of epoch {epoch}")]
pub struct LeaseLost {
    /// The epoch that was lost.
    pub epoch: u64,
    /// What the bucket said (wrong revision: another holder took over or it expired).
    #[source]
    pub source: kv::UpdateError,
}

impl LeaseLost {
    /// Whether the lease is certainly gone (the key's revision moved on: it expired or
    /// another holder took it), not just unreachable for now.
    pub fn is_certain(&self) -> bool {
        matches!(
            self.source.kind(),
            kv::UpdateErrorKind::WrongLastRevision | kv::UpdateErrorKind::InvalidKey
        )
    }
}

/// Why the current holder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The bucket could not be read.
    #[error("could not read the scheduler lease")]
    Kv(#[source] kv::EntryError),
    /// The value is not a [`LeaseHolder`].
    #[error("the scheduler lease value is not a lease holder")]
    Decode(#[source] serde_json::Error),
}

/// Why the lease could not be released.
#[derive(Debug, thiserror::Error)]
#[error("could not release the scheduler lease of epoch {epoch}")]
pub struct ReleaseError {
    /// The epoch.
    pub epoch: u64,
    /// What the bucket said.
    #[source]
    pub source: kv::DeleteError,
}

/// A held leader lease.
#[derive(Debug)]
pub struct Lease {
    /// The lease bucket.
    store: kv::Store,
    /// Who holds it.
    holder: LeaseHolder,
    /// The revision that won the lease (fencing token).
    epoch: u64,
    /// The key's revision after the last successful renewal.
    revision: u64,
}

impl Lease {
    /// Takes the lease if nobody holds it (KV create: fails while a live value exists).
    ///
    /// # Errors
    /// [`AcquireError::Held`] if someone holds it; [`AcquireError::Kv`] if the bucket failed.
    #[instrument(
        level = "debug",
        skip_all,
        fields(run = %streams.run, holder = %holder.id),
        err(level = "debug")
    )]
    pub async fn try_acquire(
        streams: &RunStreams,
        holder: LeaseHolder,
    ) -> Result<Lease, AcquireError> {
        let value = encode_holder(&holder);
        match streams.lease.create(subjects::LEADER_KEY, value.into()).await {
            Ok(revision) => {
                tracing::info!(run = %streams.run, holder = %holder.id, epoch = revision, "scheduler lease acquired");
                Ok(Lease { store: streams.lease.clone(), holder, epoch: revision, revision })
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                let holder =
                    current_holder(streams).await.ok().flatten().map(|record| record.holder);
                Err(AcquireError::Held { holder })
            }
            Err(error) => Err(AcquireError::Kv(error)),
        }
    }

    /// Renews the lease (KV update against the last revision), restarting its TTL.
    ///
    /// # Errors
    /// [`LeaseLost`] if the lease expired or another holder took it: stop acting at once.
    #[instrument(level = "debug", skip_all, fields(epoch = self.epoch), err(level = "debug"))]
    pub async fn renew(&mut self) -> Result<(), LeaseLost> {
        let value = encode_holder(&self.holder);
        match self.store.update(subjects::LEADER_KEY, value.into(), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(source) if source.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // An earlier renewal whose answer was lost (a server restart) may have been
                // stored: then the key holds our own newer revision, and the lease is ours.
                if let Ok(Some(entry)) = self.store.entry(subjects::LEADER_KEY).await
                    && entry.operation == kv::Operation::Put
                    && entry.revision > self.revision
                    && serde_json::from_slice::<LeaseHolder>(&entry.value)
                        .is_ok_and(|holder| holder == self.holder)
                {
                    self.revision = entry.revision;
                    return Box::pin(self.renew()).await;
                }
                Err(LeaseLost { epoch: self.epoch, source })
            }
            Err(source) => Err(LeaseLost { epoch: self.epoch, source }),
        }
    }

    /// The revision that won the lease: a fencing token, greater for every later leader.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Who holds it.
    pub fn holder(&self) -> &LeaseHolder {
        &self.holder
    }

    /// Gives the lease up (deletes the key if it is still ours), so a standby can take over
    /// without waiting for the TTL.
    ///
    /// # Errors
    /// [`ReleaseError`] if the delete failed (e.g. the lease was already lost).
    #[instrument(level = "debug", skip_all, fields(epoch = self.epoch), err)]
    pub async fn release(self) -> Result<(), ReleaseError> {
        self.store
            .delete_expect_revision(subjects::LEADER_KEY, Some(self.revision))
            .await
            .map_err(|source| ReleaseError { epoch: self.epoch, source })?;
        tracing::info!(epoch = self.epoch, "scheduler lease released");
        Ok(())
    }
}

/// How long the run's lease lives without a renewal, as its bucket says (`max_age`): a
/// bucket made by an earlier replica keeps its TTL whatever a later one is configured with.
/// `None` if the bucket cannot be read or sets no age.
pub async fn lease_bucket_ttl(streams: &RunStreams) -> Option<std::time::Duration> {
    let status = streams.lease.status().await.ok()?;
    let max_age = status.info.config.max_age;
    (!max_age.is_zero()).then_some(max_age)
}

/// Who holds the run's lease now, if anyone (for `daisy status`).
///
/// # Errors
/// [`HolderError`] if the bucket cannot be read or holds something else.
#[instrument(level = "debug", skip_all, fields(run = %streams.run), err(level = "debug"))]
pub async fn current_holder(streams: &RunStreams) -> Result<Option<LeaseRecord>, HolderError> {
    let Some(entry) = streams.lease.entry(subjects::LEADER_KEY).await.map_err(HolderError::Kv)?
    else {
        return Ok(None);
    };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let holder = serde_json::from_slice(&entry.value).map_err(HolderError::Decode)?;
    Ok(Some(LeaseRecord { holder, revision: entry.revision }))
}

fn encode_holder(holder: &LeaseHolder) -> Vec<u8> {
    serde_json::to_vec(holder).expect("a struct of strings and integers always serialises")
}
