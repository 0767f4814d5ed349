//! Rebuilds a run's state from its record: the outcomes, abandonments and worker restarts an
//! earlier session or leader recorded, and the batches still queued.
//!
//! # Rules
//! * Events a deposed leader wrote after a later leader started are ignored
//!   ([`EpochFence`]).
//! * In [`ReplayMode::Continue`], failures recorded before the last
//!   [`Event::RetryRequested`] (`daisy retry`) are ignored, and so are abandonments and
//!   worker restarts before it: those blocks count as never attempted. Successes always
//!   count.
//! * A failure counts only for the attempt it names being the block's current one: a late
//!   failure of an attempt given up on is a stale record.
//! * [`ReplayMode::Resume`] (a new session) keeps only successes.

use std::collections::{HashMap, HashSet};

use daisy_core::{BlockIndex, BlockKey, Outcome, Pipeline, Scheduler, TaskIndex};
use daisy_proto::{EpochFence, Event, FailureKind, OutcomeKind};
use tracing::{info, warn};

use crate::transport::{QueuedBatch, ReplayMode, ReplayedOutcomes};

/// What a replay found besides block states.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Per task: the reason it was abandoned, if it was (Continue mode).
    pub abandoned: Vec<Option<String>>,
    /// Per task: worker restarts recorded so far (Continue mode).
    pub worker_restarts: Vec<u64>,
    /// Batches still queued whose blocks are now in flight.
    pub in_flight: Vec<QueuedBatch>,
}

/// Applies `replayed` to `core` (fresh) and returns what else it holds.
pub(crate) fn replay(
    pipeline: &Pipeline,
    core: &mut Scheduler,
    replayed: ReplayedOutcomes,
) -> Replayed {
    let key_of = |task: &str, index: u64| {
        let task = pipeline.task_index(task)?;
        (index < pipeline.task(task).grid.num_blocks())
            .then_some(BlockKey { task, index: BlockIndex(index) })
    };
    let mut fence = EpochFence::default();
    let live: Vec<&Event> = replayed.events.iter().filter(|event| !fence.is_stale(event)).collect();
    let stale = replayed.events.len() - live.len();
    if stale > 0 {
        warn!(events = stale, "events written by deposed leaders ignored");
    }
    let continuing = replayed.mode == ReplayMode::Continue;
    let retry_at = live
        .iter()
        .rposition(|event| matches!(event, Event::RetryRequested { .. }))
        .filter(|_| continuing);
    let mut found = Replayed {
        abandoned: vec![None; pipeline.len()],
        worker_restarts: vec![0; pipeline.len()],
        in_flight: Vec::new(),
    };
    // Per dispatch message: the blocks whose outcome (or hand-back) it recorded. A queued
    // batch is in flight only for its other blocks.
    let mut settled_by_message: HashMap<u64, HashSet<u64>> = HashMap::new();
    for event in &live {
        if let Event::Outcomes(report) = event
            && report.dispatch_sequence > 0
        {
            let settled = settled_by_message.entry(report.dispatch_sequence).or_default();
            settled.extend(report.results.iter().map(|result| result.index));
            settled.extend(report.returned.iter().copied());
        }
    }
    let mut applied = 0u64;
    let mut retried = 0u64;
    for (position, event) in live.iter().enumerate() {
        let before_retry = retry_at.is_some_and(|retry_at| position < retry_at);
        match event {
            Event::Outcomes(report) => {
                if continuing
                    && !before_retry
                    && let Some(task) = pipeline.task_index(&report.task)
                {
                    found.worker_restarts[task.get()] += u64::from(report.worker_restarts);
                }
                for result in &report.results {
                    if before_retry && matches!(result.outcome, OutcomeKind::Failed { .. }) {
                        retried += 1;
                        continue;
                    }
                    let Some(key) = key_of(&report.task, result.index) else {
                        warn!(task = %report.task, index = result.index, "recorded outcome for an unknown block ignored");
                        continue;
                    };
                    if continuing {
                        let outcome = match result.outcome {
                            OutcomeKind::Success => Outcome::Success,
                            OutcomeKind::Skipped => Outcome::Skipped,
                            OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted } => {
                                Outcome::Exhausted
                            }
                            OutcomeKind::Failed { .. } => Outcome::Failed,
                        };
                        let stale_failure = matches!(outcome, Outcome::Failed | Outcome::Exhausted)
                            && result.attempt != core.attempt(key);
                        if !stale_failure && core.apply_recorded(key, outcome).is_ok() {
                            applied += 1;
                        }
                    } else if matches!(result.outcome, OutcomeKind::Success | OutcomeKind::Skipped)
                    {
                        core.mark_known_done(key);
                        applied += 1;
                    }
                }
            }
            Event::TaskAbandoned { task, reason, .. } if continuing && !before_retry => {
                if let Some(index) = pipeline.task_index(task) {
                    abandon(pipeline, core, &mut found.abandoned, index, reason);
                }
            }
            _ => {}
        }
    }
    let mut in_flight_blocks = 0u64;
    for mut queued in replayed.in_flight {
        let Some(task) = pipeline.task_index(&queued.dispatch.task) else { continue };
        if found.abandoned[task.get()].is_some() {
            continue;
        }
        if let Some(settled) = settled_by_message.get(&queued.batch.0) {
            queued.dispatch.blocks.retain(|block| !settled.contains(&block.index));
        }
        for block in &queued.dispatch.blocks {
            if let Some(key) = key_of(&queued.dispatch.task, block.index)
                && core.mark_in_flight(key)
            {
                in_flight_blocks += 1;
            }
        }
        found.in_flight.push(queued);
    }
    if retried > 0 {
        info!(
            failed_attempts = retried,
            "retry requested: failures recorded before it are ignored"
        );
    }
    if applied > 0 || in_flight_blocks > 0 {
        match replayed.mode {
            ReplayMode::Resume => {
                info!(blocks = applied, "resuming: blocks recorded as done will be skipped");
            }
            ReplayMode::Continue => {
                info!(
                    outcomes = applied,
                    in_flight = in_flight_blocks,
                    "taking over: recorded outcomes applied"
                );
            }
        }
    }
    found
}

/// Abandons `task` (the core orphans it and its downstream tasks) and keeps why.
fn abandon(
    pipeline: &Pipeline,
    core: &mut Scheduler,
    abandoned: &mut [Option<String>],
    task: TaskIndex,
    reason: &str,
) {
    if abandoned[task.get()].is_some() {
        return;
    }
    let orphaned = core.abandon(task);
    abandoned[task.get()] = Some(reason.to_owned());
    info!(task = %pipeline.task(task).spec.id, orphaned, "task abandoned by an earlier leader stays abandoned");
}
