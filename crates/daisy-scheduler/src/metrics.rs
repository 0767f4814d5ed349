//! The scheduler actor's metrics: labelled handles resolved once per task, so that the hot
//! path (a result per block) costs an atomic add per report, never a label lookup per block.
//!
//! Names and meanings are `daisy_telemetry::metrics::names`'. Nothing here is read back: the
//! actor's own counters stay the source of its decisions and reports.

use daisy_core::{Pipeline, Scheduler, TaskCounters, TaskIndex};
use daisy_proto::{FailureKind, OutcomeKind, OutcomeReport};
use daisy_telemetry::metrics::{labels, names};
use metrics::{Counter, Gauge, counter, gauge};

/// Outcome label values, in [`outcome_slot`] order.
const OUTCOMES: [&str; 8] = [
    "success",
    "skipped",
    "failed",
    "timeout",
    "process_died",
    "spawn_failed",
    "panicked",
    "deliveries_exhausted",
];

/// Where an outcome is counted in [`OUTCOMES`].
fn outcome_slot(outcome: OutcomeKind) -> usize {
    match outcome {
        OutcomeKind::Success => 0,
        OutcomeKind::Skipped => 1,
        OutcomeKind::Failed { kind } => match kind {
            FailureKind::Failed => 2,
            FailureKind::Timeout => 3,
            FailureKind::ProcessDied => 4,
            FailureKind::SpawnFailed => 5,
            FailureKind::Panicked => 6,
            FailureKind::DeliveriesExhausted => 7,
        },
    }
}

/// Outcomes of one report, counted before they go to the counters in one add each.
#[derive(Debug, Default)]
pub(crate) struct OutcomeCounts([u64; OUTCOMES.len()]);

impl OutcomeCounts {
    /// Counts one applied outcome.
    pub(crate) fn add(&mut self, outcome: OutcomeKind) {
        self.0[outcome_slot(outcome)] += 1;
    }
}

/// The final states of [`names::BLOCKS_TOTAL`]: succeeded, skipped, failed, orphaned.
const FINAL_STATES: [&str; 4] = ["succeeded", "skipped", "failed", "orphaned"];

/// Every state of [`names::BLOCKS`]: the final ones, then pending, ready, dispatched (handed to
/// a worker, not started) and processing (running now).
const STATES: [&str; 8] =
    ["succeeded", "skipped", "failed", "orphaned", "pending", "ready", "dispatched", "processing"];

/// Counters in [`STATES`] order.
fn by_state(counters: &TaskCounters) -> [u64; 8] {
    [
        counters.completed - counters.skipped,
        counters.skipped,
        counters.failed,
        counters.orphaned,
        counters.pending(),
        counters.ready,
        counters.dispatched,
        counters.processing,
    ]
}

/// One task's handles.
struct TaskMetrics {
    batches_dispatched: Counter,
    blocks_dispatched: Counter,
    outcomes: [Counter; OUTCOMES.len()],
    redeliveries: Counter,
    finished: [Counter; FINAL_STATES.len()],
    states: [Gauge; STATES.len()],
    /// The final-state counts last published, so that the counters move by the difference.
    published: [u64; FINAL_STATES.len()],
}

/// The scheduler actor's metrics, one entry per task of the pipeline.
pub(crate) struct SchedulerMetrics {
    tasks: Vec<TaskMetrics>,
    stale_results: Counter,
    /// The actor's stale-result count last published.
    published_stale: u64,
}

impl Drop for SchedulerMetrics {
    /// The actor ends (its run ended, or this replica no longer leads): a standby must not
    /// go on showing the blocks of a run it no longer schedules (summed over replicas they
    /// would count twice).
    fn drop(&mut self) {
        for metrics in &self.tasks {
            metrics.states.iter().for_each(|gauge| gauge.set(0.0));
        }
    }
}

impl SchedulerMetrics {
    /// Handles for every task of `pipeline`.
    pub(crate) fn new(pipeline: &Pipeline) -> Self {
        let tasks = pipeline
            .tasks()
            .iter()
            .map(|task| {
                let id = task.spec.id.to_string();
                let task_counter = |name: &'static str| counter!(name, labels::TASK => id.clone());
                TaskMetrics {
                    batches_dispatched: task_counter(names::BATCHES_DISPATCHED_TOTAL),
                    blocks_dispatched: task_counter(names::BLOCKS_DISPATCHED_TOTAL),
                    outcomes: OUTCOMES.map(|outcome| {
                        counter!(names::BLOCK_OUTCOMES_TOTAL, labels::TASK => id.clone(), labels::OUTCOME => outcome)
                    }),
                    redeliveries: task_counter(names::REDELIVERIES_TOTAL),
                    finished: FINAL_STATES.map(|state| {
                        counter!(names::BLOCKS_TOTAL, labels::TASK => id.clone(), labels::STATE => state)
                    }),
                    states: STATES.map(|state| {
                        gauge!(names::BLOCKS, labels::TASK => id.clone(), labels::STATE => state)
                    }),
                    published: [0; FINAL_STATES.len()],
                }
            })
            .collect();
        Self { tasks, stale_results: counter!(names::STALE_RESULTS_TOTAL), published_stale: 0 }
    }

    /// Takes the block states a replay rebuilt as the starting point: [`names::BLOCKS_TOTAL`]
    /// counts only what happens from here on.
    pub(crate) fn start_from(&mut self, core: &Scheduler) {
        for (position, metrics) in self.tasks.iter_mut().enumerate() {
            let states = by_state(&core.counters(TaskIndex(position as u32)));
            metrics.published.copy_from_slice(&states[..FINAL_STATES.len()]);
            for (gauge, value) in metrics.states.iter().zip(states) {
                gauge.set(value as f64);
            }
        }
    }

    /// A batch of `blocks` blocks was dispatched.
    pub(crate) fn dispatched(&self, task: TaskIndex, blocks: usize) {
        let metrics = &self.tasks[task.get()];
        metrics.batches_dispatched.increment(1);
        metrics.blocks_dispatched.increment(blocks as u64);
    }

    /// The outcomes the actor applied from `report`, one add per outcome kind.
    pub(crate) fn applied(&self, task: TaskIndex, report: &OutcomeReport, counts: &OutcomeCounts) {
        let metrics = &self.tasks[task.get()];
        for (counter, &count) in metrics.outcomes.iter().zip(&counts.0) {
            if count > 0 {
                counter.increment(count);
            }
        }
        // A report split into parts is one delivery: counted with its first part.
        if report.delivery > 1 && report.part == 0 {
            metrics.redeliveries.increment(1);
        }
    }

    /// Publishes the block states with the progress snapshot: the gauges, and the
    /// final-state and stale-result counters by what changed since the last time (so the
    /// hot path never touches them).
    pub(crate) fn publish(&mut self, counters: &[TaskCounters], stale_results: u64) {
        for (metrics, counters) in self.tasks.iter_mut().zip(counters) {
            let states = by_state(counters);
            for (gauge, value) in metrics.states.iter().zip(states) {
                gauge.set(value as f64);
            }
            for (position, counter) in metrics.finished.iter().enumerate() {
                let now = states[position];
                // A final state never shrinks while one actor runs.
                counter.increment(now.saturating_sub(metrics.published[position]));
                metrics.published[position] = metrics.published[position].max(now);
            }
        }
        self.stale_results.increment(stale_results.saturating_sub(self.published_stale));
        self.published_stale = self.published_stale.max(stale_results);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_label() {
        let kinds = [
            OutcomeKind::Success,
            OutcomeKind::Skipped,
            OutcomeKind::Failed { kind: FailureKind::Failed },
            OutcomeKind::Failed { kind: FailureKind::Timeout },
            OutcomeKind::Failed { kind: FailureKind::ProcessDied },
            OutcomeKind::Failed { kind: FailureKind::SpawnFailed },
            OutcomeKind::Failed { kind: FailureKind::Panicked },
            OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted },
        ];
        let slots: Vec<usize> = kinds.into_iter().map(outcome_slot).collect();
        assert_eq!(slots, (0..OUTCOMES.len()).collect::<Vec<_>>());
        for kind in kinds {
            if let OutcomeKind::Failed { kind } = kind {
                let label = OUTCOMES[outcome_slot(OutcomeKind::Failed { kind })];
                assert_eq!(label, kind.to_string().replace(' ', "_"));
            }
        }
    }

    #[test]
    fn states_add_up_to_the_total() {
        let counters = TaskCounters {
            total: 24,
            ready: 3,
            dispatched: 4,
            processing: 2,
            completed: 8,
            skipped: 1,
            failed: 1,
            orphaned: 2,
        };
        assert_eq!(by_state(&counters).iter().sum::<u64>(), counters.total);
        assert_eq!(STATES[..FINAL_STATES.len()], FINAL_STATES);
    }
}
