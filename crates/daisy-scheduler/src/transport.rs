//! What the scheduler needs from a transport: inputs it reads, effects it asks for.
//!
//! The actor's inputs are data ([`Input`]), read one at a time with
//! [`SchedulerTransport::next_input`]; everything the actor wants done on the wire is a call
//! that names the effect (dispatch a batch, record an event, remove a batch whose outcomes
//! are applied, purge an abandoned task's queued batches). Nothing happens as a side effect
//! of another call.

use std::fmt;
use std::future::Future;

use daisy_core::TaskIndex;
use daisy_proto::{Dispatch, Event, OutcomeReport, RunningBlock};

/// A transport failure: the run cannot continue.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct TransportError {
    /// What the transport was doing.
    pub what: &'static str,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TransportError {
    /// A failure of `what`, caused by `source`.
    pub fn new(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { what, source: source.into() }
    }
}

/// Names one dispatched batch for as long as it is in flight: the block-stream sequence of
/// its message over NATS, a counter in-process. Reports name it
/// ([`OutcomeReport::dispatch_sequence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A batch some earlier leader dispatched that is still queued: its blocks are in flight.
#[derive(Debug, Clone)]
pub struct QueuedBatch {
    /// Which batch.
    pub batch: BatchId,
    /// What it holds.
    pub dispatch: Dispatch,
}

/// What an earlier session of this run recorded, to resume from.
#[derive(Debug, Default)]
pub struct ReplayedOutcomes {
    /// Every recorded event, oldest first.
    pub events: Vec<Event>,
    /// How to read them.
    pub mode: ReplayMode,
    /// Batches held by workers right now: dispatched by an earlier leader, still in the
    /// block stream. Their blocks are neither dispatched again nor counted as ready.
    pub in_flight: Vec<QueuedBatch>,
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
    /// retries, abandoned tasks stay abandoned).
    Continue,
}

/// One input of the actor, in the order the transport saw them.
#[derive(Debug)]
pub enum Input {
    /// Outcomes of blocks, already durably recorded.
    Outcomes(OutcomeReport),
    /// An operator asked to stop the run (`daisy cancel`): the actor stops dispatching and
    /// returns at once; workers record the outcomes of the blocks they hold themselves.
    CancelRequested,
    /// No worker can report any more (every worker gone).
    Closed,
}

/// The scheduler's side of a transport.
///
/// Implementations: the in-process transport (bounded channels and a
/// journal file, crate `daisy`) and the NATS JetStream transport.
pub trait SchedulerTransport: Send {
    /// Sends a batch of blocks of one task towards its workers and names it. Called only
    /// while the task has fewer batches in flight than
    /// [`SchedulerTransport::batch_capacity`], so it never waits for room.
    fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> impl Future<Output = Result<BatchId, TransportError>> + Send;

    /// The next input.
    ///
    /// # Errors
    /// The transport failed: the run cannot go on without losing outcomes.
    fn next_input(&mut self) -> impl Future<Output = Result<Input, TransportError>> + Send;

    /// Durably records an event the scheduler itself produces (run start,
    /// a task abandoned).
    fn record(&mut self, event: &Event) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Every outcome of `batch` is applied: its message may go, so that a worker that took
    /// it and died before acking cannot run it again. Best effort; the default does nothing
    /// (in-process batches cannot be redelivered).
    fn remove_batch(
        &mut self,
        _task: TaskIndex,
        _batch: BatchId,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `task` was abandoned: its queued batches must not run. Best effort (a batch that
    /// still runs reports outcomes the actor ignores); the default does nothing.
    fn purge_task(&mut self, _task: TaskIndex) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Which of `batches` left the transport without an outcome (a message removed by
    /// someone else, or lost): the actor hands their blocks back to ready. The default
    /// (in-process) loses nothing.
    ///
    /// # Errors
    /// The transport could not tell; the actor asks again later.
    fn lost_batches(
        &mut self,
        _batches: &[BatchId],
    ) -> impl Future<Output = Result<Vec<BatchId>, TransportError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// The blocks workers say they run now, `running_ms` counted up to now. Best effort
    /// and lossy (a report may lag behind an outcome; a worker that stopped reporting is
    /// forgotten): the actor only counts a block it has in flight at the attempt reported.
    /// The default knows of none.
    fn running_blocks(&mut self) -> Vec<RunningBlock> {
        Vec::new()
    }

    /// Attempt `attempt` of block `index` of `task` became a straggler (once per attempt):
    /// a transport that records the block's trace marks it there. The default ignores it.
    fn straggler(&mut self, task: TaskIndex, index: u64, attempt: u32) {
        let _ = (task, index, attempt);
    }

    /// How many batches of `task` may be in flight at once.
    fn batch_capacity(&self, task: TaskIndex) -> usize;

    /// Tells the workers of `task` that no more blocks will come (the task
    /// finished or was abandoned), so they can exit.
    fn close_task(&mut self, task: TaskIndex);
}
