//! The scheduler's side of the NATS transport: dispatches into the block stream, inputs from
//! the live tail of the event stream, and the leader's other writes, each checked against
//! the lease first.
//!
//! # A server restart never ends a run
//! A dispatch or an event that cannot be stored (the server is restarting, the connection is
//! gone) is sent again, with the same `Nats-Msg-Id`, until it is stored or the lease is no
//! longer valid; a broken-off replay of the event stream is followed again from the first
//! unread event. On a single server a retried dispatch whose first copy was stored is
//! refused by its expected last sequence before its `Nats-Msg-Id` is looked at (checked
//! with nats-server 2.15), so the leader then reads the gap itself (`resolve_gap`).

use std::sync::Arc;
use std::time::Duration;

use daisy_core::{Pipeline, TaskIndex};
use daisy_nats::{Nats, PublishError, Published, RunStreams};
use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{Dispatch, EpochFence, Event, RunId};
use daisy_telemetry::metrics::{labels, names};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::election::LeaseGuard;
use super::traces::BlockTraces;
use crate::transport::{BatchId, Input, SchedulerTransport, TransportError};

/// Batches whose outcomes are applied, waiting to be deleted; a full queue skips a delete
/// (workers filter redeliveries against the record, so a batch left behind runs nothing).
pub(super) const REMOVALS_CAPACITY: usize = 4096;

/// A deposed leader found a later leader's writes where it expected its own.
#[derive(Debug, thiserror::Error)]
#[error("a later leader (epoch {later}) wrote to the run: this replica (epoch {ours}) is deposed")]
struct Deposed {
    ours: u64,
    later: u64,
}

/// The scheduler's side of the NATS transport.
pub(super) struct NatsSchedulerTransport {
    pub nats: Nats,
    pub run: RunId,
    pub pipeline: Arc<Pipeline>,
    pub streams: RunStreams,
    pub replay: daisy_nats::EventReplay,
    /// The sequence of the first event not yet read: where a broken-off replay starts again.
    pub next_sequence: u64,
    /// The block stream's last sequence this leader stored (its fence, then its dispatches):
    /// what its next dispatch expects.
    pub last_block_sequence: u64,
    pub capacity: Vec<usize>,
    pub guard: LeaseGuard,
    /// Which live events a deposed leader wrote.
    pub fence: EpochFence,
    pub undecodable_events: u64,
    /// Cancelled once a `CancelRequested` event arrived.
    pub cancel_requested: CancellationToken,
    /// Sequences of batches to delete (see [`remove_applied_batches`]).
    pub removals: mpsc::Sender<u64>,
    /// Dispatches published by this leader so far (numbers their message ids).
    pub dispatches: u64,
    /// Whether this leader's `RunStarted` is recorded already (before its replay, so that
    /// the replay fences off deposed leaders): the actor's is then not recorded again.
    pub start_recorded: bool,
    /// What workers report running now.
    pub running: super::running::RunningWorkers,
    /// This leader's spans of each block's trace, when spans are exported.
    pub traces: Option<BlockTraces>,
    /// How far the live tail has read, for the lag metric.
    pub tail: super::stream_metrics::TailPosition,
}

impl NatsSchedulerTransport {
    fn lease_error(&self, what: &'static str) -> TransportError {
        TransportError::new(what, super::election::LeaseExpired { epoch: self.guard.epoch() })
    }

    /// Follows the event stream again from the first unread event after the replay broke
    /// off (the server restarted, the connection dropped). Retries until it works or the
    /// lease is lost.
    async fn follow_again(&mut self, error: daisy_nats::ReplayError) -> Result<(), TransportError> {
        warn!(error = %error, next_sequence = self.next_sequence, "event stream replay broke off: following it again");
        let mut delay = Backoff::new();
        loop {
            if !self.guard.is_valid() {
                return Err(TransportError::new("following the event stream", error));
            }
            match self.streams.replay_events(self.next_sequence).await {
                Ok(replay) => {
                    info!(next_sequence = self.next_sequence, "following the event stream again");
                    self.replay = replay;
                    return Ok(());
                }
                Err(err) => debug!(error = %err, "event stream not readable yet"),
            }
            delay.wait().await;
        }
    }

    /// Publishes a dispatch expecting the block stream's last sequence to be this leader's
    /// last; retries across a server restart while the lease is valid.
    async fn publish_dispatch(
        &mut self,
        task_id: &daisy_core::TaskId,
        dispatch: &Dispatch,
        msg_id: &MsgId,
        headers: Option<daisy_nats::HeaderMap>,
    ) -> Result<Published, TransportError> {
        let mut delay = Backoff::new();
        loop {
            self.guard.check().map_err(|e| TransportError::new("dispatching blocks", e))?;
            // A fault test stops the process here: between the check and the send is the
            // window only the block stream's fence closes.
            daisy_nats::fault::STOP_BEFORE_DISPATCH.pass();
            let expected = self.last_block_sequence;
            let published = self
                .nats
                .publish_dispatch_fenced(
                    &self.run,
                    task_id,
                    dispatch,
                    msg_id,
                    headers.clone(),
                    expected,
                )
                .await;
            match published {
                Ok(published) => return Ok(published),
                Err(err) if err.is_wrong_last_sequence() => {
                    return self.resolve_gap(msg_id, err).await;
                }
                Err(err) if err.is_too_large() => {
                    return Err(TransportError::new("dispatching blocks", err));
                }
                Err(err) => {
                    warn!(task = %task_id, error = %err, "dispatch not stored, sending it again");
                    delay.wait().await;
                }
            }
        }
    }

    /// A dispatch was refused because the block stream moved past this leader's last
    /// sequence. Only this leader publishes after its fence while its lease is valid, so the
    /// gap is its own earlier try (stored, its acknowledgement lost in a server restart) —
    /// unless a later leader fenced the stream (fence markers stay while the run goes on),
    /// which deposes this one. Anything else unexplained deposes it too: stepping down and
    /// taking over again is always safe, guessing is not.
    async fn resolve_gap(
        &mut self,
        msg_id: &MsgId,
        refusal: PublishError,
    ) -> Result<Published, TransportError> {
        let what = "dispatching blocks";
        let state =
            self.streams.block_stream_state().await.map_err(|e| TransportError::new(what, e))?;
        let mut ours = None;
        let mut gone = 0u64;
        for sequence in self.last_block_sequence + 1..=state.last_sequence {
            let exists = self
                .streams
                .block_message_exists(sequence)
                .await
                .map_err(|e| TransportError::new(what, e))?;
            if !exists {
                gone += 1;
                continue;
            }
            let message = self
                .streams
                .get_block_message(sequence)
                .await
                .map_err(|e| TransportError::new(what, e))?;
            if daisy_proto::subjects::is_fence_subject(&self.run, &message.subject) {
                let later = message.subject.rsplit('.').next().and_then(|e| e.parse().ok());
                let later = later.unwrap_or(u64::MAX);
                if later > self.guard.epoch() {
                    self.guard.lose("a later leader fenced the block stream");
                    return Err(TransportError::new(
                        what,
                        Deposed { ours: self.guard.epoch(), later },
                    ));
                }
                continue;
            }
            let message_id = message.headers.get(daisy_proto::subjects::MSG_ID_HEADER);
            if message_id.is_some_and(|id| id.as_str() == msg_id.as_str()) {
                ours = Some(sequence);
            } else {
                let later = message.dispatch.as_ref().map_or(u64::MAX, |d| d.epoch);
                self.guard.lose("someone else dispatched");
                return Err(TransportError::new(what, Deposed { ours: self.guard.epoch(), later }));
            }
        }
        if !self.guard.is_valid() {
            return Err(TransportError::new(what, refusal));
        }
        let sequence = match ours {
            Some(sequence) => sequence,
            // Our try, already taken and acked by a worker.
            None if gone == 1 => state.last_sequence,
            None => {
                self.guard.lose("the block stream moved on unexplained");
                return Err(TransportError::new(what, refusal));
            }
        };
        info!(sequence, "dispatch was stored before its acknowledgement got lost");
        Ok(Published { stream_sequence: sequence, duplicate: true })
    }

    /// Publishes an event of this leader; retries across a server restart while the lease
    /// is valid.
    async fn publish_event(
        &mut self,
        scope: EventScope<'_>,
        event: &Event,
    ) -> Result<(), TransportError> {
        let msg_id = MsgId::for_event(&self.run, event);
        let mut delay = Backoff::new();
        loop {
            self.guard.check().map_err(|e| TransportError::new("recording an event", e))?;
            match self.nats.publish_event(&self.run, scope, event, &msg_id, None).await {
                Ok(_) => return Ok(()),
                Err(err) if err.is_too_large() => {
                    return Err(TransportError::new("recording an event", err));
                }
                Err(err) => {
                    warn!(error = %err, "event not stored, sending it again");
                    delay.wait().await;
                }
            }
        }
    }
}

impl SchedulerTransport for NatsSchedulerTransport {
    async fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> Result<BatchId, TransportError> {
        let task_id = self.pipeline.task(task).spec.id.clone();
        self.dispatches += 1;
        let msg_id = MsgId::dispatch_numbered(&self.run, &task_id, dispatch.epoch, self.dispatches);
        // The batch's own span rides in its `traceparent`; each block's spans are in the
        // block's trace and link to it.
        // Not even built when nothing is exported: a span per batch costs the hot path.
        let span = if self.traces.is_some() {
            info_span!("dispatch batch", daisy.run = %self.run, daisy.task = %task_id, daisy.blocks = dispatch.blocks.len(), daisy.epoch = dispatch.epoch)
        } else {
            tracing::Span::none()
        };
        let (headers, link) = span.in_scope(|| {
            (daisy_nats::trace::current_headers(), daisy_telemetry::blocks::current_span_context())
        });
        debug!(task = %task_id, blocks = dispatch.blocks.len(), "dispatching batch");
        let published =
            self.publish_dispatch(&task_id, &dispatch, &msg_id, headers).instrument(span).await?;
        if let Some(traces) = &mut self.traces {
            traces.dispatched(task, &dispatch, published.stream_sequence, link);
        }
        self.last_block_sequence = self.last_block_sequence.max(published.stream_sequence);
        debug!(task = %task_id, batch = published.stream_sequence, blocks = ?dispatch.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), "batch dispatched");
        Ok(BatchId(published.stream_sequence))
    }

    /// The next input from the live tail of the event stream: outcomes, or a cancel request
    /// (`daisy cancel`). Events a deposed leader wrote are skipped; a later leader's start
    /// deposes this one. Only cancels that arrive in the live tail count: a cancel recorded
    /// before this leader replayed the stream belongs to an earlier leader.
    async fn next_input(&mut self) -> Result<Input, TransportError> {
        loop {
            let Some(item) = self.replay.next().await else { return Ok(Input::Closed) };
            let (sequence, event) = match item {
                Ok(item) => item,
                Err(error) => {
                    self.follow_again(error).await?;
                    continue;
                }
            };
            self.next_sequence = sequence + 1;
            self.tail.read_through(sequence);
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    self.undecodable_events += 1;
                    metrics::counter!(names::BAD_MESSAGES_TOTAL, labels::STREAM => "event")
                        .increment(1);
                    warn!(sequence, error = %err, undecodable_events = self.undecodable_events, "undecodable event ignored");
                    continue;
                }
            };
            if self.fence.is_stale(&event) {
                warn!(sequence, epoch = ?event.leader_epoch(), "event of a deposed leader ignored");
                continue;
            }
            if self.fence.latest_started() > self.guard.epoch() {
                self.guard.lose("a later leader started the run");
                return Err(self.lease_error("following the event stream"));
            }
            match event {
                Event::Outcomes(report) => {
                    if let Some(traces) = &mut self.traces {
                        traces.outcomes(&report);
                    }
                    return Ok(Input::Outcomes(report));
                }
                Event::CancelRequested { unix_ms } => {
                    info!(sequence, unix_ms, "cancel requested");
                    self.cancel_requested.cancel();
                    return Ok(Input::CancelRequested);
                }
                _ => {}
            }
        }
    }

    async fn record(&mut self, event: &Event) -> Result<(), TransportError> {
        if matches!(event, Event::RunStarted { .. }) && std::mem::take(&mut self.start_recorded) {
            return Ok(());
        }
        let pipeline = self.pipeline.clone();
        let task = match event {
            Event::TaskAbandoned { task, .. } => pipeline.task_index(task),
            _ => None,
        };
        let scope = match task {
            Some(index) => EventScope::Task(&pipeline.task(index).spec.id),
            None => EventScope::Run,
        };
        self.publish_event(scope, event).await
    }

    fn running_blocks(&mut self) -> Vec<daisy_proto::RunningBlock> {
        self.running.running_now()
    }

    fn straggler(&mut self, task: TaskIndex, index: u64, attempt: u32) {
        if let Some(traces) = &mut self.traces {
            traces.straggler(task, index, attempt);
        }
    }

    async fn remove_batch(&mut self, _task: TaskIndex, batch: BatchId) {
        if let Some(traces) = &mut self.traces {
            traces.batch_done(batch.0);
        }
        if self.removals.try_send(batch.0).is_err() {
            debug!(batch = %batch, "batch removal skipped: the removal queue is full");
        }
    }

    async fn purge_task(&mut self, task: TaskIndex) {
        let id = &self.pipeline.task(task).spec.id;
        if self.guard.check().is_err() {
            return;
        }
        match self.streams.purge_task_blocks(id, self.last_block_sequence).await {
            Ok(purged) => {
                info!(task = %id, batches = purged, "queued batches of the abandoned task removed")
            }
            Err(err) => {
                warn!(task = %id, error = %err, "could not remove the abandoned task's queued batches; their outcomes are ignored")
            }
        }
    }

    /// Batches whose message is gone although their outcomes never reached the actor. A
    /// worker records before it acks, so a batch acked normally has its record in the event
    /// stream before its message goes; it counts as lost only once the live tail has read
    /// past the stream's end as it was after the check.
    async fn lost_batches(&mut self, batches: &[BatchId]) -> Result<Vec<BatchId>, TransportError> {
        let what = "checking batches in flight";
        let checks = batches.iter().map(|batch| self.streams.block_message_exists(batch.0));
        let exists = futures::future::join_all(checks).await;
        let mut lost = Vec::new();
        for (batch, exists) in batches.iter().zip(exists) {
            if !exists.map_err(|e| TransportError::new(what, e))? {
                lost.push(*batch);
            }
        }
        if lost.is_empty() {
            return Ok(lost);
        }
        let recorded_through = self
            .streams
            .event_stream_last_sequence()
            .await
            .map_err(|e| TransportError::new(what, e))?;
        if self.next_sequence <= recorded_through {
            // The tail has not read everything recorded so far: ask again next time.
            return Ok(Vec::new());
        }
        Ok(lost)
    }

    fn batch_capacity(&self, task: TaskIndex) -> usize {
        self.capacity[task.get()]
    }

    fn close_task(&mut self, _task: TaskIndex) {
        // Workers learn from the run status that the run finished.
    }
}

/// Deletes the messages of batches whose outcomes the leader applied: a worker that died
/// between recording and acking would otherwise have its batch redelivered. Stops with
/// `stop`; a failed delete is only logged (workers filter redeliveries against the record).
pub(super) async fn remove_applied_batches(
    streams: RunStreams,
    mut removals: mpsc::Receiver<u64>,
    guard: LeaseGuard,
    stop: CancellationToken,
) {
    loop {
        let sequence = tokio::select! {
            () = stop.cancelled() => return,
            sequence = removals.recv() => match sequence {
                Some(sequence) => sequence,
                None => return,
            },
        };
        if !guard.is_valid() {
            return;
        }
        match streams.delete_block_message(sequence).await {
            Ok(true) => debug!(sequence, "applied batch removed before its worker acked it"),
            Ok(false) => {}
            Err(err) => debug!(sequence, error = %err, "could not remove an applied batch"),
        }
    }
}

/// Exponential backoff from 100 ms to 2 s, for retries while a server restarts.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}
