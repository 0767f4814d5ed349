//! The telemetry flags every binary takes, and the set-up through `daisy-telemetry`.

use clap::Args;
use daisy_telemetry::{LogFormat, Options, Telemetry};

/// Where logs and traces go.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log lines on stderr as `human` text or `json` objects (one per line).
    #[arg(long, value_name = "FORMAT", default_value = "human", global = true)]
    pub log_format: LogFormat,
    /// Export traces (one per block) to this OTLP/HTTP collector, e.g. Jaeger's
    /// http://localhost:4318. Without it, OTEL_EXPORTER_OTLP_ENDPOINT is used if set.
    #[arg(long, value_name = "URL", global = true)]
    pub otlp: Option<String>,
}

impl TelemetryArgs {
    /// Installs logging and tracing for `service` (the binary's name, unless
    /// `OTEL_SERVICE_NAME` says otherwise). Unusable OTLP settings are bad input.
    pub fn init(&self, service: &str, verbose: u8) -> Result<Telemetry, crate::input::BadInput> {
        let mut options = Options::new(service);
        options.verbose = verbose;
        options.log_format = self.log_format;
        options.otlp = self.otlp.clone();
        daisy_telemetry::init(options).map_err(|err| crate::input::BadInput(err.to_string()))
    }
}
