//! End-to-end throughput over NATS JetStream: no-op Rust closures, 100,000
//! blocks, 2 worker slots, a nats-server started for the run (the same
//! binary daisy run embeds). Target >= 90 k blocks/s (Daisy 2.0 here:
//! 8.9 k blocks/s over raw TCP). Median of several runs, each on a fresh
//! server and store.
//!
//! `cargo bench -p daisy --bench nats` (`DAISY_BENCH_RUNS`, default 5). With
//! `DAISY_BENCH_METRICS_ADDR=127.0.0.1:9464` the Prometheus exporter is installed first, as
//! `--metrics-addr` does, so every call site records into it: the cost of metrics.

use std::time::Instant;

use daisy::{Roi, Runner, Task};
use daisy_nats::server::{NatsServer, ServerOptions};

fn main() {
    let runs: usize =
        std::env::var("DAISY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let blocks = 100_000;
    let metrics = std::env::var("DAISY_BENCH_METRICS_ADDR").ok();
    if let Some(addr) = &metrics {
        let addr = addr.parse().expect("DAISY_BENCH_METRICS_ADDR is host:port");
        daisy_telemetry::metrics::install_prometheus(addr).expect("the metrics port is free");
    }
    let mut rates = Vec::new();
    for run in 0..runs {
        let store = tempfile::tempdir().expect("a temp dir");
        let mut server = NatsServer::start(&ServerOptions::new(store.path().join("store")))
            .expect("nats-server starts");
        let task = Task::builder("noop")
            .total_roi(Roi::new([0].into(), [blocks].into()))
            .read_roi(Roi::new([0].into(), [1].into()))
            .write_roi(Roi::new([0].into(), [1].into()))
            .read_write_conflict(false)
            .max_workers(2)
            .process(|_| Ok::<(), std::convert::Infallible>(()))
            .build()
            .expect("a valid task");
        let started = Instant::now();
        let report = Runner::new()
            .nats(server.url())
            .run_id(format!("bench-{run}"))
            .run([task])
            .expect("the run finishes");
        let seconds = started.elapsed().as_secs_f64();
        assert!(report.all_succeeded());
        rates.push(blocks as f64 / seconds);
        let _ = server.stop();
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "NATS JetStream, no-op closures, {blocks} blocks, 2 worker slots, metrics {}: median {:.0} blocks/s over {runs} runs (min {:.0}, max {:.0}); Daisy 2.0 here: 8.9 k blocks/s; target >= 90 k blocks/s",
        metrics.as_deref().unwrap_or("off"),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}
