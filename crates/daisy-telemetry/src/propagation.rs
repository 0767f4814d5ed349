//! The W3C trace context (`traceparent`) of a batch in message headers, by OpenTelemetry's
//! `TraceContextPropagator`: the scheduler's batch span travels with the dispatch, and block
//! spans link to it. The header carriers (NATS headers) implement [`Injector`] and
//! [`Extractor`] where the headers live.

use opentelemetry::propagation::TextMapPropagator;
pub use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Writes the current `tracing` span's context into `carrier`; nothing without export (the
/// span has no OpenTelemetry context then).
pub fn inject_current(carrier: &mut dyn Injector) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !crate::blocks::enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, carrier);
}

/// The span context a carrier holds, if it holds a valid one.
pub fn extract(carrier: &dyn Extractor) -> Option<SpanContext> {
    valid_span_context(&TraceContextPropagator::new().extract(carrier))
}

/// The span context of `cx`, if it is a valid one.
pub(crate) fn valid_span_context(cx: &opentelemetry::Context) -> Option<SpanContext> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.clone())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_traceparent_header_is_read_and_garbage_is_not() {
        let mut headers = HashMap::new();
        headers.insert(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        );
        let sc = extract(&headers).expect("valid");
        assert_eq!(sc.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        headers.insert("traceparent".to_owned(), "garbage".to_owned());
        assert!(extract(&headers).is_none());
    }
}
