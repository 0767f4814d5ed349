//! Names every NATS subject, stream, consumer, bucket, key and message id daisy-rs uses.
//!
//! # Ownership
//! This module owns the *names* only; `daisy-nats` creates the streams and buckets and moves
//! the bytes. No subject or stream name is written by hand anywhere else (STYLE §2.4), so a
//! typo cannot make messages silently go nowhere.
//!
//! # Scheme
//! Everything of a run lives under its [`RunId`], so runs on one server never see each other's
//! messages; subjects carry the protocol version ([`SUBJECT_PREFIX`] = `daisy.v1`).
//!
//! | what | name |
//! |---|---|
//! | block subject of a task | `daisy.v1.<run>.block.<task>` |
//! | all block subjects | `daisy.v1.<run>.block.>` |
//! | task event subject | `daisy.v1.<run>.event.task.<task>` |
//! | outcomes of one dispatch message | `daisy.v1.<run>.event.task.<task>.<dispatch sequence>` |
//! | a new leader's fence in the block stream | `daisy.v1.<run>.block.fence.<epoch>` |
//! | run event subject | `daisy.v1.<run>.event.run` |
//! | all event subjects | `daisy.v1.<run>.event.>` |
//! | what workers run now (core NATS, no stream) | `daisy.v1.<run>.running` |
//! | block stream (WorkQueue) | `DAISY_<run>_BLOCKS` |
//! | event stream (Limits) | `DAISY_<run>_EVENTS` |
//! | dead-letter stream | `DAISY_<run>_DLQ`, capturing `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DAISY_<run>_BLOCKS.>` |
//! | durable block consumer of a task | `daisy-v1-block-<task>` |
//! | dead-letter consumer | `daisy-v1-dlq` |
//! | KV buckets | `DAISY_<run>_META`, `DAISY_<run>_LEASE`, `DAISY_<run>_WORKERS` |
//! | KV keys | `spec`, `status` (meta); `leader` (lease); `<worker id>` (workers) |
//! | `Nats-Msg-Id` of a dispatch | `<run>/<task>/dispatch/<leader epoch>/<leader's dispatch number>` |
//! | `Nats-Msg-Id` of an event | see [`MsgId::for_event`] |
//!
//! # Invariants
//! [`RunId`] and [`TaskId`] are `[A-Za-z0-9_-]{1,64}`, so every name built here is one valid
//! NATS token (subjects) or a valid stream, consumer or bucket name (no `.`, `*`, `>`,
//! whitespace or path separators). The tests check it for awkward ids.
//!
//! # Why
//! Task events sit under `event.task.<task>` and run events under `event.run`, one token
//! shorter: a task may be called `run` or `_run` (both valid task ids), and with this layout
//! no task id can ever collide with the run-level subject. The alternative, a reserved task
//! name, would need every pipeline parser to know about it.
//!
//! # Example
//! ```
//! use daisy_core::TaskId;
//! use daisy_proto::RunId;
//! use daisy_proto::subjects::{self, MsgId};
//!
//! let run = RunId::new("cells-2024").unwrap();
//! let task = TaskId::new("smooth").unwrap();
//! assert_eq!(subjects::block_subject(&run, &task), "daisy.v1.cells-2024.block.smooth");
//! assert_eq!(subjects::block_stream(&run), "DAISY_cells-2024_BLOCKS");
//! assert_eq!(
//!     MsgId::dispatch(&run, &task, 7, 1).as_str(),
//!     "cells-2024/smooth/7/1/dispatch"
//! );
//! ```

use std::fmt;

use daisy_core::TaskId;

use crate::{Event, RunId, WorkerId};

/// The protocol-version prefix of every daisy subject.
pub const SUBJECT_PREFIX: &str = "daisy.v1";
/// The prefix of every daisy stream and bucket name (`list_runs` looks for it).
pub const STREAM_PREFIX: &str = "DAISY_";
/// The suffix of a run's block stream name.
pub const BLOCK_STREAM_SUFFIX: &str = "_BLOCKS";
/// The KV key holding the pipeline spec text (TOML) in the meta bucket.
pub const SPEC_KEY: &str = "spec";
/// The KV key holding the run status in the meta bucket.
pub const STATUS_KEY: &str = "status";
/// The KV key holding the scheduler leader lease in the lease bucket.
pub const LEADER_KEY: &str = "leader";
/// The durable consumer of the dead-letter stream.
pub const DLQ_CONSUMER: &str = "daisy-v1-dlq";
/// The header JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// The W3C trace-context header carried on dispatches and events.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The subject a task's dispatches are published on: `daisy.v1.<run>.block.<task>`.
pub fn block_subject(run: &RunId, task: &TaskId) -> String {
    format!("{SUBJECT_PREFIX}.{run}.block.{task}")
}

/// Every block subject of a run: `daisy.v1.<run>.block.>` (the block stream's subjects).
pub fn block_subjects(run: &RunId) -> String {
    format!("{SUBJECT_PREFIX}.{run}.block.>")
}

/// The subject of the marker a new leader publishes in the block stream before it
/// dispatches anything: `daisy.v1.<run>.block.fence.<epoch>`.
///
/// Dispatches are published with `Nats-Expected-Last-Sequence`, so once the marker is stored
/// no earlier leader's dispatch can be (see the scheduler's fencing docs). Two tokens after
/// `block`, so no task consumer (filtered on `block.<task>`) ever receives it.
pub fn fence_subject(run: &RunId, epoch: u64) -> String {
    format!("{SUBJECT_PREFIX}.{run}.block.fence.{epoch}")
}

/// Every fence marker subject of a run: `daisy.v1.<run>.block.fence.>`.
pub fn fence_subjects(run: &RunId) -> String {
    format!("{SUBJECT_PREFIX}.{run}.block.fence.>")
}

/// Whether a block-stream subject is a leader's fence marker, not a task's dispatch.
pub fn is_fence_subject(run: &RunId, subject: &str) -> bool {
    subject
        .strip_prefix(&format!("{SUBJECT_PREFIX}.{run}.block.fence."))
        .is_some_and(|epoch| epoch.parse::<u64>().is_ok())
}

/// Where an event belongs: to the whole run, to one task, or to one dispatch message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventScope<'a> {
    /// A run-level event (a run started, a retry or cancel requested).
    Run,
    /// An event about one task (a task abandoned).
    Task(&'a TaskId),
    /// Outcomes of the blocks of one dispatch message (by its block-stream sequence): a
    /// worker handed a redelivery reads what was recorded for it on this subject alone.
    Batch(&'a TaskId, u64),
}

/// The subject an event is published on: `daisy.v1.<run>.event.task.<task>` for a task,
/// `daisy.v1.<run>.event.task.<task>.<sequence>` for a dispatch message,
/// `daisy.v1.<run>.event.run` for the run.
pub fn event_subject(run: &RunId, scope: EventScope<'_>) -> String {
    match scope {
        EventScope::Run => format!("{SUBJECT_PREFIX}.{run}.event.run"),
        EventScope::Task(task) => format!("{SUBJECT_PREFIX}.{run}.event.task.{task}"),
        EventScope::Batch(task, sequence) => {
            format!("{SUBJECT_PREFIX}.{run}.event.task.{task}.{sequence}")
        }
    }
}

/// Every event subject of a run: `daisy.v1.<run>.event.>` (the event stream's subjects).
pub fn event_subjects(run: &RunId) -> String {
    format!("{SUBJECT_PREFIX}.{run}.event.>")
}

/// Where worker processes say which blocks they run now ([`crate::RunningReport`]):
/// `daisy.v1.<run>.running`. Core NATS only: no stream captures it (it is neither under
/// `block.` nor under `event.`), so a report costs no storage and no acknowledgement.
pub fn running_subject(run: &RunId) -> String {
    format!("{SUBJECT_PREFIX}.{run}.running")
}

/// The run's block stream (WorkQueue retention): `DAISY_<run>_BLOCKS`.
pub fn block_stream(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}{BLOCK_STREAM_SUFFIX}")
}

/// The run whose block stream is called `stream_name`, if it is one.
pub fn run_of_block_stream(stream_name: &str) -> Option<RunId> {
    let run = stream_name.strip_prefix(STREAM_PREFIX)?.strip_suffix(BLOCK_STREAM_SUFFIX)?;
    RunId::new(run)
}

/// The run's event stream (Limits retention): `DAISY_<run>_EVENTS`.
pub fn event_stream(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}_EVENTS")
}

/// The run's dead-letter stream: `DAISY_<run>_DLQ`.
pub fn dlq_stream(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}_DLQ")
}

/// The subjects of the MAX_DELIVERIES advisories of the run's block stream, which the
/// dead-letter stream captures:
/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.DAISY_<run>_BLOCKS.>`.
pub fn max_deliveries_advisories(run: &RunId) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.>", block_stream(run))
}

/// The durable pull consumer through which workers take a task's blocks:
/// `daisy-v1-block-<task>` (unique within the run's block stream).
pub fn block_consumer(task: &TaskId) -> String {
    format!("daisy-v1-block-{task}")
}

/// The run's meta bucket (pipeline spec, run status): `DAISY_<run>_META`.
pub fn meta_bucket(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}_META")
}

/// The run's lease bucket (scheduler leader; `max_age` = lease TTL): `DAISY_<run>_LEASE`.
pub fn lease_bucket(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}_LEASE")
}

/// The run's workers bucket (one key per live worker; `max_age` = liveness TTL):
/// `DAISY_<run>_WORKERS`.
pub fn workers_bucket(run: &RunId) -> String {
    format!("{STREAM_PREFIX}{run}_WORKERS")
}

/// Every bucket of a run.
pub fn buckets(run: &RunId) -> [String; 3] {
    [meta_bucket(run), lease_bucket(run), workers_bucket(run)]
}

/// Every stream of a run (without the buckets' backing streams).
pub fn streams(run: &RunId) -> [String; 3] {
    [block_stream(run), event_stream(run), dlq_stream(run)]
}

/// A worker id that cannot be a KV key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "worker id {id:?} cannot name a liveness key: use 1 to 128 characters from A-Z, a-z, 0-9, \
     '_', '-' and '='"
)]
pub struct InvalidWorkerKey {
    /// The rejected id.
    pub id: String,
}

/// The workers-bucket key of a worker: its id, which must be `[A-Za-z0-9_=-]{1,128}` (one
/// token, so that the bucket's keys list the workers exactly).
///
/// # Errors
/// [`InvalidWorkerKey`] for other ids.
pub fn worker_key(worker: &WorkerId) -> Result<String, InvalidWorkerKey> {
    let id = worker.0.as_str();
    let valid = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '='));
    if valid { Ok(id.to_owned()) } else { Err(InvalidWorkerKey { id: id.to_owned() }) }
}

/// A `Nats-Msg-Id`: JetStream drops a second message with the same id inside the stream's
/// duplicate window (2 minutes), so a retried publish is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MsgId(String);

impl MsgId {
    /// The id of a dispatch whose first block is `index` at `attempt`:
    /// `<run>/<task>/<index>/<attempt>/dispatch`.
    pub fn dispatch(run: &RunId, task: &TaskId, index: u64, attempt: u32) -> MsgId {
        MsgId(format!("{run}/{task}/{index}/{attempt}/dispatch"))
    }

    /// The id of a dispatch by the leader of `epoch`:
    /// `<run>/<task>/<index>/<attempt>/dispatch/<epoch>`.
    ///
    /// Why the epoch: a later leader may legitimately dispatch the same block at the same
    /// attempt again within the duplicate window (after `daisy retry`, or a new `daisy run`
    /// session, where failed blocks start over at attempt 1); without the epoch JetStream
    /// would drop that dispatch as a duplicate and the block would never run. One leader never
    /// dispatches the same (block, attempt) twice, so dedupe within an epoch is unchanged.
    pub fn dispatch_of_epoch(
        run: &RunId,
        task: &TaskId,
        index: u64,
        attempt: u32,
        epoch: u64,
    ) -> MsgId {
        MsgId(format!("{run}/{task}/{index}/{attempt}/dispatch/{epoch}"))
    }

    /// The id of the `number`th dispatch of the leader of `epoch`:
    /// `<run>/<task>/dispatch/<epoch>/<number>`. Unique per dispatch, so a block handed back
    /// and dispatched again at the same attempt is never dropped as a duplicate; only a
    /// retried publish of the same dispatch reuses it.
    pub fn dispatch_numbered(run: &RunId, task: &TaskId, epoch: u64, number: u64) -> MsgId {
        MsgId(format!("{run}/{task}/dispatch/{epoch}/{number}"))
    }

    /// The id of an event, derived from its content so that a retried publish of the same
    /// event gets the same id:
    /// * `RunStarted`: `<run>/run/started/<epoch>/<unix_ms>`;
    /// * `Outcomes` of a dispatch message (`dispatch_sequence` > 0):
    ///   `<run>/<task>/d<sequence>/<delivery>/<part>/outcomes`, or
    ///   `<run>/<task>/d<sequence>/exhausted` for the failure a leader records for a dead
    ///   letter. Every delivery of a message is its own event (a block that failed and then
    ///   succeeded on a redelivery is recorded twice), and only a retried publish of the same
    ///   delivery and part is dropped as a duplicate;
    /// * other `Outcomes`: `<run>/<task>/<first index>/<first attempt>/outcomes/<count>/<worker>/<epoch>`
    ///   (`-` for the index and attempt of an empty report);
    /// * `TaskAbandoned`: `<run>/<task>/abandoned/<epoch>`;
    /// * `RetryRequested`: `<run>/run/retry/<unix_ms>`;
    /// * `CancelRequested`: `<run>/run/cancel/<unix_ms>`.
    pub fn for_event(run: &RunId, event: &Event) -> MsgId {
        match event {
            Event::RunStarted { unix_ms, epoch, .. } => {
                MsgId(format!("{run}/run/started/{epoch}/{unix_ms}"))
            }
            Event::Outcomes(report) if report.dispatch_sequence > 0 => {
                let (task, sequence) = (&report.task, report.dispatch_sequence);
                if report.leader_epoch.is_some() {
                    MsgId(format!("{run}/{task}/d{sequence}/exhausted"))
                } else {
                    let (delivery, part) = (report.delivery, report.part);
                    MsgId(format!("{run}/{task}/d{sequence}/{delivery}/{part}/outcomes"))
                }
            }
            Event::Outcomes(report) => {
                let (index, attempt) = match report.results.first() {
                    Some(first) => (first.index.to_string(), first.attempt.to_string()),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                MsgId(format!(
                    "{run}/{task}/{index}/{attempt}/outcomes/{count}/{worker}/{epoch}",
                    task = report.task,
                    count = report.results.len(),
                    worker = report.worker,
                    epoch = report.epoch,
                ))
            }
            Event::TaskAbandoned { task, epoch, .. } => {
                MsgId(format!("{run}/{task}/abandoned/{epoch}"))
            }
            Event::BatchClaimed { task, dispatch_sequence, delivery, worker } => {
                MsgId(format!("{run}/{task}/d{dispatch_sequence}/{delivery}/claim/{worker}"))
            }
            Event::RetryRequested { unix_ms } => MsgId(format!("{run}/run/retry/{unix_ms}")),
            Event::CancelRequested { unix_ms } => MsgId(format!("{run}/run/cancel/{unix_ms}")),
        }
    }

    /// The id as text, for the header.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockResult, OutcomeKind, OutcomeReport};

    /// A subject token: non-empty, no `.`, `*`, `>` or whitespace.
    fn is_token(token: &str) -> bool {
        !token.is_empty()
            && !token.chars().any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace())
    }

    /// A subject of valid tokens, where only the last one may be `>`.
    fn is_subject(subject: &str, wildcard: bool) -> bool {
        let tokens: Vec<&str> = subject.split('.').collect();
        let (last, rest) = tokens.split_last().expect("split yields at least one token");
        rest.iter().all(|token| is_token(token))
            && if wildcard { *last == ">" } else { is_token(last) }
    }

    /// A stream, consumer or bucket name: `[A-Za-z0-9_-]+`.
    fn is_name(name: &str) -> bool {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    fn awkward_ids() -> Vec<(RunId, TaskId)> {
        let long = "a".repeat(64);
        [("r", "t"), ("run-1_x", "_run"), ("-", "run"), (long.as_str(), long.as_str())]
            .into_iter()
            .map(|(run, task)| (RunId::new(run).unwrap(), TaskId::new(task).unwrap()))
            .collect()
    }

    #[test]
    fn subjects_are_valid_nats_subjects() {
        for (run, task) in awkward_ids() {
            assert!(is_subject(&block_subject(&run, &task), false));
            assert!(is_subject(&block_subjects(&run), true));
            assert!(is_subject(&event_subject(&run, EventScope::Task(&task)), false));
            assert!(is_subject(&event_subject(&run, EventScope::Run), false));
            assert!(is_subject(&event_subject(&run, EventScope::Batch(&task, 17)), false));
            assert!(is_subject(&fence_subject(&run, 17), false));
            assert!(is_fence_subject(&run, &fence_subject(&run, 17)));
            assert!(!is_fence_subject(&run, &block_subject(&run, &task)));
            assert!(is_subject(&event_subjects(&run), true));
            assert!(is_subject(&running_subject(&run), false));
            let captured = |wildcard: String| {
                running_subject(&run).starts_with(wildcard.trim_end_matches('>'))
            };
            assert!(!captured(event_subjects(&run)) && !captured(block_subjects(&run)));
            assert!(is_subject(&max_deliveries_advisories(&run), true));
        }
    }

    #[test]
    fn stream_consumer_and_bucket_names_are_valid() {
        for (run, task) in awkward_ids() {
            for name in streams(&run).into_iter().chain(buckets(&run)) {
                assert!(is_name(&name), "{name}");
            }
            assert!(is_name(&block_consumer(&task)));
            assert!(is_name(DLQ_CONSUMER));
            for key in [SPEC_KEY, STATUS_KEY, LEADER_KEY] {
                assert!(is_token(key));
            }
        }
    }

    #[test]
    fn run_level_events_never_collide_with_a_task() {
        let run = RunId::new("r").unwrap();
        for task in ["run", "_run", "task", "event"] {
            let task = TaskId::new(task).unwrap();
            assert_ne!(
                event_subject(&run, EventScope::Task(&task)),
                event_subject(&run, EventScope::Run)
            );
        }
    }

    #[test]
    fn a_fence_is_never_a_task_dispatch() {
        let run = RunId::new("r").unwrap();
        let fence = TaskId::new("fence").unwrap();
        assert_ne!(fence_subject(&run, 3), block_subject(&run, &fence));
        assert!(!is_fence_subject(&run, &block_subject(&run, &fence)));
    }

    #[test]
    fn block_subjects_of_two_runs_do_not_overlap() {
        let (a, b) = (RunId::new("a").unwrap(), RunId::new("a-b").unwrap());
        let task = TaskId::new("b").unwrap();
        assert!(!block_subject(&b, &task).starts_with(block_subjects(&a).trim_end_matches('>')));
        assert!(!event_subjects(&b).starts_with(event_subjects(&a).trim_end_matches('>')));
    }

    #[test]
    fn list_runs_inverts_block_stream_names() {
        for (run, _) in awkward_ids() {
            assert_eq!(run_of_block_stream(&block_stream(&run)), Some(run.clone()));
        }
        let run = RunId::new("x_BLOCKS").unwrap();
        assert_eq!(run_of_block_stream(&block_stream(&run)), Some(run));
        assert_eq!(run_of_block_stream("DAISY_x_EVENTS"), None);
        assert_eq!(run_of_block_stream("KV_DAISY_x_META"), None);
    }

    #[test]
    fn worker_keys_are_checked() {
        assert_eq!(worker_key(&WorkerId::from("host-1_0")).unwrap(), "host-1_0");
        assert!(worker_key(&WorkerId::from("host.example.org")).is_err());
        assert!(worker_key(&WorkerId::from("")).is_err());
    }

    #[test]
    fn message_ids_follow_the_scheme() {
        let run = RunId::new("r").unwrap();
        let task = TaskId::new("t").unwrap();
        assert_eq!(MsgId::dispatch(&run, &task, 3, 2).as_str(), "r/t/3/2/dispatch");
        let outcomes = Event::Outcomes(OutcomeReport {
            task: "t".into(),
            worker: "w-1".into(),
            results: vec![BlockResult {
                index: 5,
                attempt: 1,
                outcome: OutcomeKind::Success,
                error: None,
                seconds: 0.5,
            }],
            worker_restarts: 0,
            epoch: 3,
            ..Default::default()
        });
        assert_eq!(MsgId::for_event(&run, &outcomes).as_str(), "r/t/5/1/outcomes/1/w-1/3");
        let Event::Outcomes(report) = &outcomes else { unreachable!() };
        let of_message = |delivery, part, leader_epoch| {
            let report = OutcomeReport {
                dispatch_sequence: 41,
                delivery,
                part,
                leader_epoch,
                ..report.clone()
            };
            MsgId::for_event(&run, &Event::Outcomes(report)).as_str().to_owned()
        };
        assert_eq!(of_message(2, 1, None), "r/t/d41/2/1/outcomes");
        assert_ne!(of_message(2, 1, None), of_message(3, 1, None), "a redelivery is a new event");
        assert_eq!(of_message(2, 0, Some(7)), "r/t/d41/exhausted");
        let started = Event::RunStarted { layout_hash: "h".into(), unix_ms: 12, epoch: 4 };
        assert_eq!(MsgId::for_event(&run, &started).as_str(), "r/run/started/4/12");
        let abandoned = Event::TaskAbandoned { task: "t".into(), reason: "x".into(), epoch: 4 };
        assert_eq!(MsgId::for_event(&run, &abandoned).as_str(), "r/t/abandoned/4");
        let retry = Event::RetryRequested { unix_ms: 7 };
        assert_eq!(MsgId::for_event(&run, &retry).as_str(), "r/run/retry/7");
        let cancel = Event::CancelRequested { unix_ms: 8 };
        assert_eq!(MsgId::for_event(&run, &cancel).as_str(), "r/run/cancel/8");
        assert_eq!(MsgId::dispatch_of_epoch(&run, &task, 3, 1, 9).as_str(), "r/t/3/1/dispatch/9");
        assert_eq!(MsgId::dispatch_numbered(&run, &task, 9, 4).as_str(), "r/t/dispatch/9/4");
    }
}
