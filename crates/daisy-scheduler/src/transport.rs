//! What the scheduler needs from a transport.

use std::future::Future;

use daisy_core::TaskIndex;
use daisy_proto::{Dispatch, Event, OutcomeReport};

/// A transport failure: the run cannot continue.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct TransportError {
    /// What the transport was doing.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

/// What an earlier session of this run recorded, to resume from.
#[derive(Debug, Default)]
pub struct ReplayedOutcomes {
    /// Every recorded event, oldest first.
    pub events: Vec<Event>,
    /// How to read them.
    pub mode: ReplayMode,
    /// Blocks (task id, dense index) held by workers right now: dispatched
    /// by an earlier leader, still in the block stream. They are neither
    /// dispatched again nor counted as ready.
    pub in_flight: Vec<(String, u64)>,
}

/// How recorded outcomes count when a scheduler starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplayMode {
    /// A new session of a stopped run (`daisy run` again): blocks that
    /// succeeded are skipped (counted as skipped); failed and orphaned
    /// blocks are run again with fresh retries.
    #[default]
    Resume,
    /// The same run goes on under a new leader: every recorded outcome
    /// counts as it did (successes as completed, failed attempts towards
    /// retries).
    Continue,
}

/// The scheduler's side of a transport.
///
/// Implementations: the in-process transport (bounded channels and a
/// journal file, crate `daisy`) and the NATS JetStream transport.
pub trait SchedulerTransport: Send {
    /// Sends a batch of blocks of one task towards its workers. Called only
    /// while the task has fewer batches in flight than
    /// [`SchedulerTransport::batch_capacity`], so it never waits for room.
    fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next outcomes, already durably recorded; `Ok(None)` when no
    /// worker can report any more (every worker gone).
    ///
    /// # Errors
    /// Recording failed: the run cannot go on without losing outcomes.
    fn next_report(
        &mut self,
    ) -> impl Future<Output = Result<Option<OutcomeReport>, TransportError>> + Send;

    /// Durably records an event the scheduler itself produces (run start,
    /// a task abandoned).
    fn record(&mut self, event: &Event) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// How many batches of `task` may be in flight at once.
    fn batch_capacity(&self, task: TaskIndex) -> usize;

    /// Tells the workers of `task` that no more blocks will come (the task
    /// finished or was abandoned), so they can exit.
    fn close_task(&mut self, task: TaskIndex);
}
