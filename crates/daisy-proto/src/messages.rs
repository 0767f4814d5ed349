//! The messages: what the scheduler dispatches, what workers report, and
//! the events that record a run.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of a run: `[A-Za-z0-9_-]+`, used in subjects and directories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Checks and wraps a run id; `None` if it is empty, longer than 64
    /// characters or has characters outside `[A-Za-z0-9_-]`.
    pub fn new(id: impl Into<String>) -> Option<Self> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        valid.then_some(Self(id))
    }

    /// A run id made from any text (a file name): other characters become
    /// `-`, and the result is cut to 64 characters.
    pub fn sanitized(text: &str) -> Self {
        let mut id: String = text
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
            .take(64)
            .collect();
        if id.is_empty() {
            id.push_str("run");
        }
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who processed a block: unique per worker slot (host, process, slot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub String);

impl From<&str> for WorkerId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One block to process, as dispatched. The worker derives ROIs and the
/// Daisy block id from the pipeline and the dense index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockWork {
    /// The block's dense index in its task's grid.
    pub index: u64,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// A batch of blocks of one task, sent to one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    /// The task (its id).
    pub task: String,
    /// The dispatching scheduler's lease epoch: messages of an older epoch
    /// come from a deposed leader.
    pub epoch: u64,
    /// The blocks, processed in order.
    pub blocks: Vec<BlockWork>,
}

/// Why an attempt failed. The scheduler decides from the kind, never from
/// error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// The process function reported a failure (an error, an exception, a
    /// non-zero exit). A retry is safe: the block's output is rewritten.
    Failed,
    /// The attempt ran longer than the task's timeout and was killed.
    /// A retry is safe.
    Timeout,
    /// The worker process died mid-block (crash, OOM kill). A retry is
    /// safe; it also counts as a worker restart.
    ProcessDied,
    /// The worker process could not be started (command not found). A
    /// retry only helps if the machine changes; counts as a restart.
    SpawnFailed,
    /// The Rust process function panicked. A retry is safe.
    Panicked,
    /// The workers holding the block kept vanishing (the message was
    /// delivered `max_retries + 1` times without an outcome): the block
    /// fails for good, a poison block.
    DeliveriesExhausted,
}

impl FailureKind {
    /// Whether this failure means a worker process had to be restarted
    /// (counted against the task's `max_worker_restarts`).
    pub fn restarts_worker(self) -> bool {
        matches!(self, FailureKind::ProcessDied | FailureKind::SpawnFailed)
    }
}

impl Event {
    /// The lease epoch of the scheduler that wrote this event, for events only a scheduler
    /// writes: they are fenced by it (see [`Event::RunStarted::epoch`]).
    pub fn leader_epoch(&self) -> Option<u64> {
        match self {
            Event::RunStarted { epoch, .. } | Event::TaskAbandoned { epoch, .. } => Some(*epoch),
            Event::Outcomes(report) => report.leader_epoch,
            Event::RetryRequested { .. }
            | Event::CancelRequested { .. }
            | Event::BatchClaimed { .. } => None,
        }
    }
}

/// Tells which events a deposed leader wrote, in stream order: an event a scheduler wrote is
/// stale when a leader of a later epoch started before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochFence {
    /// The greatest epoch of a [`Event::RunStarted`] seen so far.
    latest_started: u64,
}

impl EpochFence {
    /// Takes the next event in stream order; returns whether it must be ignored (written by a
    /// scheduler whose epoch a later leader has superseded).
    pub fn is_stale(&mut self, event: &Event) -> bool {
        let Some(epoch) = event.leader_epoch() else { return false };
        if let Event::RunStarted { .. } = event {
            self.latest_started = self.latest_started.max(epoch);
            return false;
        }
        epoch < self.latest_started
    }

    /// The greatest leader epoch started so far.
    pub fn latest_started(&self) -> u64 {
        self.latest_started
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Failed => "failed",
            FailureKind::Timeout => "timeout",
            FailureKind::ProcessDied => "process died",
            FailureKind::SpawnFailed => "spawn failed",
            FailureKind::Panicked => "panicked",
            FailureKind::DeliveriesExhausted => "deliveries exhausted",
        })
    }
}

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeKind {
    /// Processed.
    Success,
    /// A check said the block was already done.
    Skipped,
    /// The attempt failed.
    Failed {
        /// Why.
        kind: FailureKind,
    },
}

/// The outcome of one attempt at one block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockResult {
    /// The block's dense index.
    pub index: u64,
    /// The attempt, from 1.
    pub attempt: u32,
    /// What happened.
    pub outcome: OutcomeKind,
    /// The error text of a failure (the tail of a traceback or stderr).
    pub error: Option<String>,
    /// How long the attempt took (feeds batch sizing).
    pub seconds: f32,
}

/// Outcomes of blocks of one task, from one worker.
///
/// A report answers one dispatch message (`dispatch_sequence`, `delivery`): it may cover only
/// part of its blocks (the worker was stopped and hands the unstarted rest back in
/// `returned`), and one delivery's outcomes may be split over several reports (`part`) when
/// they would not fit in one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeReport {
    /// The task (its id).
    pub task: String,
    /// The worker slot that processed them.
    pub worker: WorkerId,
    /// One entry per attempt.
    pub results: Vec<BlockResult>,
    /// Worker process restarts in this slot since its last report.
    pub worker_restarts: u32,
    /// The epoch of the dispatch the blocks came in (see [`Dispatch::epoch`]). A block
    /// run again after `daisy retry` comes with a newer epoch, so its outcome is a new
    /// event even from the same worker with the same attempt number.
    #[serde(default)]
    pub epoch: u64,
    /// The block-stream sequence of the dispatch message these outcomes answer; 0 when the
    /// dispatch did not come through a block stream (in-process runs).
    #[serde(default)]
    pub dispatch_sequence: u64,
    /// Which delivery of that message the worker ran (JetStream's count, from 1; 0
    /// in-process). A redelivery's outcomes are new events, never duplicates of an earlier
    /// delivery's.
    #[serde(default)]
    pub delivery: u64,
    /// Which part of one delivery's outcomes this is, from 0 (see the type's docs).
    #[serde(default)]
    pub part: u32,
    /// Blocks of the dispatch handed back unstarted (dense indices): the worker was stopped
    /// before it started them. They go back to ready without counting an attempt.
    #[serde(default)]
    pub returned: Vec<u64>,
    /// The lease epoch of the scheduler that wrote this report itself (failures of dead
    /// letters); `None` for a worker's report. A replay ignores a leader's report older than
    /// a later leader's [`Event::RunStarted`].
    #[serde(default)]
    pub leader_epoch: Option<u64>,
}

/// What one worker process is running right now, sent on core NATS to
/// [`running_subject`](crate::subjects::running_subject) and never recorded: on change
/// (coalesced to a few per second) and at every heartbeat. Each report replaces the last one
/// of the same `worker`; the leader forgets a worker that stops reporting.
///
/// Why a report per process, not a message per block start: a no-op run starts 350 k blocks
/// a second, far beyond any message rate; a few small messages per process per second carry
/// the same "what runs now" without a round trip on a block's path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningReport {
    /// The worker process (its liveness name).
    pub worker: WorkerId,
    /// Every block one of its slots runs now.
    pub blocks: Vec<RunningBlock>,
}

/// One block a worker slot runs now (see [`RunningReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningBlock {
    /// The task (its id).
    pub task: String,
    /// The block's dense index.
    pub index: u64,
    /// The attempt being run, from 1.
    pub attempt: u32,
    /// The worker slot running it.
    pub slot: WorkerId,
    /// How long it had run when the report was sent, in milliseconds: a duration, not a
    /// time of day, so the clocks of worker and scheduler need not agree.
    pub running_ms: u64,
}

/// A block that runs far longer than its task's blocks usually take (a straggler), as the
/// leader lists it in the run status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Straggler {
    /// Daisy's id of the block.
    pub block_id: u64,
    /// The attempt running.
    pub attempt: u32,
    /// The worker slot running it.
    pub worker: String,
    /// How long it has run so far.
    pub running_seconds: f64,
    /// The task's median block time when it was last checked.
    pub median_seconds: f64,
    /// The block's trace id (32 hex digits), to find it in Jaeger.
    pub trace_id: String,
}

/// What is recorded about a run, in order: the journal of an in-process
/// run and the event stream of a NATS run hold these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A run (or a resumed run) started with this block layout.
    RunStarted {
        /// [`layout_hash`](crate::layout_hash) of the pipeline.
        layout_hash: String,
        /// Milliseconds since the Unix epoch, from the recorder's clock.
        unix_ms: u64,
        /// The lease epoch of the leader that started (0 in-process). Events a scheduler
        /// wrote with an older epoch after this one come from a deposed leader and are
        /// ignored.
        #[serde(default)]
        epoch: u64,
    },
    /// Outcomes of attempts.
    Outcomes(OutcomeReport),
    /// A task was given up (its workers kept dying); its remaining blocks
    /// and those of its downstream tasks are orphaned.
    TaskAbandoned {
        /// The task (its id).
        task: String,
        /// Why, for people.
        reason: String,
        /// The lease epoch of the leader that gave up (0 in-process); see
        /// [`Event::RunStarted::epoch`].
        #[serde(default)]
        epoch: u64,
    },
    /// An operator asked to re-drive the failed and orphaned blocks of a
    /// finished run (`daisy retry`): a scheduler that rebuilds the run
    /// ignores the failures recorded before this event (those blocks count
    /// as never attempted); successes still count.
    RetryRequested {
        /// Milliseconds since the Unix epoch, from the requester's clock.
        unix_ms: u64,
    },
    /// An operator asked to stop a running run (`daisy cancel`): the leader
    /// stops dispatching as on Ctrl-C, workers finish their blocks in
    /// flight and exit. The run stays resumable: a scheduler started later
    /// ignores this event.
    CancelRequested {
        /// Milliseconds since the Unix epoch, from the requester's clock.
        unix_ms: u64,
    },
    /// A worker took a dispatch message (one delivery of it) and is about to run the
    /// blocks the record does not hold yet. Published on the message's own subject with the
    /// subject's expected last sequence, so that of two workers handed the same delivery
    /// (a server that restarted may hand a message out twice) only one runs it.
    BatchClaimed {
        /// The task (its id).
        task: String,
        /// The dispatch message's block-stream sequence.
        dispatch_sequence: u64,
        /// The delivery taken.
        delivery: u64,
        /// Who took it.
        worker: WorkerId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, decode, encode};

    #[test]
    fn run_ids_are_checked_and_sanitized() {
        assert!(RunId::new("pipeline-1_a").is_some());
        assert!(RunId::new("a.b").is_none());
        assert!(RunId::new("").is_none());
        assert_eq!(RunId::sanitized("my pipeline.v2").as_str(), "my-pipeline-v2");
    }

    #[test]
    fn wrong_versions_and_garbage_are_errors() {
        let mut bytes =
            encode(&Event::TaskAbandoned { task: "a".into(), reason: "r".into(), epoch: 1 });
        bytes[0] = 99;
        assert!(matches!(decode::<Event>(&bytes), Err(DecodeError::Version { found: 99, .. })));
        assert_eq!(decode::<Event>(&[]), Err(DecodeError::Empty));
        assert!(matches!(decode::<Event>(&[1, 0xc1, 0xff]), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn events_of_a_deposed_leader_are_stale_once_a_later_leader_started() {
        let started = |epoch| Event::RunStarted { layout_hash: "h".into(), unix_ms: 0, epoch };
        let abandoned =
            |epoch| Event::TaskAbandoned { task: "t".into(), reason: "r".into(), epoch };
        let worker = Event::Outcomes(OutcomeReport { task: "t".into(), ..Default::default() });
        let mut fence = EpochFence::default();
        assert!(!fence.is_stale(&started(3)));
        assert!(!fence.is_stale(&abandoned(3)));
        assert!(!fence.is_stale(&started(7)));
        assert!(fence.is_stale(&abandoned(3)), "epoch 3 was deposed by epoch 7");
        assert!(!fence.is_stale(&worker), "worker reports are fenced elsewhere");
        let dead_letter =
            Event::Outcomes(OutcomeReport { leader_epoch: Some(3), ..Default::default() });
        assert!(fence.is_stale(&dead_letter));
        assert!(!fence.is_stale(&abandoned(7)));
    }

    #[test]
    fn running_reports_round_trip_and_garbage_is_an_error() {
        let report = RunningReport {
            worker: WorkerId::from("host-1"),
            blocks: vec![RunningBlock {
                task: "t".into(),
                index: 4,
                attempt: 2,
                slot: WorkerId::from("host-1-t-0"),
                running_ms: 1500,
            }],
        };
        assert_eq!(decode::<RunningReport>(&encode(&report)).unwrap(), report);
        assert!(decode::<RunningReport>(b"\x01garbage").is_err());
    }

    #[test]
    fn dispatches_round_trip() {
        let dispatch = Dispatch {
            task: "t".into(),
            epoch: 3,
            blocks: vec![BlockWork { index: 1, attempt: 1 }, BlockWork { index: 9, attempt: 2 }],
        };
        assert_eq!(decode::<Dispatch>(&encode(&dispatch)).unwrap(), dispatch);
    }
}
