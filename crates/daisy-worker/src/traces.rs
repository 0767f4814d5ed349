//! The worker's spans of each block's trace: queue wait, check, process (heartbeats as
//! events, the log files named) and the recording of the outcome, all under the
//! scheduler's `dispatch` span of the batch (its id derived from the batch's stream
//! sequence; see `daisy_telemetry::blocks`).

use std::time::{Duration, SystemTime};

use daisy_proto::{BlockResult, OutcomeKind, WorkerId};
use daisy_telemetry::blocks::{self, Attempt, KeyValue, SpanContext, SpanKind, SpanRecord};

use crate::runner::WorkBlock;

/// What the worker knows of the batch its block spans belong to.
#[derive(Debug, Clone)]
pub struct BatchTrace {
    /// The run.
    pub run: String,
    /// The batch's stream sequence: names the dispatch span.
    pub batch: u64,
    /// Which delivery of the batch this is.
    pub delivery: u64,
    /// When the batch was stored in the stream (the queue wait starts there).
    pub published: SystemTime,
    /// The batch's own span (its `traceparent`).
    pub link: Option<SpanContext>,
}

/// When a block's check and process ran.
#[derive(Debug, Clone, Copy)]
pub struct BlockTiming {
    /// The check started.
    pub start: SystemTime,
    /// The check ended and the process started.
    pub checked: SystemTime,
    /// The process ended.
    pub end: SystemTime,
}

impl BlockTiming {
    pub(crate) fn start() -> Self {
        let now = SystemTime::now();
        Self { start: now, checked: now, end: now }
    }
}

/// Emits the spans of a batch's blocks that the sampling policy keeps.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_batch(
    trace: &BatchTrace,
    worker: &WorkerId,
    blocks: &[(WorkBlock, usize)],
    results: &[BlockResult],
    timings: &[BlockTiming],
    heartbeats: &[SystemTime],
    recorded: (SystemTime, SystemTime),
    has_check: bool,
    logs: &[String],
) {
    let policy = blocks::policy();
    for ((result, timing), (block, level)) in results.iter().zip(timings).zip(blocks) {
        let trace_id =
            daisy_telemetry::block_trace_id(&trace.run, &block.task_id, block.block_id.0);
        let failed = matches!(result.outcome, OutcomeKind::Failed { .. });
        let took = timing.end.duration_since(timing.start).unwrap_or(Duration::ZERO);
        let retried = result.attempt > 1 || trace.delivery > 1;
        if !policy.keeps(trace_id, Attempt { failed, retried, took, straggler: false }) {
            continue;
        }
        let parent = blocks::dispatch_span_id(trace_id, trace.batch);
        let mut attributes = blocks::block_attributes(
            &trace.run,
            &block.task_id,
            block.block_id.0,
            result.attempt,
            *level,
            &block.read_roi,
            &block.write_roi,
        );
        attributes.extend([
            KeyValue::new("daisy.worker", worker.0.clone()),
            KeyValue::new("daisy.batch", i64::try_from(trace.batch).unwrap_or(i64::MAX)),
            KeyValue::new("daisy.delivery", i64::try_from(trace.delivery).unwrap_or(i64::MAX)),
        ]);
        let span = |name, start, end| {
            let mut span = SpanRecord::new(name, trace_id, start, end);
            span.parent = Some(parent);
            span.kind = SpanKind::Consumer;
            span.attributes = attributes.clone();
            span.links.extend(trace.link.clone());
            span
        };
        blocks::emit(span("queue wait", trace.published.min(timing.start), timing.start));
        if has_check {
            let mut check = span("check", timing.start, timing.checked);
            let skipped = result.outcome == OutcomeKind::Skipped;
            check.attributes.push(KeyValue::new("daisy.done_already", skipped));
            blocks::emit(check);
        }
        if result.outcome != OutcomeKind::Skipped {
            let mut process = span("process", timing.checked, timing.end);
            process.attributes.push(KeyValue::new(
                "daisy.outcome",
                match result.outcome {
                    OutcomeKind::Success => "success".to_owned(),
                    OutcomeKind::Skipped => "skipped".to_owned(),
                    OutcomeKind::Failed { kind } => kind.to_string(),
                },
            ));
            if !logs.is_empty() {
                process.attributes.push(KeyValue::new("daisy.logs", logs.join(" ")));
            }
            process.events = heartbeats
                .iter()
                .filter(|at| (timing.checked..=timing.end).contains(*at))
                .map(|at| ("heartbeat", *at, Vec::new()))
                .collect();
            if failed {
                process.error = Some(match (&result.outcome, &result.error) {
                    (OutcomeKind::Failed { kind }, Some(text)) => format!("{kind}: {text}"),
                    (OutcomeKind::Failed { kind }, None) => kind.to_string(),
                    _ => String::new(),
                });
            }
            blocks::emit(process);
        }
        blocks::emit(span("record outcome", recorded.0, recorded.1));
    }
}
