//! The leader's spans of each block's trace (see `daisy_telemetry::blocks` for the tree).
//!
//! A leader cannot keep one span open across a failover, so each leader has its own
//! lifetime span per block (`block`, id derived from the leader's epoch), from the block's
//! first dispatch by this leader (or the takeover, for a batch it adopted) to the block's
//! end, or to this leader's step-down. Under it, one `dispatch` span per batch the block
//! was in, closed when the outcome is applied; its id is derived from the batch's stream
//! sequence, which the worker knows too, so the worker's spans hang under it.
//!
//! Only built when spans are exported: the state is a map over the blocks in flight.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use daisy_core::{BlockIndex, Pipeline, TaskIndex};
use daisy_proto::{Dispatch, FailureKind, OutcomeKind, OutcomeReport, RunId};
use daisy_telemetry::blocks::{self, Attempt, SpanContext, SpanRecord};
use daisy_telemetry::{BlockTraceId, block_trace_id};

/// A batch this leader dispatched.
struct Batch {
    at: SystemTime,
    /// The batch's own span (the `traceparent` it was sent with).
    link: Option<SpanContext>,
}

/// A block with an open lifetime span.
struct Life {
    start: SystemTime,
    attempts: u32,
    failed: bool,
    retried: bool,
    /// When the leader saw it run far longer than its task's median (and which attempt).
    straggler: Option<(SystemTime, u32)>,
}

/// The block spans of one leader.
pub(super) struct BlockTraces {
    run: RunId,
    pipeline: Arc<Pipeline>,
    epoch: u64,
    leader: String,
    /// When this leader took over: the start of what it adopted.
    took_over: SystemTime,
    batches: HashMap<u64, Batch>,
    lives: HashMap<(TaskIndex, u64), Life>,
    /// Batches whose every outcome was applied (the latest [`DONE_BATCHES`]): a late report
    /// of one (a second worker's, after a redelivery) is stale, and must not open spans of
    /// blocks that already ended.
    done: HashSet<u64>,
    done_order: VecDeque<u64>,
}

/// How many finished batches [`BlockTraces`] remembers, for refusing their late reports.
const DONE_BATCHES: usize = 65_536;

impl BlockTraces {
    /// The spans of the leader of `epoch`, or `None` when spans are not exported.
    pub fn new(run: RunId, pipeline: Arc<Pipeline>, epoch: u64, leader: String) -> Option<Self> {
        blocks::enabled().then(|| Self {
            run,
            pipeline,
            epoch,
            leader,
            took_over: SystemTime::now(),
            batches: HashMap::new(),
            lives: HashMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
        })
    }

    /// `dispatch` was stored as batch `batch`, sent in the span `link`.
    pub fn dispatched(
        &mut self,
        task: TaskIndex,
        dispatch: &Dispatch,
        batch: u64,
        link: Option<SpanContext>,
    ) {
        let at = SystemTime::now();
        self.batches.insert(batch, Batch { at, link });
        for work in &dispatch.blocks {
            self.lives.entry((task, work.index)).or_insert(Life {
                start: at,
                attempts: 0,
                failed: false,
                retried: work.attempt > 1,
                straggler: None,
            });
        }
    }

    /// The block runs far longer than its task's median: its trace is kept whatever the
    /// ratio, and its lifetime span says when it was seen.
    pub fn straggler(&mut self, task: TaskIndex, index: u64, attempt: u32) {
        if let Some(life) = self.lives.get_mut(&(task, index)) {
            life.straggler.get_or_insert((SystemTime::now(), attempt));
        }
    }

    /// Every outcome of `batch` is applied.
    pub fn batch_done(&mut self, batch: u64) {
        self.batches.remove(&batch);
        if self.done.insert(batch) {
            self.done_order.push_back(batch);
            if self.done_order.len() > DONE_BATCHES
                && let Some(oldest) = self.done_order.pop_front()
            {
                self.done.remove(&oldest);
            }
        }
    }

    /// Closes the dispatch spans of the blocks `report` settles, and the lifetime spans of
    /// those that reached their end.
    pub fn outcomes(&mut self, report: &OutcomeReport) {
        let Some(task) = self.pipeline.task_index(&report.task) else { return };
        let now = SystemTime::now();
        let batch = report.dispatch_sequence;
        if self.done.contains(&batch) {
            return;
        }
        let (dispatched_at, link, adopted) = match self.batches.get(&batch) {
            Some(known) => (known.at, known.link.clone(), false),
            None => (self.took_over, None, true),
        };
        let max_retries = self.pipeline.task(task).spec.max_retries;
        let policy = blocks::policy();
        let settled = report
            .results
            .iter()
            .map(|result| (result.index, Some(result)))
            .chain(report.returned.iter().map(|index| (*index, None)));
        for (index, result) in settled {
            let Some(place) = self.place(task, index) else { continue };
            let trace = place.trace;
            let life = self.lives.entry((task, index)).or_insert(Life {
                start: self.took_over,
                attempts: 0,
                failed: false,
                retried: true,
                straggler: None,
            });
            let took = now.duration_since(dispatched_at).unwrap_or(Duration::ZERO);
            let (attempt, outcome, error, terminal) = match result {
                Some(result) => {
                    let (outcome, error, terminal) = match result.outcome {
                        OutcomeKind::Success => ("success", None, true),
                        OutcomeKind::Skipped => ("skipped", None, true),
                        OutcomeKind::Failed { kind } => (
                            "failed",
                            Some(match &result.error {
                                Some(text) => format!("{kind}: {text}"),
                                None => kind.to_string(),
                            }),
                            kind == FailureKind::DeliveriesExhausted
                                || result.attempt > max_retries,
                        ),
                    };
                    (result.attempt, outcome, error, terminal)
                }
                None => (0, "returned unstarted", None, false),
            };
            let retried = attempt > 1 || report.delivery > 1 || adopted;
            life.attempts += u32::from(result.is_some());
            life.failed |= error.is_some();
            life.retried |= retried;
            let straggler = life.straggler.is_some_and(|(_, seen)| seen == attempt);
            let attempt_seen = Attempt { failed: error.is_some(), retried, took, straggler };
            let sampled = policy.keeps(trace, attempt_seen);
            if sampled {
                let mut span = SpanRecord::new("dispatch", trace, dispatched_at, now);
                span.id = Some(blocks::dispatch_span_id(trace, batch));
                span.parent = Some(blocks::block_span_id(trace, self.epoch));
                span.kind = blocks::SpanKind::Producer;
                span.attributes = place.attributes(&self.run, &report.task, attempt);
                span.attributes.extend([
                    blocks::KeyValue::new("daisy.batch", i64::try_from(batch).unwrap_or(i64::MAX)),
                    blocks::KeyValue::new(
                        "daisy.epoch",
                        i64::try_from(self.epoch).unwrap_or(i64::MAX),
                    ),
                    blocks::KeyValue::new("daisy.leader", self.leader.clone()),
                    blocks::KeyValue::new("daisy.worker", report.worker.0.clone()),
                    blocks::KeyValue::new(
                        "daisy.delivery",
                        i64::try_from(report.delivery).unwrap_or(i64::MAX),
                    ),
                    blocks::KeyValue::new("daisy.outcome", outcome),
                    blocks::KeyValue::new("daisy.adopted", adopted),
                    blocks::KeyValue::new("daisy.straggler", straggler),
                ]);
                span.error = error;
                span.links.extend(link.clone());
                blocks::emit(span);
            }
            if terminal {
                let life = self.lives.remove(&(task, index)).expect("inserted above");
                let status = if outcome == "failed" { "failed" } else { outcome };
                self.end_life(&place, &report.task, life, now, status, None);
            }
        }
    }

    /// Closes the lifetime span of a block.
    fn end_life(
        &self,
        place: &Place,
        task: &str,
        life: Life,
        end: SystemTime,
        status: &'static str,
        event: Option<&'static str>,
    ) {
        let took = end.duration_since(life.start).unwrap_or(Duration::ZERO);
        let straggler = life.straggler.is_some();
        let attempt = Attempt { failed: life.failed, retried: life.retried, took, straggler };
        if !blocks::policy().keeps(place.trace, attempt) {
            return;
        }
        let mut span = SpanRecord::new("block", place.trace, life.start, end);
        span.id = Some(blocks::block_span_id(place.trace, self.epoch));
        span.attributes = place.attributes(&self.run, task, life.attempts);
        span.attributes.extend([
            blocks::KeyValue::new("daisy.status", status),
            blocks::KeyValue::new("daisy.epoch", i64::try_from(self.epoch).unwrap_or(i64::MAX)),
            blocks::KeyValue::new("daisy.leader", self.leader.clone()),
        ]);
        if status == "failed" {
            span.error = Some(format!("the block failed after {} attempts", life.attempts));
        }
        if let Some((seen, attempt)) = life.straggler {
            let attempt = blocks::KeyValue::new("daisy.attempt", i64::from(attempt));
            span.events.push((
                "straggler: running far longer than the task's median",
                seen,
                vec![attempt],
            ));
        }
        if let Some(event) = event {
            span.events.push((event, end, Vec::new()));
        }
        blocks::emit(span);
    }

    /// The block's identity and geometry, for its spans.
    fn place(&self, task: TaskIndex, index: u64) -> Option<Place> {
        let grid = &self.pipeline.task(task).grid;
        if index >= grid.num_blocks() {
            return None;
        }
        let k = grid.grid_index(BlockIndex(index));
        let block_id = grid.block_id(&k).0;
        let task_id = &self.pipeline.task(task).spec.id;
        Some(Place {
            trace: block_trace_id(self.run.as_str(), task_id.as_str(), block_id),
            block_id,
            level: grid.level(&k),
            read_roi: grid.read_roi(&k).to_string(),
            write_roi: grid.write_roi(&k).to_string(),
        })
    }
}

impl Drop for BlockTraces {
    /// The leader stops (its run ended, it was deposed, it was cancelled): the lifetime
    /// spans of the blocks not finished under it end here; the next leader opens its own.
    fn drop(&mut self) {
        let now = SystemTime::now();
        for ((task, index), life) in std::mem::take(&mut self.lives) {
            let Some(place) = self.place(task, index) else { continue };
            let task_id = self.pipeline.task(task).spec.id.to_string();
            self.end_life(&place, &task_id, life, now, "unfinished", Some("leader stopped"));
        }
    }
}

/// Where a block is, for its span attributes.
struct Place {
    trace: BlockTraceId,
    block_id: u64,
    level: usize,
    read_roi: String,
    write_roi: String,
}

impl Place {
    fn attributes(&self, run: &RunId, task: &str, attempt: u32) -> Vec<blocks::KeyValue> {
        blocks::block_attributes(
            run.as_str(),
            task,
            self.block_id,
            attempt,
            self.level,
            &self.read_roi,
            &self.write_roi,
        )
    }
}
