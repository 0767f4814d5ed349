//! The spans of a block's trace.
//!
//! # One trace per block, without coordination
//! Every span of a block carries the block's derived trace id ([`crate::block_trace_id`]),
//! and the span ids that other processes must point at are derived too:
//!
//! ```text
//! block            (scheduler: one per leader and block, id from (trace, leader epoch))
//! └─ dispatch      (scheduler: one per batch the block was in, id from (trace, batch sequence))
//!    ├─ queue wait (worker: from the batch's publication to the block's start)
//!    ├─ check      (worker)
//!    ├─ process    (worker, heartbeats as events)
//!    └─ record outcome (worker)
//! ```
//!
//! The worker knows the batch's stream sequence, so it computes the id of the dispatch span
//! its spans hang under; a leader that adopts a batch after a failover computes the same id
//! and closes the dispatch its predecessor opened. Nothing is stored or sent for it.
//!
//! # Spans are built when they end
//! A span is emitted as a [`SpanRecord`] with its start and end time once its outcome is
//! known, so the sampling decision can look at the outcome: failed, retried (or
//! redelivered) and slow blocks are always kept, others by a ratio of their trace id (the
//! same ratio everywhere, so all parties keep or drop the same traces). With no collector
//! configured [`enabled`] is false and callers record nothing: a relaxed atomic load per
//! batch.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::Context;
use opentelemetry::trace::{
    Link, Span as _, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry_sdk::trace::{
    Config, IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult, SdkTracer,
    ShouldSample,
};
use xxhash_rust::xxh3::xxh3_64;

use crate::BlockTraceId;

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::{SpanContext, SpanKind};

/// The tracer of block spans, set when a collector is configured.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();
/// Whether block spans are recorded (false until export is set up, and after shutdown).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Which block traces are kept.
static POLICY: OnceLock<SamplingPolicy> = OnceLock::new();

pub(crate) fn enable(tracer: SdkTracer) {
    if TRACER.set(tracer).is_ok() {
        ENABLED.store(true, Ordering::Release);
    }
}

pub(crate) fn disable() {
    ENABLED.store(false, Ordering::Release);
}

/// Whether block spans are exported: callers record nothing for them otherwise.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Which block traces are kept: a ratio of trace ids, plus every failed, retried or slow
/// block.
#[derive(Debug, Clone, Copy)]
pub struct SamplingPolicy {
    /// The share of traces kept by id, 0 to 1 (`OTEL_TRACES_SAMPLER=traceidratio` and
    /// `OTEL_TRACES_SAMPLER_ARG`; `always_off` is 0; default 1).
    pub ratio: f64,
    /// Attempts at least this long are kept (`DAISY_TRACE_SLOW`, default 60 s).
    pub slow: Duration,
}

impl SamplingPolicy {
    fn from_env() -> Self {
        let ratio = match std::env::var("OTEL_TRACES_SAMPLER").as_deref() {
            Ok("always_off" | "parentbased_always_off") => 0.0,
            Ok("traceidratio" | "parentbased_traceidratio") => {
                std::env::var("OTEL_TRACES_SAMPLER_ARG")
                    .ok()
                    .and_then(|arg| arg.trim().parse::<f64>().ok())
                    .filter(|ratio| (0.0..=1.0).contains(ratio))
                    .unwrap_or(1.0)
            }
            _ => 1.0,
        };
        let slow = std::env::var("DAISY_TRACE_SLOW")
            .ok()
            .and_then(|text| humantime::parse_duration(text.trim()).ok())
            .unwrap_or(Duration::from_secs(60));
        Self { ratio, slow }
    }

    /// Whether the trace is kept by its id alone: its low 63 bits against the ratio, as
    /// OpenTelemetry's `TraceIdRatioBased` does.
    pub fn by_id(&self, trace: BlockTraceId) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        let low = (trace.to_u128() as u64) >> 1;
        (low as f64) < self.ratio * (1u64 << 63) as f64
    }

    /// Whether an attempt's spans are kept: by id, or because the attempt failed, is a retry
    /// or a redelivery, or took at least [`SamplingPolicy::slow`].
    pub fn keeps(&self, trace: BlockTraceId, attempt: Attempt) -> bool {
        attempt.failed
            || attempt.retried
            || attempt.straggler
            || attempt.took >= self.slow
            || self.by_id(trace)
    }
}

/// The sampling policy of this process (read from the environment once).
pub fn policy() -> SamplingPolicy {
    *POLICY.get_or_init(SamplingPolicy::from_env)
}

/// What a party saw of an attempt, for [`SamplingPolicy::keeps`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempt {
    /// It failed.
    pub failed: bool,
    /// It is not the block's first attempt, or its batch was delivered more than once, or
    /// another leader dispatched it.
    pub retried: bool,
    /// How long it took.
    pub took: Duration,
    /// The scheduler saw it run far longer than its task's median (a straggler).
    pub straggler: bool,
}

/// A span id derived from the block's trace id, a tag naming the span's role and numbers
/// that single it out (the leader epoch, the batch sequence): every party that knows them
/// computes the same id.
pub fn span_id(trace: BlockTraceId, role: &str, numbers: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(16 + role.len() + 8 * numbers.len());
    bytes.extend_from_slice(&trace.0);
    bytes.extend_from_slice(role.as_bytes());
    for number in numbers {
        bytes.extend_from_slice(&number.to_le_bytes());
    }
    match xxh3_64(&bytes) {
        0 => 1, // an all-zero span id is invalid in W3C
        id => id,
    }
}

/// The id of the leader's lifetime span of a block.
pub fn block_span_id(trace: BlockTraceId, epoch: u64) -> u64 {
    span_id(trace, "block", &[epoch])
}

/// The id of the span of a block's dispatch in batch `batch` (its block-stream sequence).
pub fn dispatch_span_id(trace: BlockTraceId, batch: u64) -> u64 {
    span_id(trace, "dispatch", &[batch])
}

/// A finished span of a block's trace.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its name (`block`, `dispatch`, `process`, …).
    pub name: &'static str,
    /// The block's trace.
    pub trace: BlockTraceId,
    /// Its own id; `None` for a random one (spans nothing else points at).
    pub id: Option<u64>,
    /// Its parent's id in the same trace; `None` for a root span.
    pub parent: Option<u64>,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<KeyValue>,
    /// Timestamped events (heartbeats, a step-down).
    pub events: Vec<(&'static str, SystemTime, Vec<KeyValue>)>,
    /// Set for a failure: the span's status is Error with this message.
    pub error: Option<String>,
    /// Spans of other traces it relates to (the batch's span).
    pub links: Vec<SpanContext>,
    /// Whether the scheduler (`Internal`), a producer or a consumer ran it.
    pub kind: SpanKind,
}

impl SpanRecord {
    /// A span of `trace` from `start` to `end`, with nothing else set.
    pub fn new(
        name: &'static str,
        trace: BlockTraceId,
        start: SystemTime,
        end: SystemTime,
    ) -> Self {
        Self {
            name,
            trace,
            id: None,
            parent: None,
            start,
            end,
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
            links: Vec::new(),
            kind: SpanKind::Internal,
        }
    }
}

/// The attributes every span of a block carries.
pub fn block_attributes(
    run: &str,
    task: &str,
    block_id: u64,
    attempt: u32,
    level: usize,
    read_roi: &dyn std::fmt::Display,
    write_roi: &dyn std::fmt::Display,
) -> Vec<KeyValue> {
    vec![
        KeyValue::new("daisy.run", run.to_owned()),
        KeyValue::new("daisy.task", task.to_owned()),
        KeyValue::new("daisy.block_id", i64::try_from(block_id).unwrap_or(i64::MAX)),
        KeyValue::new("daisy.attempt", i64::from(attempt)),
        KeyValue::new("daisy.level", i64::try_from(level).unwrap_or(i64::MAX)),
        KeyValue::new("daisy.read_roi", read_roi.to_string()),
        KeyValue::new("daisy.write_roi", write_roi.to_string()),
    ]
}

thread_local! {
    /// The ids [`Ids`] hands out next on this thread, set around one span's creation.
    static NEXT_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
    /// Set around one block span's creation: the block's own policy decided already.
    static FORCE_SAMPLE: Cell<bool> = const { Cell::new(false) };
}

/// Exports a finished block span (nothing if export is off).
pub fn emit(record: SpanRecord) {
    let Some(tracer) = TRACER.get().filter(|_| enabled()) else { return };
    let trace = TraceId::from_bytes(record.trace.0);
    let parent = match record.parent {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            trace,
            SpanId::from(parent),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut builder = tracer
        .span_builder(record.name)
        .with_kind(record.kind)
        .with_start_time(record.start)
        .with_attributes(record.attributes);
    if !record.links.is_empty() {
        builder = builder.with_links(record.links.into_iter().map(Link::with_context).collect());
    }
    // The SDK takes span ids (and a root's trace id) from its id generator and asks its
    // sampler: both are ours and read these for the one span built on this thread now.
    NEXT_TRACE.set(Some(trace));
    NEXT_SPAN.set(record.id.map(SpanId::from));
    FORCE_SAMPLE.set(true);
    let mut span = tracer.build_with_context(builder, &parent);
    NEXT_TRACE.set(None);
    NEXT_SPAN.set(None);
    FORCE_SAMPLE.set(false);
    for (name, at, attributes) in record.events {
        span.add_event_with_timestamp(name, at, attributes);
    }
    if let Some(message) = record.error {
        span.set_status(Status::error(message));
    }
    span.end_with_timestamp(record.end);
}

/// The id generator: random ids, except for the one block span [`emit`] is building.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    random: RandomIdGenerator,
}

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE.take().unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN.take().unwrap_or_else(|| self.random.new_span_id())
    }
}

/// The sampler: block spans are decided by [`SamplingPolicy`] before they are built; every
/// other span by the standard `OTEL_TRACES_SAMPLER` settings.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    inner: Box<dyn ShouldSample>,
}

impl Sampler {
    pub(crate) fn from_env() -> Self {
        Self { inner: Config::default().sampler }
    }
}

impl ShouldSample for Sampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if FORCE_SAMPLE.get() {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.inner.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The span context of the current `tracing` span (the batch span a dispatch is sent in),
/// for a link from a block span; `None` without export or outside a span.
pub fn current_span_context() -> Option<SpanContext> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !enabled() {
        return None;
    }
    crate::propagation::valid_span_context(&tracing::Span::current().context())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_trace_id;

    #[test]
    fn derived_span_ids_differ_by_role_and_number_and_are_stable() {
        let trace = block_trace_id("run", "task", 7);
        assert_eq!(dispatch_span_id(trace, 3), dispatch_span_id(trace, 3));
        assert_ne!(dispatch_span_id(trace, 3), dispatch_span_id(trace, 4));
        assert_ne!(dispatch_span_id(trace, 3), block_span_id(trace, 3));
        assert_ne!(
            dispatch_span_id(trace, 3),
            dispatch_span_id(block_trace_id("run", "task", 8), 3)
        );
    }

    #[test]
    fn the_ratio_keeps_a_stable_share_and_failures_are_always_kept() {
        let policy = SamplingPolicy { ratio: 0.25, slow: Duration::from_secs(60) };
        let kept = (0..10_000).filter(|id| policy.by_id(block_trace_id("r", "t", *id))).count();
        assert!((2_200..2_800).contains(&kept), "{kept} of 10000 kept at 25 %");
        let dropped = (0..100)
            .map(|id| block_trace_id("r", "t", id))
            .find(|trace| !policy.by_id(*trace))
            .expect("some trace is dropped at 25 %");
        assert!(!policy.keeps(dropped, Attempt::default()));
        assert!(policy.keeps(dropped, Attempt { failed: true, ..Attempt::default() }));
        assert!(policy.keeps(dropped, Attempt { retried: true, ..Attempt::default() }));
        assert!(
            policy.keeps(dropped, Attempt { took: Duration::from_secs(60), ..Attempt::default() })
        );
        let none = SamplingPolicy { ratio: 0.0, ..policy };
        assert!(!none.by_id(block_trace_id("r", "t", 1)));
    }
}
