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

impl RunningWorkers {
    fn update(&self, report: RunningReport) {
        let mut workers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        workers.insert(report.worker, (Instant::now(), report.blocks));
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
    let mut undecodable = 0u64;
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
                Some(Ok(report)) => running.update(report),
                Some(Err(err)) => {
                    undecodable += 1;
                    warn!(%run, error = %err, undecodable, "undecodable running report ignored");
                }
                None => break,
            }
        }
    }
}
