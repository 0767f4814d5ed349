//! Taking over a run: fence the block stream, read what is queued, replay the record.
//!
//! ```text
//!  lease won (epoch E)
//!   ├─ read the block stream's queued batches, up to its last sequence L
//!   ├─ publish the fence  block.fence.E  expecting last sequence L ── refused? someone
//!   │     published in between: read again (their batch is queued, so in flight).
//!   │     Fence markers stay in the stream until the run finishes.
//!   ├─ replay the event stream to its end
//!   └─ batches whose every block is recorded as done are removed; the others are in flight
//! ```
//!
//! # Fencing dispatches
//! Every dispatch is published with `Nats-Expected-Last-Sequence` = the last sequence the
//! leader itself stored. Once the fence of epoch E is stored, a deposed leader's dispatch
//! (expecting a sequence before the fence) is refused by the server, however long it was
//! paused between its lease check and its send; and everything it stored before the fence
//! was read here as in flight. So no dispatch of an older leader can reach a worker unknown
//! to the current one, and workers need not check epochs: a queued batch of an older epoch
//! is one the current leader adopted.
//!
//! Queued blocks are read first, then the record: a block recorded (and acked) between the
//! two reads shows up as both, and its recorded outcome wins. The other order would lose it
//! from both and dispatch it again.

use std::collections::HashSet;

use daisy_core::Pipeline;
use daisy_nats::{Nats, RunStreams};
use daisy_proto::subjects::{EventScope, MsgId, is_fence_subject};
use daisy_proto::{Event, OutcomeKind};
use daisy_telemetry::metrics::{labels, names};
use futures::StreamExt;
use tracing::{debug, info, warn};

use super::ReplicaError;
use super::election::LeaseGuard;
use crate::transport::{BatchId, QueuedBatch};

/// What a leader taking over starts from.
pub(super) struct Recovered {
    /// Every recorded event, oldest first.
    pub events: Vec<Event>,
    /// The replay, which goes on following the event stream live.
    pub replay: daisy_nats::EventReplay,
    /// The batches still queued whose blocks are not all recorded.
    pub in_flight: Vec<QueuedBatch>,
    /// The block stream's sequence of this leader's fence: its first dispatch expects it.
    pub fence_sequence: u64,
}

/// Fences the block stream for `guard`'s epoch, reads the queued batches and replays the
/// record.
pub(super) async fn recover(
    nats: &Nats,
    streams: &RunStreams,
    guard: &LeaseGuard,
    pipeline: &Pipeline,
) -> Result<Recovered, ReplicaError> {
    let (queued, fence_sequence) = fence_and_read_queue(nats, streams, guard).await?;
    record_start(nats, streams, guard, pipeline).await?;
    let (events, replay) = replay_events(streams).await?;
    let in_flight = drop_recorded_batches(streams, queued, &events).await;
    Ok(Recovered { events, replay, in_flight, fence_sequence })
}

/// Records [`Event::RunStarted`] of this leader's epoch before the replay: from it on, the
/// replay and the live tail ignore whatever a deposed leader still writes.
async fn record_start(
    nats: &Nats,
    streams: &RunStreams,
    guard: &LeaseGuard,
    pipeline: &Pipeline,
) -> Result<(), ReplicaError> {
    let event = Event::RunStarted {
        layout_hash: daisy_proto::layout_hash(pipeline),
        unix_ms: crate::unix_ms_now(),
        epoch: guard.epoch(),
    };
    let msg_id = MsgId::for_event(streams.run(), &event);
    guard.check().map_err(|_| ReplicaError::LeaseLost {
        run: streams.run().clone(),
        epoch: guard.epoch(),
    })?;
    nats.publish_event(streams.run(), EventScope::Run, &event, &msg_id, None)
        .await
        .map_err(|e| ReplicaError::nats("recording the run's start", e))?;
    Ok(())
}

/// Reads the queued batches and stores this leader's fence right after the last message
/// read; read again while someone publishes in between.
async fn fence_and_read_queue(
    nats: &Nats,
    streams: &RunStreams,
    guard: &LeaseGuard,
) -> Result<(Vec<QueuedBatch>, u64), ReplicaError> {
    let run = streams.run();
    loop {
        let state = streams
            .block_stream_state()
            .await
            .map_err(|e| ReplicaError::nats("reading the block stream", e))?;
        let queued =
            queued_batches(streams, state.first_sequence, state.last_sequence, state.messages)
                .await?;
        guard
            .check()
            .map_err(|_| ReplicaError::LeaseLost { run: run.clone(), epoch: guard.epoch() })?;
        match nats.publish_fence(run, guard.epoch(), state.last_sequence).await {
            Ok(published) => {
                // The marker stays until the run finishes: a deposed leader whose dispatch
                // is refused finds it (or a later one), and knows a later leader took over.
                // Earlier leaders' markers can go.
                if let Err(err) = streams.purge_fences(published.stream_sequence).await {
                    debug!(error = %err, "could not remove earlier fence markers");
                }
                info!(
                    epoch = guard.epoch(),
                    sequence = published.stream_sequence,
                    "block stream fenced"
                );
                return Ok((queued, published.stream_sequence));
            }
            Err(err) if err.is_wrong_last_sequence() => {
                info!(
                    epoch = guard.epoch(),
                    "a dispatch arrived while fencing the block stream: reading it again"
                );
            }
            Err(err) => return Err(ReplicaError::nats("fencing the block stream", err)),
        }
    }
}

/// Every dispatch still queued in the block stream, with its sequence, up to `last`.
/// Undecodable messages are removed; fence markers are kept (a deposed leader finds a later
/// epoch's fence by them). A read that fails is retried: a batch skipped here would be
/// dispatched twice.
async fn queued_batches(
    streams: &RunStreams,
    first: u64,
    last: u64,
    messages: u64,
) -> Result<Vec<QueuedBatch>, ReplicaError> {
    let mut batches = Vec::new();
    if messages == 0 {
        return Ok(batches);
    }
    let mut next = first;
    let mut failures = 0;
    while next <= last {
        let message = match streams.next_block_message(next).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(err) if failures < 20 => {
                failures += 1;
                debug!(sequence = next, error = %err, "could not read a queued batch, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * failures)).await;
                continue;
            }
            Err(err) => return Err(ReplicaError::nats("reading the queued batches", err)),
        };
        let sequence = message.stream_sequence;
        if sequence > last {
            break;
        }
        next = sequence + 1;
        if is_fence_subject(streams.run(), &message.subject) {
            continue;
        }
        match message.dispatch {
            Ok(dispatch) => batches.push(QueuedBatch { batch: BatchId(sequence), dispatch }),
            Err(err) => {
                warn!(sequence, error = %err, "undecodable block message removed");
                metrics::counter!(names::BAD_MESSAGES_TOTAL, labels::STREAM => "block")
                    .increment(1);
                let _ = streams.delete_block_message(sequence).await;
            }
        }
    }
    Ok(batches)
}

/// Reads the event stream to its end; returns the events and the replay, which keeps
/// following the stream live.
async fn replay_events(
    streams: &RunStreams,
) -> Result<(Vec<Event>, daisy_nats::EventReplay), ReplicaError> {
    let mut replay = streams
        .replay_events(1)
        .await
        .map_err(|e| ReplicaError::nats("replaying the event stream", e))?;
    let caught_up_at = replay.caught_up_at();
    let mut events = Vec::new();
    metrics::gauge!(names::REPLAY_TARGET_SEQUENCE).set(caught_up_at as f64);
    let (replayed, replayed_through) =
        (metrics::counter!(names::REPLAY_EVENTS_TOTAL), metrics::gauge!(names::REPLAY_SEQUENCE));
    if caught_up_at == 0 {
        return Ok((events, replay));
    }
    while let Some(item) = replay.next().await {
        let (sequence, event) =
            item.map_err(|e| ReplicaError::nats("replaying the event stream", e))?;
        replayed.increment(1);
        replayed_through.set(sequence as f64);
        match event {
            Ok(event) => events.push(event),
            Err(err) => {
                warn!(sequence, error = %err, "undecodable event ignored");
                metrics::counter!(names::BAD_MESSAGES_TOTAL, labels::STREAM => "event")
                    .increment(1);
            }
        }
        if sequence >= caught_up_at {
            break;
        }
    }
    Ok((events, replay))
}

/// Removes the queued batches whose every block the record holds as done (a worker died
/// between recording a batch and acking it), so that they do not run again; returns the
/// others, which workers hold or will be handed.
async fn drop_recorded_batches(
    streams: &RunStreams,
    queued: Vec<QueuedBatch>,
    events: &[Event],
) -> Vec<QueuedBatch> {
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
    for queued in queued {
        let dispatch = &queued.dispatch;
        let recorded =
            dispatch.blocks.iter().all(|b| done.contains(&(dispatch.task.as_str(), b.index)));
        if !recorded {
            in_flight.push(queued);
            continue;
        }
        let sequence = queued.batch.0;
        match streams.delete_block_message(sequence).await {
            // `false`: acked after all, between the two reads.
            Ok(false) => {}
            Ok(true) => {
                info!(task = %dispatch.task, sequence, blocks = dispatch.blocks.len(), "batch recorded as done but not acked removed from the block stream")
            }
            Err(err) => {
                warn!(task = %dispatch.task, sequence, error = %err, "could not remove a batch recorded as done; workers skip its recorded blocks")
            }
        }
    }
    in_flight
}
