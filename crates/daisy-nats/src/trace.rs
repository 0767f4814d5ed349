//! W3C trace context (`traceparent`) in NATS message headers: the carrier side of
//! `daisy_telemetry::propagation` (OpenTelemetry's `TraceContextPropagator` writes and
//! reads the header format).
//!
//! The scheduler sends each batch with its batch span's context; JetStream stores the
//! header with the message, so every redelivery carries it too, and the worker links its
//! block spans to it.

use async_nats::HeaderMap;
use daisy_telemetry::propagation::{Extractor, Injector};

/// Headers carrying the current span's context, or `None` when spans are not exported.
pub fn current_headers() -> Option<HeaderMap> {
    let mut carrier = Carrier(HeaderMap::new());
    daisy_telemetry::propagation::inject_current(&mut carrier);
    let headers = carrier.0;
    (!headers.is_empty()).then_some(headers)
}

/// The span context a message's headers carry, if they carry a valid one.
pub fn context_of(headers: Option<&HeaderMap>) -> Option<daisy_telemetry::blocks::SpanContext> {
    daisy_telemetry::propagation::extract(&Carrier(headers?.clone()))
}

/// NATS headers as an OpenTelemetry carrier.
struct Carrier(HeaderMap);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_is_read_and_a_bad_one_is_not() {
        let mut headers = HeaderMap::new();
        headers.insert(
            daisy_proto::subjects::TRACEPARENT_HEADER,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let cx = context_of(Some(&headers)).expect("valid");
        assert_eq!(cx.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        let mut bad = HeaderMap::new();
        bad.insert(daisy_proto::subjects::TRACEPARENT_HEADER, "00-garbage");
        assert!(context_of(Some(&bad)).is_none());
        assert!(context_of(None).is_none());
        assert!(current_headers().is_none(), "nothing is injected without export");
    }
}
