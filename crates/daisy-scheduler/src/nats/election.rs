//! Standing by for the lease, and keeping it: a replica leads only while its lease is valid
//! by its own clock, and every write of a leader checks that first.
//!
//! ```text
//!  stand_by: try_acquire every TTL/4 ──won──► LeaseGuard (epoch, valid_until) + keep_lease task
//!  keep_lease: renew every TTL/3; valid_until = when the renewal was sent + TTL − TTL/10
//!              renewal refused (revision moved on) ⇒ lost at once
//!              server unreachable ⇒ retry every TTL/10 until valid_until, then lost
//!  every leader write: guard.check() — a leader paused past valid_until writes nothing
//! ```
//!
//! # Why a local deadline
//! The lease expires by the server's clock (message age) some time after the renewal was
//! stored, so a renewal *sent* at `t` keeps the lease at least until `t + TTL` on any clock
//! that runs at the server's rate; a tenth of the TTL covers drift. A process paused
//! (SIGSTOP, a VM migration) wakes up with its monotonic clock past the deadline and stops
//! before its next write. The one write that can slip past — paused between the check and
//! the send — is refused by the server: see the fence in `recovery`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use daisy_nats::{AcquireError, Lease, RunStreams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{ReplicaOptions, is_cancelled};

/// The lease of the leader, as every writer of the leader checks it. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct LeaseGuard {
    epoch: u64,
    valid_until: Arc<Mutex<Instant>>,
    /// Cancelled once the lease is (or may be) lost: stop leading.
    lost: CancellationToken,
}

/// A leader write refused because the lease is no longer valid.
#[derive(Debug, thiserror::Error)]
#[error("the scheduler lease of epoch {epoch} is no longer valid: another replica may lead")]
pub(super) struct LeaseExpired {
    pub epoch: u64,
}

impl LeaseGuard {
    fn new(epoch: u64, valid_until: Instant) -> Self {
        Self {
            epoch,
            valid_until: Arc::new(Mutex::new(valid_until)),
            lost: CancellationToken::new(),
        }
    }

    /// The epoch led.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lease is valid now; marks it lost when it is not.
    pub(super) fn is_valid(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        let valid_until =
            *self.valid_until.lock().expect("the lock is never poisoned: no panics inside");
        if Instant::now() >= valid_until {
            self.lose("the lease's validity passed without a renewal");
            return false;
        }
        true
    }

    /// `Ok` while the lease is valid: call right before every leader write.
    pub(super) fn check(&self) -> Result<(), LeaseExpired> {
        if self.is_valid() { Ok(()) } else { Err(LeaseExpired { epoch: self.epoch }) }
    }

    /// Marks the lease lost (this replica must stop leading).
    pub(super) fn lose(&self, why: &str) {
        if !self.lost.is_cancelled() {
            error!(epoch = self.epoch, reason = why, "lost the scheduler lease: stopping dispatch");
            self.lost.cancel();
        }
    }

    /// Cancelled when the lease is lost.
    pub(super) fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    fn extend(&self, until: Instant) {
        *self.valid_until.lock().expect("the lock is never poisoned: no panics inside") = until;
    }
}

/// How much of the TTL a renewal's local validity leaves out, for clock drift.
fn margin(ttl: Duration) -> Duration {
    ttl / 10
}

/// Polls for the lease until it is ours (or the replica is cancelled, or the run is
/// cancelled while it stands by). Returns the lease, its guard (valid from the moment the
/// acquisition was sent) and the TTL the guard assumes (see [`lease_ttl`]).
pub(super) async fn stand_by(
    streams: &RunStreams,
    options: &ReplicaOptions,
    cancel: &CancellationToken,
) -> Option<(Lease, LeaseGuard, Duration)> {
    let ttl = lease_ttl(streams, options).await;
    let poll = (ttl / 4).max(Duration::from_millis(100));
    let mut announced = false;
    // A replica started to resume a cancelled run leads it; one that saw the
    // run going and then cancelled (`daisy cancel`) stops with its leader.
    let mut saw_it_going = false;
    loop {
        let cancelled = is_cancelled(streams).await;
        if cancelled && saw_it_going {
            info!(run = %options.run, "{}", super::CANCELLED_WHILE_STANDING_BY);
            return None;
        }
        saw_it_going |= !cancelled;
        let sent = Instant::now();
        match Lease::try_acquire(streams, options.holder.clone()).await {
            Ok(lease) => {
                // The leader may have been cancelled, marked the run and released the lease
                // between the read above and this acquisition.
                if saw_it_going && is_cancelled(streams).await {
                    info!(run = %options.run, "{}", super::CANCELLED_WHILE_STANDING_BY);
                    if let Err(err) = lease.release().await {
                        debug!(error = %err, "could not release the lease (it will lapse)");
                    }
                    return None;
                }
                let guard = LeaseGuard::new(lease.epoch(), sent + ttl - margin(ttl));
                return Some((lease, guard, ttl));
            }
            Err(AcquireError::Held { holder }) => {
                if !announced {
                    let leader = holder.map_or("unknown".to_owned(), |h| {
                        format!("{} on {} (pid {})", h.id, h.host, h.pid)
                    });
                    info!(run = %options.run, %leader, "standing by: another replica leads");
                    announced = true;
                }
            }
            Err(err) => warn!(run = %options.run, error = %err, "could not try for the lease"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// The lease TTL this replica must assume: its own, or the bucket's if shorter (a bucket
/// made by an earlier replica keeps the TTL it was made with).
async fn lease_ttl(streams: &RunStreams, options: &ReplicaOptions) -> Duration {
    let configured = options.settings.lease_ttl;
    match daisy_nats::lease_bucket_ttl(streams).await {
        Some(bucket) if bucket < configured => {
            warn!(configured = ?configured, bucket = ?bucket, "the run's lease bucket has a shorter TTL than this replica's: using it");
            bucket
        }
        _ => configured,
    }
}

/// Renews the lease until `stop` (then returns it, for release) or until it is lost (then
/// marks the guard and returns `None`). Starts the moment the lease is won, so a long replay
/// never lets it lapse.
pub(super) async fn keep_lease(
    mut lease: Lease,
    ttl: Duration,
    guard: LeaseGuard,
    stop: CancellationToken,
) -> Option<Lease> {
    let period = ttl / 3;
    let retry = (ttl / 10).max(Duration::from_millis(50));
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            () = stop.cancelled() => return guard.is_valid().then_some(lease),
            () = guard.lost().cancelled() => return None,
            () = tokio::time::sleep_until(next) => {}
        }
        if !guard.is_valid() {
            return None;
        }
        let sent = Instant::now();
        match lease.renew().await {
            Ok(()) => {
                guard.extend(sent + ttl - margin(ttl));
                next = sent + period;
            }
            Err(err) if err.is_certain() => {
                guard.lose("the lease was taken over or expired");
                debug!(error = %err, "lease renewal refused");
                return None;
            }
            Err(err) => {
                warn!(epoch = guard.epoch(), error = %err, "could not renew the scheduler lease, retrying");
                next = Instant::now() + retry;
            }
        }
    }
}
