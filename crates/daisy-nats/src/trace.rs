//! W3C trace context (`traceparent`) carried in NATS message headers, so
//! that the scheduler's dispatch of a batch and the worker's outcome event
//! share one trace id across processes and machines.
//!
//! The scheduler starts a trace per dispatched batch; JetStream stores the
//! header with the message, so every redelivery carries it too; the worker
//! records its outcome event with a child span of the same trace. Exporting
//! spans (OTLP to Jaeger) builds on these ids.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use daisy_proto::subjects::TRACEPARENT_HEADER;

/// 64 bits that differ per call and per process (std's randomly keyed
/// hasher over a counter; no cryptographic strength needed).
fn random_u64() -> u64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = STATE.get_or_init(RandomState::new);
    let value = state.hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    if value == 0 { 1 } else { value } // all-zero ids are invalid in W3C
}

/// A new trace: `00-<trace id>-<span id>-01` (sampled).
pub fn new_traceparent() -> String {
    format!("00-{:016x}{:016x}-{:016x}-01", random_u64(), random_u64(), random_u64())
}

/// A new span of the same trace as `parent`, or a new trace if `parent` is
/// not a valid `traceparent`.
pub fn child_traceparent(parent: &str) -> String {
    match trace_id(parent) {
        Some(trace) => format!("00-{trace}-{:016x}-01", random_u64()),
        None => new_traceparent(),
    }
}

/// The trace id of a valid `traceparent` value.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none() && hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2))
        .then_some(trace)
}

/// Headers carrying `traceparent`.
pub fn traceparent_headers(traceparent: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT_HEADER, traceparent);
    headers
}

/// The `traceparent` of a message, if it has a valid one.
pub fn traceparent_of(headers: Option<&HeaderMap>) -> Option<String> {
    let value = headers?.get(TRACEPARENT_HEADER)?.as_str().to_owned();
    trace_id(&value).is_some().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_w3c_and_children_keep_the_trace() {
        let parent = new_traceparent();
        assert_eq!(parent.len(), 55, "{parent}");
        let trace = trace_id(&parent).expect("valid").to_owned();
        let child = child_traceparent(&parent);
        assert_eq!(trace_id(&child), Some(trace.as_str()));
        assert_ne!(child, parent, "a new span id");
        assert_ne!(trace_id(&new_traceparent()), Some(trace.as_str()), "a new trace id");
        assert_eq!(trace_id("garbage"), None);
        let headers = traceparent_headers(&parent);
        assert_eq!(traceparent_of(Some(&headers)), Some(parent));
        assert_eq!(traceparent_of(None), None);
    }
}
