//! A real OTLP/HTTP (protobuf) trace receiver for tests: the binaries export to it with
//! their ordinary exporter, and tests read the spans it decoded.
//!
//! A collector is an HTTP server that takes `POST /v1/traces` with an
//! `ExportTraceServiceRequest` body; this one is a std `TcpListener` with a thread per
//! connection and the few lines of HTTP/1.1 the exporter uses (keep-alive, a
//! `Content-Length` body), so the test harness needs no HTTP server crate. Bodies are
//! decoded with `opentelemetry-proto`, the collector's own message definitions.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

/// One received span, with ids in hex as Jaeger shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent: Option<String>,
    /// The status message of a span with status Error.
    pub error: Option<String>,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// Event names, in order.
    pub events: Vec<String>,
    /// Linked spans: (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Start and end, in nanoseconds since the epoch.
    pub start_ns: u64,
    /// End, in nanoseconds since the epoch.
    pub end_ns: u64,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The receiver. Dropping it leaves its threads blocked on an unused port until the test
/// process ends, which is harmless.
pub struct OtlpReceiver {
    url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Listens on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// No port could be bound.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &sink);
                });
            }
        });
        Ok(Self { url, spans })
    }

    /// The base URL to give `--otlp` (the exporter appends `/v1/traces`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Serves one keep-alive connection: requests until the peer closes it.
fn serve(stream: TcpStream, sink: &Mutex<Vec<ReceivedSpan>>) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (status, decoded) = if request_line.starts_with("POST /v1/traces ") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => ("200 OK", Some(request)),
                Err(_) => ("400 Bad Request", None),
            }
        } else {
            ("404 Not Found", None)
        };
        if let Some(request) = decoded {
            let spans = flatten(request);
            sink.lock().unwrap_or_else(PoisonError::into_inner).extend(spans);
        }
        write!(
            writer,
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        )?;
        writer.flush()?;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let error = span
                    .status
                    .as_ref()
                    .filter(|status| status.code == StatusCode::Error as i32)
                    .map(|status| status.message.clone());
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                    error,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                        })
                        .collect(),
                    events: span.events.iter().map(|event| event.name.clone()).collect(),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    spans
}
