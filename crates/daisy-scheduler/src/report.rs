//! What the scheduler tells the world: live snapshots and the final report.

use daisy_core::{BlockId, TaskCounters};
use daisy_proto::{FailureKind, Straggler};
use serde::Serialize;

/// The first failure of a task, for the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirstError {
    /// Daisy's id of the block.
    pub block_id: BlockId,
    /// The attempt that failed.
    pub attempt: u32,
    /// Why.
    pub kind: FailureKind,
    /// The error text (tail of a traceback or stderr).
    pub message: String,
    /// The worker slot that reported it.
    pub worker: String,
}

/// One task's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskReport {
    /// The task id.
    pub id: String,
    /// Daisy's counters.
    pub counters: TaskCounters,
    /// Failed attempts, retried or not.
    pub failed_attempts: u64,
    /// Attempts that exceeded the block timeout.
    pub timeouts: u64,
    /// Worker process restarts.
    pub worker_restarts: u64,
    /// The first failed attempt.
    pub first_error: Option<FirstError>,
    /// Why the task was given up, if it was.
    pub abandoned: Option<String>,
    /// The task's block timeout in seconds (for the summary's hint).
    pub timeout_seconds: f64,
    /// Blocks running now for far longer than the task's median block time.
    pub stragglers: Vec<Straggler>,
}

/// A live view of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSnapshot {
    /// One entry per task, in topological order.
    pub tasks: Vec<TaskReport>,
    /// Whether the run is over.
    pub finished: bool,
    /// Whether the run was cancelled (Ctrl-C) before it finished.
    pub interrupted: bool,
}

/// The result of a run.
pub type RunReport = RunSnapshot;

impl RunSnapshot {
    /// Whether every block of every task succeeded or was skipped.
    pub fn all_succeeded(&self) -> bool {
        !self.interrupted && self.tasks.iter().all(|t| t.counters.all_succeeded())
    }

    /// The report of the task with this id.
    pub fn task(&self, id: &str) -> Option<&TaskReport> {
        self.tasks.iter().find(|t| t.id == id)
    }
}
