//! Dead letters: batches whose deliveries ran out become recorded failures, and their
//! messages leave the block stream.
//!
//! A dead letter is acked only once it is handled: the failure recorded (or nothing left to
//! record) and the message deleted. A transient failure asks for the advisory again later,
//! so an exhausted message never stays behind for every later leader to wait on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use daisy_core::Pipeline;
use daisy_nats::{DeadLetter, Nats, RunStreams};
use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{
    BlockResult, Dispatch, Event, FailureKind, OutcomeKind, OutcomeReport, WorkerId,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::election::LeaseGuard;

/// How long a dead letter that could not be handled waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Turns dead letters into recorded failures until `stop`.
pub(super) async fn handle_dead_letters(
    nats: Nats,
    streams: RunStreams,
    pipeline: Arc<Pipeline>,
    guard: LeaseGuard,
    stop: CancellationToken,
) {
    let dead_letters = loop {
        match streams.dead_letters().await {
            Ok(dead_letters) => break dead_letters,
            Err(err) => {
                error!(error = %err, "cannot read dead letters yet, trying again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    };
    loop {
        let letters = tokio::select! {
            () = stop.cancelled() => return,
            letters = dead_letters.fetch(16, Duration::from_secs(1)) => letters,
        };
        let letters = match letters {
            Ok(letters) => letters,
            Err(err) => {
                debug!(error = %err, "dead letter fetch failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
                continue;
            }
        };
        for letter in letters {
            if !guard.is_valid() {
                return;
            }
            let handled = handle(&nats, &streams, &pipeline, &guard, &letter).await;
            let answered =
                if handled { letter.ack().await } else { letter.retry_later(RETRY_DELAY).await };
            if let Err(err) = answered {
                debug!(error = %err, "could not answer a dead letter (it comes back)");
            }
        }
    }
}

/// Records the failure of a dead letter's blocks and deletes its message; returns whether
/// it is done with (false: try again later).
async fn handle(
    nats: &Nats,
    streams: &RunStreams,
    pipeline: &Pipeline,
    guard: &LeaseGuard,
    letter: &DeadLetter,
) -> bool {
    let sequence = letter.block_stream_sequence;
    match streams.block_message_exists(sequence).await {
        Ok(true) => {}
        // Deleted already (by an earlier leader that handled it, or acked late).
        Ok(false) => return true,
        Err(err) => {
            debug!(sequence, error = %err, "could not read a dead letter's message");
            return false;
        }
    }
    let message = match streams.get_block_message(sequence).await {
        Ok(message) => message,
        Err(err) => {
            debug!(sequence, error = %err, "could not read a dead letter's message");
            return false;
        }
    };
    if let Ok(dispatch) = &message.dispatch
        && !record_exhausted(nats, streams, pipeline, guard, dispatch, sequence, letter.deliveries)
            .await
    {
        return false;
    }
    match streams.delete_block_message(sequence).await {
        Ok(_) => true,
        Err(err) => {
            debug!(sequence, error = %err, "could not delete a dead letter's message");
            false
        }
    }
}

/// Records what a dead letter means; returns whether it was stored. Blocks the record holds
/// for this message are done with. One block left is the poison one: it fails for good.
/// Several left are handed back, and the scheduler dispatches each alone, so that only a
/// block that kills its workers by itself fails.
async fn record_exhausted(
    nats: &Nats,
    streams: &RunStreams,
    pipeline: &Pipeline,
    guard: &LeaseGuard,
    dispatch: &Dispatch,
    sequence: u64,
    deliveries: u64,
) -> bool {
    let Some(task) = pipeline.task_index(&dispatch.task) else { return true };
    let task_id = &pipeline.task(task).spec.id;
    let recorded = match streams.recorded_outcomes(task_id, sequence).await {
        Ok(recorded) => recorded,
        Err(err) => {
            debug!(sequence, error = %err, "could not read the record of a dead letter");
            return false;
        }
    };
    let settled: HashSet<u64> = recorded
        .iter()
        .flat_map(|report| {
            report.results.iter().map(|result| result.index).chain(report.returned.iter().copied())
        })
        .collect();
    let unfinished: Vec<_> =
        dispatch.blocks.iter().filter(|block| !settled.contains(&block.index)).collect();
    let (results, returned) = match unfinished.as_slice() {
        [] => return true,
        [poison] => {
            let error = format!(
                "the worker processing this block vanished {deliveries} times (killed or crashed \
                 mid-block); giving up on it as a poison block"
            );
            error!(task = %dispatch.task, index = poison.index, deliveries, "poison block: failing it");
            let result = BlockResult {
                index: poison.index,
                attempt: poison.attempt,
                outcome: OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted },
                error: Some(error),
                seconds: 0.0,
            };
            (vec![result], Vec::new())
        }
        several => {
            warn!(task = %dispatch.task, blocks = several.len(), deliveries, "a batch ran out of deliveries: its unfinished blocks go again one at a time, to find the poison one");
            (Vec::new(), several.iter().map(|block| block.index).collect())
        }
    };
    let report = OutcomeReport {
        task: dispatch.task.clone(),
        worker: WorkerId("scheduler-dead-letters".into()),
        results,
        worker_restarts: 0,
        epoch: dispatch.epoch,
        dispatch_sequence: sequence,
        delivery: deliveries,
        part: 0,
        returned,
        leader_epoch: Some(guard.epoch()),
    };
    let event = Event::Outcomes(report);
    let msg_id = MsgId::for_event(streams.run(), &event);
    if guard.check().is_err() {
        return false;
    }
    let scope = EventScope::Batch(task_id, sequence);
    match nats.publish_event(streams.run(), scope, &event, &msg_id, None).await {
        Ok(_) => true,
        Err(err) => {
            error!(error = %err, "could not record a dead letter; trying again");
            false
        }
    }
}
