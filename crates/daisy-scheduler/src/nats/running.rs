//! What workers run now, as the leader hears it: the latest [`RunningReport`] of each worker
//! process, from core NATS, forgotten once the worker stops reporting.
//!
//! # Ownership
//! [`follow_running`] (a helper task of the replica) is the only writer; the transport reads
//! it when the actor publishes a snapshot. A read-mostly registry where a stale read is
//! harmless: the actor counts only blocks it has in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use daisy_nats::Nats;
use daisy_proto::{RunId, RunningBlock, RunningReport, WorkerId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long a worker's last report stands without a newer one. Workers report at least
/// every second (`daisy_worker::nats::RUNNING_HEARTBEAT`); three missed reports mean it is
/// gone or cut off, and its blocks count as dispatched again.
pub(super) const RUNNING_TTL: Duration = Duration::from_secs(3);

/// When a worker's latest report arrived, and what it said runs.
type LatestReport = (Instant, Vec<RunningBlock>);

/// The latest report of each worker process.
#[derive(Clone, Default)]
pub(super) struct RunningWorkers(Arc<Mutex<HashMap<WorkerId, LatestReport>>>);

/// Bounds on what the wire may make the leader hold: more worker processes reporting at
/// once, slots per process or characters in a name than any real run has. A report beyond
/// them is dropped (its blocks count as dispatched), so a broken or hostile peer cannot
/// grow the leader's memory or the run status past the server's payload limit.
const MAX_WORKERS: usize = 100_000;
const MAX_BLOCKS_PER_REPORT: usize = 4_096;
const MAX_NAME_LEN: usize = 256;

/// Why a report is dropped, if it is.
fn refuse(report: &RunningReport) -> Option<&'static str> {
    if report.blocks.len() > MAX_BLOCKS_PER_REPORT {
        return Some("more running blocks than any worker process has slots");
    }
    let long = |name: &str| name.len() > MAX_NAME_LEN;
    (long(&report.worker.0)
        || report.blocks.iter().any(|block| long(&block.task) || long(&block.slot.0)))
    .then_some("a name longer than any worker or task has")
}

impl RunningWorkers {
    /// Keeps `report` as its worker's latest; false when it is refused.
    fn update(&self, report: RunningReport) -> Result<(), &'static str> {
        if let Some(why) = refuse(&report) {
            return Err(why);
        }
        let mut workers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if workers.len() >= MAX_WORKERS && !workers.contains_key(&report.worker) {
            let now = Instant::now();
            workers.retain(|_, (received, _)| now.duration_since(*received) < RUNNING_TTL);
            if workers.len() >= MAX_WORKERS {
                return Err("more worker processes reporting than any run has");
            }
        }
        workers.insert(report.worker, (Instant::now(), report.blocks));
        Ok(())
    }

    /// Every block reported running by a worker heard from within [`RUNNING_TTL`], its
    /// running time counted up to now; forgets the workers not heard from.
    pub(super) fn running_now(&self) -> Vec<RunningBlock> {
        let now = Instant::now();
        let mut workers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        workers.retain(|_, (received, _)| now.duration_since(*received) < RUNNING_TTL);
        workers
            .values()
            .flat_map(|(received, blocks)| {
                let since = now.duration_since(*received).as_millis();
                let since = u64::try_from(since).unwrap_or(u64::MAX);
                blocks.iter().map(move |block| RunningBlock {
                    running_ms: block.running_ms.saturating_add(since),
                    ..block.clone()
                })
            })
            .collect()
    }
}

/// Follows the run's running reports until `stop`; a report that does not decode is
/// logged and ignored. Subscribes again if the subscription ends (a reconnect).
pub(super) async fn follow_running(
    nats: Nats,
    run: RunId,
    running: RunningWorkers,
    stop: CancellationToken,
) {
    // Logged at the first and then every 1000th: a peer speaking another protocol
    // version sends several a second.
    let mut undecodable = 0u64;
    let mut refused = 0u64;
    loop {
        let mut reports = match nats.subscribe_running(&run).await {
            Ok(reports) => reports,
            Err(err) => {
                debug!(error = %err, "could not follow what workers run");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let report = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                report = reports.next() => report,
            };
            match report {
                Some(Ok(report)) => {
                    if let Err(why) = running.update(report) {
                        refused += 1;
                        if refused % 1000 == 1 {
                            warn!(%run, why, refused, "running report ignored");
                        }
                    }
                }
                Some(Err(err)) => {
                    undecodable += 1;
                    if undecodable % 1000 == 1 {
                        warn!(%run, error = %err, undecodable, "undecodable running report ignored");
                    }
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(worker: &str, blocks: usize, slot: &str) -> RunningReport {
        let block = |index| RunningBlock {
            task: "a".into(),
            index,
            attempt: 1,
            slot: WorkerId(slot.into()),
            running_ms: 0,
        };
        RunningReport {
            worker: WorkerId(worker.into()),
            blocks: (0..blocks as u64).map(block).collect(),
        }
    }

    #[tokio::test]
    async fn reports_beyond_any_real_worker_are_refused_and_hold_nothing() {
        let workers = RunningWorkers::default();
        assert!(workers.update(report("w", 2, "w/0")).is_ok());
        assert!(workers.update(report("x", MAX_BLOCKS_PER_REPORT + 1, "x/0")).is_err());
        assert!(workers.update(report("y", 1, &"s".repeat(MAX_NAME_LEN + 1))).is_err());
        assert!(workers.update(report(&"w".repeat(MAX_NAME_LEN + 1), 1, "z/0")).is_err());
        assert_eq!(workers.running_now().len(), 2, "only the sane report counts");
    }
}
