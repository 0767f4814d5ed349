//! The scheduler over NATS JetStream: replicas elect a leader through a KV
//! lease; the leader rebuilds the run from the event stream and drives the
//! same actor as in-process runs.
//!
//! ```text
//!  replica ──try_acquire──► lease (KV, TTL) ──held──► standby: poll every TTL/4
//!     │ won (epoch = revision)
//!     ├─ replay event stream to its end ──► core state (successes, failures)
//!     ├─ read block stream (WorkQueue) ──► blocks still queued: in flight
//!     ├─ RunScheduler (this crate's actor) over NatsSchedulerTransport:
//!     │      dispatch ──► daisy.v1.<run>.block.<task>     (Nats-Msg-Id dedupe)
//!     │      outcomes ◄── daisy.v1.<run>.event.>          (recorded by workers)
//!     ├─ renew the lease every TTL/3; a failed renewal stops dispatching at once
//!     ├─ dead letters (MAX_DELIVERIES advisories) ──► failure events, message deleted
//!     └─ status (KV) every second; finished at the end
//! ```
//!
//! # Operator requests
//! `daisy cancel` records [`Event::CancelRequested`]; the transport sees it in the live tail
//! of the event stream and cancels the actor like Ctrl-C does (see
//! `NatsSchedulerTransport::next_report`). `daisy retry` records [`Event::RetryRequested`],
//! which only matters to the replay of the next leader (the actor's `replay`).
//!
//! # Task policy
//! The renewal, status and dead-letter tasks are children of the replica:
//! they end with it. Losing the lease ends the replica with
//! [`ReplicaError::LeaseLost`]; the binary goes back to standby.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use daisy_core::{Pipeline, TaskId, TaskIndex, parse_pipeline};
use daisy_nats::{
    AcquireError, Lease, LeaseHolder, Nats, RunSettings, RunStatus, RunStreams, TaskStatus,
};
use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{
    BlockResult, Dispatch, Event, FailureKind, OutcomeKind, OutcomeReport, RunId, WorkerId,
    layout_hash,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    ReplayMode, ReplayedOutcomes, RunReport, RunScheduler, RunSnapshot, SchedulerConfig,
    SchedulerTransport, TransportError,
};

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
    #[error("{what}: {reason}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
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
    /// This replica lost the lease (another one leads now).
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

fn nats_error(what: &'static str) -> impl FnOnce(&dyn std::fmt::Display) -> ReplicaError {
    move |err| ReplicaError::Nats { what, reason: err.to_string() }
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
        .map_err(|e| nats_error("provisioning the run's streams")(&e))?;
    check_spec(&streams, &options).await?;

    let Some(lease) = stand_by(&streams, &options, &cancel).await? else {
        return Ok(RunReport { interrupted: true, ..RunReport::default() });
    };
    let epoch = lease.epoch();
    info!(run = %run, epoch, holder = %options.holder.id, "leading the run");
    clear_cancelled(&streams).await;

    // Queued blocks first, then the record: a block recorded (and acked)
    // between the two reads then shows up as both, and its recorded
    // outcome wins. The other order would lose it from both and dispatch
    // it again.
    let queued = queued_batches(&streams).await?;
    let (events, replay) = replay_events(&streams).await?;
    let in_flight = drop_recorded_batches(&streams, queued, &events).await;
    info!(run = %run, events = events.len(), blocks_in_flight = in_flight.len(), "rebuilt the run from its record");

    let lease_lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let actor_cancel = CancellationToken::new();
    let cancel_requested = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(renew(lease, options.settings.lease_ttl, lease_lost.clone(), stop.clone()));

    let capacity =
        options.pipeline.tasks().iter().map(|t| t.spec.max_workers as usize * 2).collect();
    let transport = NatsSchedulerTransport {
        nats: nats.clone(),
        run: run.clone(),
        pipeline: options.pipeline.clone(),
        streams: streams.clone(),
        next_sequence: replay.caught_up_at() + 1,
        replay,
        capacity,
        lease_lost: lease_lost.clone(),
        undecodable_events: 0,
        actor_cancel: actor_cancel.clone(),
        cancel_requested: cancel_requested.clone(),
    };
    let actor = RunScheduler::new(
        options.pipeline.clone(),
        transport,
        options.scheduler.clone(),
        ReplayedOutcomes { events, mode: options.replay_mode, in_flight },
    )
    .with_epoch(epoch);
    let snapshots = actor.subscribe();
    if let Some(on_leading) = options.on_leading.take() {
        on_leading(snapshots.clone());
    }
    helpers.spawn(write_status(
        streams.clone(),
        snapshots,
        epoch,
        cancel_requested.clone(),
        stop.clone(),
    ));
    helpers.spawn(handle_dead_letters(
        nats.clone(),
        streams.clone(),
        options.pipeline.clone(),
        stop.clone(),
    ));

    {
        let (actor_cancel, cancel, lease_lost, stop) =
            (actor_cancel.clone(), cancel.clone(), lease_lost.clone(), stop.clone());
        helpers.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => actor_cancel.cancel(),
                () = lease_lost.cancelled() => actor_cancel.cancel(),
                () = stop.cancelled() => {}
            }
            HelperExit::Done
        });
    }
    let result = actor.run(actor_cancel).await;
    stop.cancel();
    let mut lease = None;
    while let Some(joined) = helpers.join_next().await {
        if let Ok(HelperExit::Lease(returned)) = joined {
            lease = returned;
        }
    }
    if lease_lost.is_cancelled() {
        return Err(ReplicaError::LeaseLost { run, epoch });
    }
    let report = result?;
    if cancel_requested.is_cancelled() {
        let status = status_of(&report, epoch, false, true);
        if let Err(err) = streams.put_status(&status).await {
            warn!(run = %run, error = %err, "could not record that the run was cancelled");
        }
        info!(run = %run, "run cancelled: start a scheduler again to resume it");
    } else if report.finished && !report.interrupted {
        let status = status_of(&report, epoch, true, false);
        if let Err(err) = streams.put_status(&status).await {
            warn!(run = %run, error = %err, "could not record that the run finished");
        }
        info!(run = %run, succeeded = report.all_succeeded(), "run finished");
    }
    if let Some(lease) = lease
        && let Err(err) = (*lease).release().await
    {
        debug!(error = %err, "could not release the lease (it will lapse)");
    }
    Ok(report)
}

enum HelperExit {
    Lease(Option<Box<Lease>>),
    Done,
}

/// Publishes the spec, or checks that the recorded one has our layout.
async fn check_spec(streams: &RunStreams, options: &ReplicaOptions) -> Result<(), ReplicaError> {
    let recorded =
        streams.get_spec().await.map_err(|e| nats_error("reading the run's spec")(&e))?;
    match recorded {
        None => {
            streams
                .put_spec(&options.spec_toml)
                .await
                .map_err(|e| nats_error("publishing the run's spec")(&e))?;
        }
        Some(text) => {
            let same = parse_pipeline(&text)
                .ok()
                .and_then(|specs| Pipeline::new(specs).ok())
                .is_some_and(|recorded| layout_hash(&recorded) == layout_hash(&options.pipeline));
            if !same {
                return Err(ReplicaError::LayoutChanged { run: options.run.clone() });
            }
            if text != options.spec_toml {
                // Same blocks, other settings (workers, commands): workers
                // that start from now on use the new ones.
                streams
                    .put_spec(&options.spec_toml)
                    .await
                    .map_err(|e| nats_error("publishing the run's spec")(&e))?;
            }
        }
    }
    Ok(())
}

/// Clears the mark `daisy cancel` left in the status, so that workers serve
/// the run again now that a leader resumes it.
async fn clear_cancelled(streams: &RunStreams) {
    if let Ok(Some(mut status)) = streams.get_status().await
        && status.cancelled
    {
        status.cancelled = false;
        status.updated_unix_ms = crate::unix_ms_now();
        match streams.put_status(&status).await {
            Ok(_) => info!(run = %streams.run(), "resuming a cancelled run"),
            Err(err) => warn!(error = %err, "could not clear the cancel mark of the run status"),
        }
    }
}

const CANCELLED_WHILE_STANDING_BY: &str =
    "the run was cancelled while standing by: stopping too; start a scheduler again to resume it";

/// Whether `daisy cancel` marked the run's status (an unreadable status reads as not).
async fn is_cancelled(streams: &RunStreams) -> bool {
    matches!(streams.get_status().await, Ok(Some(status)) if status.cancelled)
}

/// Polls for the lease until it is ours (or the replica is cancelled, or the run is
/// cancelled while it stands by).
async fn stand_by(
    streams: &RunStreams,
    options: &ReplicaOptions,
    cancel: &CancellationToken,
) -> Result<Option<Lease>, ReplicaError> {
    let poll = (options.settings.lease_ttl / 4).max(Duration::from_millis(100));
    let mut announced = false;
    // A replica started to resume a cancelled run leads it; one that saw the
    // run going and then cancelled (`daisy cancel`) stops with its leader.
    let mut saw_it_going = false;
    loop {
        let cancelled = is_cancelled(streams).await;
        if cancelled && saw_it_going {
            info!(run = %options.run, "{CANCELLED_WHILE_STANDING_BY}");
            return Ok(None);
        }
        saw_it_going |= !cancelled;
        match Lease::try_acquire(streams, options.holder.clone()).await {
            Ok(lease) => {
                // The leader may have been cancelled, marked the run and released the lease
                // between the read above and this acquisition.
                if saw_it_going && is_cancelled(streams).await {
                    info!(run = %options.run, "{CANCELLED_WHILE_STANDING_BY}");
                    if let Err(err) = lease.release().await {
                        debug!(error = %err, "could not release the lease (it will lapse)");
                    }
                    return Ok(None);
                }
                return Ok(Some(lease));
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
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Reads the event stream to its end; returns the events and the replay,
/// which keeps following the stream live.
async fn replay_events(
    streams: &RunStreams,
) -> Result<(Vec<Event>, daisy_nats::EventReplay), ReplicaError> {
    let mut replay =
        streams.replay_events(1).await.map_err(|e| nats_error("replaying the event stream")(&e))?;
    let caught_up_at = replay.caught_up_at();
    let mut events = Vec::new();
    if caught_up_at == 0 {
        return Ok((events, replay));
    }
    while let Some(item) = replay.next().await {
        let (sequence, event) = item.map_err(|e| nats_error("replaying the event stream")(&e))?;
        match event {
            Ok(event) => events.push(event),
            Err(err) => warn!(sequence, error = %err, "undecodable event ignored"),
        }
        if sequence >= caught_up_at {
            break;
        }
    }
    Ok((events, replay))
}

/// Every dispatch still queued in the block stream, with its sequence.
async fn queued_batches(streams: &RunStreams) -> Result<Vec<(u64, Dispatch)>, ReplicaError> {
    let mut batches = Vec::new();
    let Some((first, last)) =
        streams.block_sequences().await.map_err(|e| nats_error("reading the block stream")(&e))?
    else {
        return Ok(batches);
    };
    for sequence in first..=last {
        let Ok(message) = streams.get_block_message(sequence).await else { continue };
        match message.dispatch {
            Ok(dispatch) => batches.push((sequence, dispatch)),
            Err(err) => {
                warn!(sequence, error = %err, "undecodable block message removed");
                let _ = streams.delete_block_message(sequence).await;
            }
        }
    }
    Ok(batches)
}

/// Removes the queued batches whose every block the record holds as done (a worker died
/// between recording a batch and acking it), so that they do not run again; returns the
/// blocks (task id, dense index) of the others, which workers hold or will be handed.
async fn drop_recorded_batches(
    streams: &RunStreams,
    queued: Vec<(u64, Dispatch)>,
    events: &[Event],
) -> Vec<(String, u64)> {
    let done: HashSet<(&str, u64)> = events
        .iter()
        .filter_map(|event| match event {
            Event::Outcomes(report) => Some(report),
            _ => None,
        })
        .flat_map(|report| {
            report
                .results
                .iter()
                .filter(|r| matches!(r.outcome, OutcomeKind::Success | OutcomeKind::Skipped))
                .map(|r| (report.task.as_str(), r.index))
        })
        .collect();
    let mut in_flight = Vec::new();
    for (sequence, dispatch) in queued {
        let recorded =
            dispatch.blocks.iter().all(|b| done.contains(&(dispatch.task.as_str(), b.index)));
        if recorded {
            match streams.delete_block_message(sequence).await {
                // `false`: acked after all, between the two reads.
                Ok(false) => {}
                Ok(true) => {
                    info!(task = %dispatch.task, sequence, blocks = dispatch.blocks.len(), "batch recorded as done but not acked removed from the block stream")
                }
                Err(err) => {
                    warn!(task = %dispatch.task, sequence, error = %err, "could not remove a batch recorded as done; it may run again")
                }
            }
        } else {
            in_flight.extend(dispatch.blocks.iter().map(|b| (dispatch.task.clone(), b.index)));
        }
    }
    in_flight
}

async fn renew(
    mut lease: Lease,
    ttl: Duration,
    lease_lost: CancellationToken,
    stop: CancellationToken,
) -> HelperExit {
    let mut interval = tokio::time::interval(ttl / 3);
    interval.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return HelperExit::Lease(Some(Box::new(lease))),
            _ = interval.tick() => {
                if let Err(err) = lease.renew().await {
                    error!(epoch = err.epoch, error = %err, "lost the scheduler lease: stopping dispatch");
                    lease_lost.cancel();
                    return HelperExit::Lease(None);
                }
            }
        }
    }
}

fn status_of(snapshot: &RunSnapshot, epoch: u64, finished: bool, cancelled: bool) -> RunStatus {
    let tasks = snapshot
        .tasks
        .iter()
        .map(|task| {
            let c = task.counters;
            TaskStatus {
                id: task.id.clone(),
                counters: c,
                pending: c.pending(),
                first_error: task.first_error.as_ref().map(|e| {
                    format!(
                        "block {} attempt {} ({}): {}",
                        e.block_id, e.attempt, e.kind, e.message
                    )
                }),
                abandoned: task.abandoned.clone(),
            }
        })
        .collect();
    RunStatus {
        finished,
        succeeded: snapshot.all_succeeded(),
        epoch,
        updated_unix_ms: crate::unix_ms_now(),
        tasks,
        cancelled,
    }
}

async fn write_status(
    streams: RunStreams,
    mut snapshots: watch::Receiver<RunSnapshot>,
    epoch: u64,
    cancel_requested: CancellationToken,
    stop: CancellationToken,
) -> HelperExit {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return HelperExit::Done,
            _ = interval.tick() => {}
        }
        let cancelled = cancel_requested.is_cancelled();
        let status = status_of(&snapshots.borrow_and_update(), epoch, false, cancelled);
        if let Err(err) = streams.put_status(&status).await {
            debug!(error = %err, "could not write the run status");
        }
    }
}

/// Turns dead letters (batches whose deliveries ran out) into recorded
/// failures and removes their messages, so the stream does not grow.
async fn handle_dead_letters(
    nats: Nats,
    streams: RunStreams,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
) -> HelperExit {
    let dead_letters = match streams.dead_letters().await {
        Ok(dead_letters) => dead_letters,
        Err(err) => {
            error!(error = %err, "cannot read dead letters: poison blocks will not be failed");
            return HelperExit::Done;
        }
    };
    loop {
        let letters = tokio::select! {
            () = stop.cancelled() => return HelperExit::Done,
            letters = dead_letters.fetch(16, Duration::from_secs(1)) => letters,
        };
        let letters = match letters {
            Ok(letters) => letters,
            Err(err) => {
                debug!(error = %err, "dead letter fetch failed");
                continue;
            }
        };
        for letter in letters {
            let sequence = letter.block_stream_sequence;
            match streams.get_block_message(sequence).await {
                Ok(message) => {
                    if let Ok(dispatch) = message.dispatch {
                        record_exhausted(&nats, &streams, &pipeline, &dispatch, letter.deliveries)
                            .await;
                    }
                    let _ = streams.delete_block_message(sequence).await;
                }
                Err(err) => debug!(sequence, error = %err, "dead letter's message is gone"),
            }
            if let Err(err) = letter.ack().await {
                debug!(error = %err, "could not ack a dead letter");
            }
        }
    }
}

async fn record_exhausted(
    nats: &Nats,
    streams: &RunStreams,
    pipeline: &Pipeline,
    dispatch: &Dispatch,
    deliveries: u64,
) {
    let Some(task) = pipeline.task_index(&dispatch.task) else { return };
    let error = format!(
        "the worker processing this block vanished {deliveries} times (killed or crashed mid-block); \
         giving up on it as a poison block"
    );
    error!(task = %dispatch.task, blocks = dispatch.blocks.len(), deliveries, "poison batch: failing its blocks");
    let report = OutcomeReport {
        task: dispatch.task.clone(),
        worker: WorkerId("scheduler-dead-letters".into()),
        results: dispatch
            .blocks
            .iter()
            .map(|block| BlockResult {
                index: block.index,
                attempt: block.attempt,
                outcome: OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted },
                error: Some(error.clone()),
                seconds: 0.0,
            })
            .collect(),
        worker_restarts: 0,
        epoch: dispatch.epoch,
    };
    let event = Event::Outcomes(report);
    let task_id = &pipeline.task(task).spec.id;
    let msg_id = MsgId::for_event(streams.run(), &event);
    if let Err(err) =
        nats.publish_event(streams.run(), EventScope::Task(task_id), &event, &msg_id, None).await
    {
        error!(error = %err, "could not record a poison batch");
    }
}

/// The scheduler's side of the NATS transport.
struct NatsSchedulerTransport {
    nats: Nats,
    run: RunId,
    pipeline: Arc<Pipeline>,
    streams: RunStreams,
    replay: daisy_nats::EventReplay,
    /// The sequence of the first event not yet read: where a broken-off
    /// replay starts again.
    next_sequence: u64,
    capacity: Vec<usize>,
    lease_lost: CancellationToken,
    undecodable_events: u64,
    /// The actor's cancellation (as on Ctrl-C); cancelled by a `CancelRequested` event.
    actor_cancel: CancellationToken,
    /// Cancelled once a `CancelRequested` event arrived.
    cancel_requested: CancellationToken,
}

impl NatsSchedulerTransport {
    /// Follows the event stream again from the first unread event after the
    /// replay broke off (the server restarted, the connection dropped): the
    /// client gives up recreating its ordered consumer while the server is
    /// down, and a run must outlive a server restart. Retries until it works
    /// or the lease is lost.
    async fn follow_again(&mut self, error: daisy_nats::ReplayError) -> Result<(), TransportError> {
        warn!(error = %error, next_sequence = self.next_sequence, "event stream replay broke off: following it again");
        let mut delay = Duration::from_millis(100);
        loop {
            if self.lease_lost.is_cancelled() {
                return Err(TransportError {
                    what: "following the event stream",
                    reason: error.to_string(),
                });
            }
            match self.streams.replay_events(self.next_sequence).await {
                Ok(replay) => {
                    info!(next_sequence = self.next_sequence, "following the event stream again");
                    self.replay = replay;
                    return Ok(());
                }
                Err(err) => debug!(error = %err, "event stream not readable yet"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

impl SchedulerTransport for NatsSchedulerTransport {
    async fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> Result<(), TransportError> {
        if self.lease_lost.is_cancelled() {
            return Err(TransportError {
                what: "dispatching blocks",
                reason: "the lease was lost".into(),
            });
        }
        let task_id: &TaskId = &self.pipeline.task(task).spec.id;
        let first = dispatch.blocks.first().map_or((0, 0), |b| (b.index, b.attempt));
        let msg_id = MsgId::dispatch_of_epoch(&self.run, task_id, first.0, first.1, dispatch.epoch);
        // One trace per dispatched batch; the worker's outcome event joins it.
        let traceparent = daisy_nats::trace::new_traceparent();
        debug!(task = %task_id, blocks = dispatch.blocks.len(), %traceparent, "dispatching batch");
        let headers = daisy_nats::trace::traceparent_headers(&traceparent);
        self.nats
            .publish_dispatch(&self.run, task_id, &dispatch, &msg_id, Some(headers))
            .await
            .map(|_| ())
            .map_err(|err| TransportError { what: "dispatching blocks", reason: err.to_string() })
    }

    /// The next outcomes from the live tail of the event stream; other events are skipped,
    /// except [`Event::CancelRequested`] (`daisy cancel`).
    ///
    /// A cancel request is honoured like Ctrl-C, with no new trait method: it cancels the
    /// actor's token (the actor stops dispatching and closes every task) and from then on this
    /// returns `Ok(None)`, which a cancelled actor takes as "nothing more will report" and
    /// stops at once instead of waiting for the blocks in flight. That is safe here because
    /// workers record their outcomes in the event stream themselves: the blocks in flight
    /// finish, their outcomes are recorded, and the next leader replays them. (Waiting would
    /// also never end for batches still queued in the block stream, which the exiting workers
    /// no longer fetch.) Only cancels that arrive in the live tail count: a cancel recorded
    /// before this leader replayed the stream belongs to an earlier leader.
    async fn next_report(&mut self) -> Result<Option<OutcomeReport>, TransportError> {
        if self.cancel_requested.is_cancelled() {
            return Ok(None);
        }
        loop {
            let Some(item) = self.replay.next().await else { return Ok(None) };
            let (sequence, event) = match item {
                Ok(item) => item,
                Err(error) => {
                    self.follow_again(error).await?;
                    continue;
                }
            };
            self.next_sequence = sequence + 1;
            match event {
                Ok(Event::Outcomes(report)) => return Ok(Some(report)),
                Ok(Event::CancelRequested { unix_ms }) => {
                    warn!(
                        sequence,
                        unix_ms,
                        "cancel requested (daisy cancel): stopping the run; workers finish their blocks in flight"
                    );
                    self.cancel_requested.cancel();
                    // Keep waiting: the actor's select wakes on its token and
                    // takes the (biased, first) cancellation branch before it
                    // asks again; returning `None` now would read as "every
                    // worker gone" to an actor that is not yet cancelled.
                    self.actor_cancel.cancel();
                }
                Ok(_) => {}
                Err(err) => {
                    self.undecodable_events += 1;
                    warn!(sequence, error = %err, undecodable_events = self.undecodable_events, "undecodable event ignored");
                }
            }
        }
    }

    async fn record(&mut self, event: &Event) -> Result<(), TransportError> {
        let scope = match event {
            Event::TaskAbandoned { task, .. } => match self.pipeline.task_index(task) {
                Some(index) => EventScope::Task(&self.pipeline.task(index).spec.id),
                None => EventScope::Run,
            },
            _ => EventScope::Run,
        };
        let msg_id = MsgId::for_event(&self.run, event);
        self.nats.publish_event(&self.run, scope, event, &msg_id, None).await.map_err(|err| {
            TransportError { what: "recording an event", reason: err.to_string() }
        })?;
        if let Event::TaskAbandoned { task, .. } = event
            && let Some(index) = self.pipeline.task_index(task)
        {
            // Its batches still queued must not run (their outcomes would be ignored).
            let id = &self.pipeline.task(index).spec.id;
            match self.streams.purge_task_blocks(id).await {
                Ok(purged) => {
                    info!(task = %id, batches = purged, "queued batches of the abandoned task removed")
                }
                Err(err) => {
                    warn!(task = %id, error = %err, "could not remove the abandoned task's queued batches; workers may still run them")
                }
            }
        }
        Ok(())
    }

    fn batch_capacity(&self, task: TaskIndex) -> usize {
        self.capacity[task.get()]
    }

    fn close_task(&mut self, _task: TaskIndex) {
        // Workers learn from the run status that the run finished.
    }
}
