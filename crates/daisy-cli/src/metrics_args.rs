//! `--metrics-addr`, the option of every binary that runs a scheduler or workers: serves
//! Prometheus metrics (names in `daisy_telemetry::metrics::names`) over HTTP.

use std::net::SocketAddr;

use clap::Args;
use tracing::info;

use crate::input::BadInput;

/// Where to serve metrics.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on this address (scrape http://ADDR/metrics), e.g.
    /// 127.0.0.1:9464 or 0.0.0.0:9464. Default: no metrics.
    #[arg(long, value_name = "ADDR", env = "DAISY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts the exporter (on a thread of its own) when an address was given. Call before
    /// the run starts, so that the first scrape sees every metric from the start.
    ///
    /// # Errors
    /// [`BadInput`] naming the address: port 0, or the address cannot be bound.
    pub fn serve(&self) -> Result<(), BadInput> {
        let Some(addr) = self.metrics_addr else { return Ok(()) };
        daisy_telemetry::metrics::install_prometheus(addr)
            .map_err(|err| BadInput(format!("{:#}", anyhow::Error::new(err))))?;
        info!(url = %format_args!("http://{addr}/metrics"), "serving Prometheus metrics");
        Ok(())
    }
}
