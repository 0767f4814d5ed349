//! Installs the process's `tracing` subscriber: an env filter, log lines on stderr (human or
//! JSON), and, when a collector is configured, the OpenTelemetry layer with an OTLP exporter.
//!
//! # Why export never stalls a run
//! Spans go through the SDK's batch processor: a bounded queue drained by its own thread,
//! which drops spans when full rather than block the caller. The exporter (HTTP/protobuf,
//! blocking client on that thread) has a timeout; a collector that does not answer costs one
//! warning (see [`WarnOnFailure`]), never a stalled scheduler or a lost block.

use std::fmt;
use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::blocks;
use crate::logs::{LogOutput, filter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event (colours on a terminal).
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format '{other}': use 'human' or 'json'")),
        }
    }
}

/// What [`init`] sets up. Start from [`Options::new`] and change fields.
#[derive(Debug, Clone)]
pub struct Options {
    /// The OpenTelemetry service name, unless `OTEL_SERVICE_NAME` is set: the binary's name.
    pub service: String,
    /// `-v` count: 1 info, 2 debug, 3 trace for daisy crates (beats `RUST_LOG`).
    pub verbose: u8,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The OTLP collector's base URL (`http://localhost:4318`); `None` falls back to
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, and with none of
    /// them set nothing is exported.
    pub otlp: Option<String>,
}

impl Options {
    /// Human logs at the default level, no export unless the environment asks for it.
    pub fn new(service: impl Into<String>) -> Self {
        Self { service: service.into(), verbose: 0, log_format: LogFormat::Human, otlp: None }
    }
}

/// Telemetry could not be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The OTLP settings are unusable.
    #[error("{0}")]
    Otlp(String),
}

/// The installed telemetry. Keep it alive until the process ends: dropping it flushes the
/// spans still queued (so a run stopped by Ctrl-C exports its last spans too).
pub struct Telemetry {
    logs: LogOutput,
    provider: Option<SdkTracerProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.provider.is_some()).finish()
    }
}

impl Telemetry {
    /// Where log lines go; progress bars attach to it.
    pub fn logs(&self) -> LogOutput {
        self.logs.clone()
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes the queued spans and stops exporting (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            blocks::disable();
            if let Err(err) = provider.shutdown() {
                tracing::warn!(error = %err, "spans not exported at exit");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The exporting provider, for [`flush_before_exit`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Exports the queued spans, waiting at most a second: for paths that end the process with
/// `std::process::exit` (a second Ctrl-C), where [`Telemetry`] is never dropped.
pub fn flush_before_exit() {
    if let Some(provider) = PROVIDER.get() {
        blocks::disable();
        let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
    }
}

/// Installs the subscriber (once per process: a second call only returns a handle that
/// exports nothing, which is what tests running several commands in one process need).
///
/// # Errors
/// The OTLP settings are unusable (an unparsable URL, a protocol not built in): the message
/// names the setting and the fix.
pub fn init(options: Options) -> Result<Telemetry, InitError> {
    let logs = LogOutput::default();
    let provider = match endpoint(options.otlp.as_deref())? {
        Some(endpoint) => Some(provider(&options.service, &endpoint)?),
        None => None,
    };
    let ansi = io::stderr().is_terminal();
    let fmt_layer = match options.log_format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(logs.clone())
            .with_target(false)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(logs.clone())
            .with_current_span(false)
            .boxed(),
    }
    .with_filter(filter(options.verbose));
    // Spans are exported at info for daisy crates whatever the log level: the batch span is
    // what links a batch's blocks to their traces.
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("daisy"))
            .with_filter(filter(options.verbose.max(1)))
    });
    let installed = tracing_subscriber::registry().with(fmt_layer).with(otel_layer).try_init();
    let provider = match (installed, provider) {
        (Ok(()), Some(provider)) => {
            blocks::enable(provider.tracer("daisy-blocks"));
            let _ = PROVIDER.set(provider.clone());
            Some(provider)
        }
        // A subscriber was installed before (a test harness): keep it, export nothing.
        (_, _) => None,
    };
    Ok(Telemetry { logs, provider })
}

/// The traces endpoint: `--otlp` (a base URL; `/v1/traces` is appended unless given), else
/// the standard variables (which the exporter reads itself), else none.
fn endpoint(otlp: Option<&str>) -> Result<Option<Endpoint>, InitError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match env("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        None | Some("http/protobuf") => {}
        Some(other) => {
            return Err(InitError::Otlp(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported by this build: \
                 use http/protobuf (the collector's port 4318, e.g. Jaeger's), or unset it"
            )));
        }
    }
    if let Some(url) = otlp {
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(InitError::Otlp(format!(
                "--otlp {url}: not an http(s) URL; give the collector's OTLP/HTTP address, \
                 e.g. --otlp http://localhost:4318"
            )));
        }
        let url =
            if url.ends_with("/v1/traces") { url.to_owned() } else { format!("{url}/v1/traces") };
        return Ok(Some(Endpoint::Given(url)));
    }
    let from_env =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    Ok(from_env.map(Endpoint::Environment))
}

/// Where spans go.
enum Endpoint {
    /// From `--otlp`, with the signal path.
    Given(String),
    /// From the standard variables, which the exporter resolves itself (it appends
    /// `/v1/traces` to `OTEL_EXPORTER_OTLP_ENDPOINT`, not to the traces-specific one).
    Environment(String),
}

impl Endpoint {
    /// The URL for messages and logs: without user info or query, which may hold secrets.
    fn shown(&self) -> String {
        match self {
            Endpoint::Given(url) | Endpoint::Environment(url) => without_secrets(url),
        }
    }
}

/// `url` without its user info (`user:token@`) and query (`?token=…`).
fn without_secrets(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if scheme.is_empty() { format!("{host}{path}") } else { format!("{scheme}://{host}{path}") }
}

/// The tracer provider: OTLP/HTTP exporter behind the batch processor, the service name, and
/// the sampler and id generator that let block spans carry their derived ids.
fn provider(service: &str, endpoint: &Endpoint) -> Result<SdkTracerProvider, InitError> {
    let builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(5));
    let builder = match endpoint {
        Endpoint::Given(url) => builder.with_endpoint(url.clone()),
        Endpoint::Environment(_) => builder,
    };
    let exporter = builder.build().map_err(|err| {
        InitError::Otlp(format!(
            "the OTLP exporter to {} cannot be set up: {err}; check --otlp or \
             OTEL_EXPORTER_OTLP_ENDPOINT",
            endpoint.shown()
        ))
    })?;
    let exporter = WarnOnFailure {
        inner: exporter,
        endpoint: endpoint.shown(),
        failing: Arc::new(AtomicBool::new(false)),
    };
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let sampler = blocks::Sampler::from_env();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_id_generator(blocks::Ids::default())
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Passes spans to the OTLP exporter and says once (not per batch, every few seconds) that
/// the collector does not take them, and once that it does again.
#[derive(Debug)]
struct WarnOnFailure<E> {
    inner: E,
    endpoint: String,
    failing: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for WarnOnFailure<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(err) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(endpoint = %self.endpoint, error = %err, spans, "the OTLP collector does not take spans: they are dropped until it does (the run goes on)");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::warn!(endpoint = %self.endpoint, "the OTLP collector takes spans again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::without_secrets;

    #[test]
    fn endpoints_are_shown_without_credentials() {
        assert_eq!(
            without_secrets("https://user:token@collector:4318/v1/traces?key=s3cret"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(without_secrets("http://localhost:4318"), "http://localhost:4318");
        assert_eq!(without_secrets("collector:4318/x#frag"), "collector:4318/x");
    }
}
