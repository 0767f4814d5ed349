//! The scheduler over NATS JetStream: replicas elect a leader through a KV lease; the leader
//! fences the block stream, rebuilds the run from its record and drives the same actor as
//! in-process runs.
//!
//! ```text
//!  replica ──try_acquire──► lease (KV, TTL) ──held──► standby: poll every TTL/4
//!     │ won (epoch = revision)
//!     ├─ keep_lease: renew every TTL/3 from this moment on        (election)
//!     ├─ claim the run status (compare-and-set)                    (status)
//!     ├─ fence the block stream, read what is queued, replay the record (recovery)
//!     ├─ RunScheduler (this crate's actor) over NatsSchedulerTransport   (transport):
//!     │      dispatch ──► daisy.v1.<run>.block.<task>  (expected last sequence, Msg-Id)
//!     │      inputs   ◄── daisy.v1.<run>.event.>       (recorded by workers)
//!     │      applied batches ──► deleted from the block stream
//!     ├─ dead letters (MAX_DELIVERIES advisories) ──► failure events   (dead_letters)
//!     ├─ what workers run now ◄── daisy.v1.<run>.running (core NATS)  (running)
//!     └─ status (KV) every second; finished at the end                (status)
//! ```
//!
//! # Fencing
//! Only the holder of a valid lease writes, and every write checks the lease first (a local
//! deadline: see `election`). What slips past a check — a leader paused between the check
//! and the send — is refused where it lands: dispatches by the block stream's expected last
//! sequence and the new leader's fence (`recovery`), the status by compare-and-set on the
//! leader epoch it carries (`status`), scheduler events by their epoch, which the replay and
//! the live tail ignore once a later leader started ([`daisy_proto::EpochFence`]). A leader
//! that finds itself deposed stops with [`ReplicaError::LeaseLost`] and the binary stands by
//! again.
//!
//! # Operator requests
//! `daisy cancel` records [`daisy_proto::Event::CancelRequested`]; the transport hands it to the actor as
//! [`crate::Input::CancelRequested`] from the live tail of the event stream. `daisy retry`
//! records [`daisy_proto::Event::RetryRequested`], which only matters to the replay of the next leader.
//!
//! # Task policy
//! The renewal, status, dead-letter and batch-removal tasks are children of the replica:
//! they end with it. Losing the lease ends the replica with [`ReplicaError::LeaseLost`].

mod dead_letters;
mod election;
mod recovery;
mod running;
mod status;
mod stream_metrics;
mod traces;
mod transport;

use std::sync::Arc;

use daisy_core::Pipeline;
use daisy_nats::{LeaseHolder, Nats, RunSettings};
use daisy_proto::{EpochFence, RunId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{ReplayMode, ReplayedOutcomes, RunReport, RunScheduler, RunSnapshot, SchedulerConfig};
use election::{keep_lease, stand_by};
use recovery::recover;
use running::{RunningWorkers, follow_running};
use status::{claim_status, publish_spec, status_of, write_final_status, write_status};
use stream_metrics::{Leading, TailPosition, watch_event_stream};
use transport::{NatsSchedulerTransport, REMOVALS_CAPACITY, remove_applied_batches};

/// How one scheduler replica runs.
pub struct ReplicaOptions {
    /// The run.
    pub run: RunId,
    /// The pipeline file's text (published to KV for workers).
    pub spec_toml: String,
    /// The validated pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Lease TTL and the other stream settings.
    pub settings: RunSettings,
    /// Who this replica is (shown by `daisy status`).
    pub holder: LeaseHolder,
    /// Actor tuning.
    pub scheduler: SchedulerConfig,
    /// How recorded outcomes count: `Continue` for scheduler replicas of
    /// one long run (failover), `Resume` for a new `daisy run` session
    /// (successes count as skipped, failed blocks get fresh retries).
    pub replay_mode: ReplayMode,
    /// Called once when this replica becomes the leader, with its live
    /// snapshots (progress display).
    pub on_leading: Option<Box<dyn FnOnce(watch::Receiver<RunSnapshot>) + Send>>,
}

/// An `on_leading` callback that cancels `leading` (the replica leads and has rebuilt the
/// run from its record), then calls `then`.
pub fn signal_leading(
    leading: CancellationToken,
    then: Option<Box<dyn FnOnce(watch::Receiver<RunSnapshot>) + Send>>,
) -> Box<dyn FnOnce(watch::Receiver<RunSnapshot>) + Send> {
    Box::new(move |snapshots| {
        leading.cancel();
        if let Some(then) = then {
            then(snapshots);
        }
    })
}

/// An `on_leading` callback that copies the leader's snapshots into `to`
/// (a progress display or status writer that outlives one leadership).
pub fn forward_snapshots(
    to: watch::Sender<RunSnapshot>,
) -> Box<dyn FnOnce(watch::Receiver<RunSnapshot>) + Send> {
    Box::new(move |mut from: watch::Receiver<RunSnapshot>| {
        tokio::spawn(async move {
            loop {
                to.send_replace(from.borrow_and_update().clone());
                if from.changed().await.is_err() {
                    break;
                }
            }
        });
    })
}

/// Why a replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// Talking to NATS failed.
    #[error("{what}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The run exists with another block layout.
    #[error(
        "the pipeline's block layout changed since run '{run}' was recorded: its recorded blocks \
         would map onto other blocks. Start over with `daisy run --fresh` (or `daisy runs \
         --delete {run}`), or give the changed pipeline another --run-id"
    )]
    LayoutChanged {
        /// The run.
        run: RunId,
    },
    /// This replica lost the lease (another one leads now, or may).
    #[error("lost the scheduler lease of run '{run}' (epoch {epoch}): another replica leads now")]
    LeaseLost {
        /// The run.
        run: RunId,
        /// The epoch this replica led.
        epoch: u64,
    },
    /// The actor stopped.
    #[error(transparent)]
    Scheduler(#[from] crate::SchedulerError),
}

impl ReplicaError {
    fn nats(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ReplicaError::Nats { what, source: source.into() }
    }
}

/// Runs one replica: stands by until it holds the lease, then leads the
/// run to its end (or until cancelled, or until it loses the lease).
///
/// # Errors
/// [`ReplicaError`].
pub async fn run_replica(
    nats: Nats,
    mut options: ReplicaOptions,
    cancel: CancellationToken,
) -> Result<RunReport, ReplicaError> {
    let run = options.run.clone();
    let streams = nats
        .provision_run(&run, &options.settings)
        .await
        .map_err(|e| ReplicaError::nats("provisioning the run's streams", e))?;
    let spec_differs = status::check_spec(&streams, &options).await?;

    let Some((lease, guard, lease_ttl)) = stand_by(&streams, &options, &cancel).await else {
        return Ok(RunReport { interrupted: true, ..RunReport::default() });
    };
    let epoch = guard.epoch();
    info!(run = %run, epoch, holder = %options.holder.id, "leading the run");
    let _leading = Leading::start(epoch);
    let lost = || ReplicaError::LeaseLost { run: run.clone(), epoch };
    let stop = CancellationToken::new();
    // Helpers stop with the replica, also when its future is dropped.
    let _stop_on_drop = stop.clone().drop_guard();
    let mut helpers = JoinSet::new();
    let lease_keeper = tokio::spawn(keep_lease(lease, lease_ttl, guard.clone(), stop.clone()));

    let takeover = async {
        if let Some(delay) = daisy_nats::fault::replay_delay() {
            warn!(?delay, "fault point: delaying the replay");
            tokio::time::sleep(delay).await;
        }
        claim_status(&streams, &guard).await?;
        if spec_differs {
            publish_spec(&streams, &options, &guard).await?;
        }
        recover(&nats, &streams, &guard, &options.pipeline).await
    };
    let recovered = tokio::select! {
        recovered = takeover => recovered,
        () = guard.lost().cancelled() => Err(lost()),
    };
    let recovered = match recovered {
        Ok(recovered) => recovered,
        Err(err) => {
            stop.cancel();
            let _ = lease_keeper.await;
            return Err(if guard.lost().is_cancelled() { lost() } else { err });
        }
    };
    info!(run = %run, events = recovered.events.len(), batches_in_flight = recovered.in_flight.len(), "rebuilt the run from its record");

    let cancel_requested = CancellationToken::new();
    let (removals, removal_queue) = mpsc::channel(REMOVALS_CAPACITY);
    let running = RunningWorkers::default();
    helpers.spawn(follow_running(nats.clone(), run.clone(), running.clone(), stop.clone()));
    let capacity =
        options.pipeline.tasks().iter().map(|t| t.spec.max_workers as usize * 2).collect();
    let mut fence = EpochFence::default();
    for event in &recovered.events {
        fence.is_stale(event);
    }
    let tail = TailPosition::default();
    tail.read_through(recovered.replay.caught_up_at());
    let transport = NatsSchedulerTransport {
        nats: nats.clone(),
        run: run.clone(),
        pipeline: options.pipeline.clone(),
        streams: streams.clone(),
        next_sequence: recovered.replay.caught_up_at() + 1,
        replay: recovered.replay,
        last_block_sequence: recovered.fence_sequence,
        capacity,
        guard: guard.clone(),
        fence,
        undecodable_events: 0,
        cancel_requested: cancel_requested.clone(),
        removals,
        dispatches: 0,
        start_recorded: true,
        running,
        traces: traces::BlockTraces::new(
            run.clone(),
            options.pipeline.clone(),
            epoch,
            options.holder.id.to_string(),
        ),
        tail: tail.clone(),
    };
    let actor = RunScheduler::new(
        options.pipeline.clone(),
        transport,
        options.scheduler.clone(),
        ReplayedOutcomes {
            events: recovered.events,
            mode: options.replay_mode,
            in_flight: recovered.in_flight,
        },
    )
    .with_epoch(epoch)
    .with_run_id(run.as_str());
    let snapshots = actor.subscribe();
    if let Some(on_leading) = options.on_leading.take() {
        on_leading(snapshots.clone());
    }
    helpers.spawn(write_status(
        streams.clone(),
        snapshots,
        guard.clone(),
        cancel_requested.clone(),
        stop.clone(),
    ));
    helpers.spawn(dead_letters::handle_dead_letters(
        nats.clone(),
        streams.clone(),
        options.pipeline.clone(),
        guard.clone(),
        stop.clone(),
    ));
    helpers.spawn(watch_event_stream(streams.clone(), tail, stop.clone()));
    helpers.spawn(remove_applied_batches(
        streams.clone(),
        removal_queue,
        guard.clone(),
        stop.clone(),
    ));

    // A deposed leader stops at once: it must not even wait for the blocks in flight (their
    // outcomes go to the next leader), and dropping the actor drops nothing durable.
    let actor_cancel = CancellationToken::new();
    let result = {
        let run_actor = actor.run(actor_cancel.clone());
        tokio::pin!(run_actor);
        loop {
            tokio::select! {
                result = &mut run_actor => break Some(result),
                () = cancel.cancelled(), if !actor_cancel.is_cancelled() => actor_cancel.cancel(),
                () = guard.lost().cancelled() => break None,
            }
        }
    };
    let Some(result) = result else {
        stop.cancel();
        while helpers.join_next().await.is_some() {}
        let _ = lease_keeper.await;
        return Err(lost());
    };
    let lease_lost = guard.lost().is_cancelled() || !guard.is_valid();
    if !lease_lost && let Ok(report) = &result {
        if cancel_requested.is_cancelled() {
            let status = status_of(report, epoch, false, true);
            write_final_status(&streams, &guard, &status, "was cancelled").await;
            info!(run = %run, "run cancelled: start a scheduler again to resume it");
        } else if report.finished && !report.interrupted {
            let status = status_of(report, epoch, true, false);
            write_final_status(&streams, &guard, &status, "finished").await;
            // Nothing is dispatched any more: the fence markers can go.
            if guard.is_valid()
                && let Err(err) = streams.purge_fences(u64::MAX).await
            {
                debug!(error = %err, "could not remove the fence markers");
            }
            info!(run = %run, succeeded = report.all_succeeded(), "run finished");
        }
    }
    stop.cancel();
    while helpers.join_next().await.is_some() {}
    let lease = lease_keeper.await.ok().flatten();
    if lease_lost {
        return Err(lost());
    }
    let report = result?;
    if let Some(lease) = lease
        && let Err(err) = lease.release().await
    {
        debug!(error = %err, "could not release the lease (it will lapse)");
    }
    Ok(report)
}

/// Whether `daisy cancel` marked the run's status (an unreadable status reads as not).
async fn is_cancelled(streams: &daisy_nats::RunStreams) -> bool {
    matches!(streams.get_status().await, Ok(Some(status)) if status.cancelled)
}

const CANCELLED_WHILE_STANDING_BY: &str =
    "the run was cancelled while standing by: stopping too; start a scheduler again to resume it";
