//! Prometheus metrics of daisy-rs: the names every call site uses, their descriptions, and
//! the exporter that serves them on `--metrics-addr`.
//!
//! # Ownership
//! This module owns the metric names, units, label names and histogram buckets, and installs
//! the global recorder ([`install_prometheus`]). It does not own when a metric moves: the
//! scheduler, the worker and the in-process runtime count at their own call sites with the
//! [`metrics`] facade (`metrics::counter!(names::BLOCKS_TOTAL, ..)`), which costs next to
//! nothing while no recorder is installed.
//!
//! # Invariants
//! * Names follow Prometheus conventions: `daisy_` prefix, base units in the name
//!   (`_seconds`, `_bytes`), `_total` on counters only.
//! * Labels come from small fixed sets: a task id of the pipeline ([`labels::TASK`]), a block
//!   state, an outcome, a stream kind. Never a block id, a worker id or a sequence: a run of
//!   10^9 blocks must not make 10^9 series.
//!
//! # Why the `metrics` facade
//! Call sites stay one line and need no handle passed through every actor; a binary that
//! does not ask for metrics pays an atomic load per call. The rejected alternative,
//! `prometheus-client` with a registry passed to every actor, would thread a new argument
//! through the scheduler, worker and runtime constructors that other work is changing too.
//! Hot paths (a result per block at 350 k blocks/s) resolve their labelled handles once and
//! increment per report, not per block.
//!
//! # Example
//! ```no_run
//! let addr = "127.0.0.1:9464".parse().unwrap();
//! daisy_telemetry::metrics::install_prometheus(addr).expect("the port is free");
//! metrics::counter!(daisy_telemetry::metrics::names::LEADER_CHANGES_TOTAL).increment(1);
//! // curl http://127.0.0.1:9464/metrics
//! ```

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// The metric names. Every call site names its metric with one of these.
pub mod names {
    /// Counter `{task, state}`: blocks that reached a final state while this scheduler led,
    /// by state (`succeeded`, `skipped`, `failed`, `orphaned`). Blocks an earlier session
    /// or leader finished are in [`BLOCKS`], not here.
    pub const BLOCKS_TOTAL: &str = "daisy_blocks_total";
    /// Gauge `{task, state}`: blocks of the run in each state right now, as the leading
    /// scheduler sees them (`pending`, `ready`, `processing`, `succeeded`, `skipped`,
    /// `failed`, `orphaned`), refreshed with the progress snapshot.
    pub const BLOCKS: &str = "daisy_blocks";
    /// Counter `{task}`: batches dispatched (one block-stream message each over NATS).
    pub const BATCHES_DISPATCHED_TOTAL: &str = "daisy_batches_dispatched_total";
    /// Counter `{task}`: blocks dispatched, in batches.
    pub const BLOCKS_DISPATCHED_TOTAL: &str = "daisy_blocks_dispatched_total";
    /// Counter `{task, outcome}`: attempt outcomes the scheduler applied: `success`,
    /// `skipped`, or a failure kind (`failed`, `timeout`, `process_died`, `spawn_failed`,
    /// `panicked`, `deliveries_exhausted`).
    pub const BLOCK_OUTCOMES_TOTAL: &str = "daisy_block_outcomes_total";
    /// Counter: results dropped as stale (an attempt given up on, a batch no longer in
    /// flight).
    pub const STALE_RESULTS_TOTAL: &str = "daisy_stale_results_total";
    /// Counter `{task}`: batches whose outcomes came from a redelivery (the delivery count
    /// JetStream reported to the worker was above 1).
    pub const REDELIVERIES_TOTAL: &str = "daisy_redeliveries_total";
    /// Counter `{task}`: blocks that ran longer than the straggler threshold (counted by the
    /// scheduler's straggler report).
    pub const STRAGGLERS_TOTAL: &str = "daisy_stragglers_total";
    /// Histogram `{task}`: how long a block's attempt took on its worker, in seconds.
    pub const BLOCK_DURATION_SECONDS: &str = "daisy_block_duration_seconds";
    /// Counter `{task}`: in-progress acks (heartbeats) a worker sent for the batch it runs.
    pub const HEARTBEATS_TOTAL: &str = "daisy_worker_heartbeats_total";
    /// Counter `{task}`: user worker processes restarted (crashed, killed, failed to start).
    pub const PROCESS_RESTARTS_TOTAL: &str = "daisy_worker_process_restarts_total";
    /// Counter: times this scheduler replica became the leader.
    pub const LEADER_CHANGES_TOTAL: &str = "daisy_leader_changes_total";
    /// Gauge: 1 while this replica leads the run, 0 otherwise.
    pub const LEADER: &str = "daisy_leader";
    /// Gauge: the lease epoch this replica leads (or last led).
    pub const LEASE_EPOCH: &str = "daisy_lease_epoch";
    /// Counter `{stream}`: messages that failed to decode and were terminated or skipped
    /// (`stream` = `block` or `event`).
    pub const BAD_MESSAGES_TOTAL: &str = "daisy_bad_messages_terminated_total";
    /// Counter: events read while replaying the record on taking over.
    pub const REPLAY_EVENTS_TOTAL: &str = "daisy_replay_events_total";
    /// Gauge: the event-stream sequence the replay has read up to.
    pub const REPLAY_SEQUENCE: &str = "daisy_replay_sequence";
    /// Gauge: the event-stream sequence the replay must reach (the stream's end when it
    /// started); `daisy_replay_sequence / daisy_replay_target_sequence` is its progress.
    pub const REPLAY_TARGET_SEQUENCE: &str = "daisy_replay_target_sequence";
    /// Gauge: bytes the run's event stream (its durable record) holds.
    pub const EVENT_STREAM_BYTES: &str = "daisy_event_stream_bytes";
    /// Gauge: events the run's event stream holds.
    pub const EVENT_STREAM_MESSAGES: &str = "daisy_event_stream_messages";
    /// Gauge: events recorded that the leading scheduler has not read yet.
    pub const SCHEDULER_LAG_EVENTS: &str = "daisy_scheduler_lag_events";
}

/// Label names and the fixed values some of them take.
pub mod labels {
    /// A task id of the pipeline.
    pub const TASK: &str = "task";
    /// A block state ([`super::names::BLOCKS`], [`super::names::BLOCKS_TOTAL`]).
    pub const STATE: &str = "state";
    /// An attempt outcome ([`super::names::BLOCK_OUTCOMES_TOTAL`]).
    pub const OUTCOME: &str = "outcome";
    /// Which stream a bad message came from ([`super::names::BAD_MESSAGES_TOTAL`]).
    pub const STREAM: &str = "stream";
}

/// Buckets of [`names::BLOCK_DURATION_SECONDS`], in seconds: from no-op Rust closures
/// (microseconds) to hour-long GPU blocks.
pub const BLOCK_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// The exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Port 0 would serve metrics on a port nobody knows.
    #[error(
        "--metrics-addr {addr}: give a fixed port for Prometheus to scrape, e.g. 127.0.0.1:9464"
    )]
    NoPort {
        /// The address given.
        addr: SocketAddr,
    },
    /// The listener could not bind, or a recorder was installed already.
    #[error("--metrics-addr {addr}: cannot serve metrics there (is the port in use?)")]
    Install {
        /// The address given.
        addr: SocketAddr,
        /// What the exporter said.
        #[source]
        source: BuildError,
    },
}

/// Serves every metric of this process as Prometheus text on `http://<addr>/metrics` (any
/// path answers) from a thread of its own, and describes the metrics. Call once, early,
/// outside any async runtime or inside one: the exporter runs on its own thread when there
/// is none.
///
/// # Errors
/// [`MetricsError`] when the port is 0, the address cannot be bound, or a recorder is
/// installed already.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), MetricsError> {
    if addr.port() == 0 {
        return Err(MetricsError::NoPort { addr });
    }
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(names::BLOCK_DURATION_SECONDS.to_owned()),
            BLOCK_DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install)
        .map_err(|source| MetricsError::Install { addr, source })?;
    describe();
    Ok(())
}

/// Describes every metric (the `# HELP` and unit lines of a scrape).
pub fn describe() {
    use names::*;
    describe_counter!(
        BLOCKS_TOTAL,
        Unit::Count,
        "Blocks that reached a final state while this scheduler led, by task and state"
    );
    describe_gauge!(BLOCKS, Unit::Count, "Blocks of the run in each state now, by task");
    describe_counter!(BATCHES_DISPATCHED_TOTAL, Unit::Count, "Batches of blocks dispatched");
    describe_counter!(BLOCKS_DISPATCHED_TOTAL, Unit::Count, "Blocks dispatched");
    describe_counter!(
        BLOCK_OUTCOMES_TOTAL,
        Unit::Count,
        "Attempt outcomes applied by the scheduler, by task and outcome"
    );
    describe_counter!(STALE_RESULTS_TOTAL, Unit::Count, "Results dropped as stale");
    describe_counter!(
        REDELIVERIES_TOTAL,
        Unit::Count,
        "Batches whose outcomes came from a redelivery"
    );
    describe_counter!(
        STRAGGLERS_TOTAL,
        Unit::Count,
        "Blocks that ran longer than the straggler threshold"
    );
    describe_histogram!(
        BLOCK_DURATION_SECONDS,
        Unit::Seconds,
        "How long an attempt at a block took on its worker"
    );
    describe_counter!(HEARTBEATS_TOTAL, Unit::Count, "In-progress acks sent by workers");
    describe_counter!(PROCESS_RESTARTS_TOTAL, Unit::Count, "User worker processes restarted");
    describe_counter!(
        LEADER_CHANGES_TOTAL,
        Unit::Count,
        "Times this scheduler replica became the leader"
    );
    describe_gauge!(LEADER, Unit::Count, "1 while this replica leads the run");
    describe_gauge!(LEASE_EPOCH, Unit::Count, "The lease epoch this replica leads or last led");
    describe_counter!(
        BAD_MESSAGES_TOTAL,
        Unit::Count,
        "Messages that failed to decode and were terminated or skipped"
    );
    describe_counter!(REPLAY_EVENTS_TOTAL, Unit::Count, "Events read while replaying the record");
    describe_gauge!(REPLAY_SEQUENCE, Unit::Count, "Event-stream sequence the replay reached");
    describe_gauge!(
        REPLAY_TARGET_SEQUENCE,
        Unit::Count,
        "Event-stream sequence the replay must reach"
    );
    describe_gauge!(EVENT_STREAM_BYTES, Unit::Bytes, "Bytes in the run's event stream");
    describe_gauge!(EVENT_STREAM_MESSAGES, Unit::Count, "Events in the run's event stream");
    describe_gauge!(
        SCHEDULER_LAG_EVENTS,
        Unit::Count,
        "Events recorded that the leading scheduler has not read yet"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        use names::*;
        let counters = [
            BLOCKS_TOTAL,
            BATCHES_DISPATCHED_TOTAL,
            BLOCKS_DISPATCHED_TOTAL,
            BLOCK_OUTCOMES_TOTAL,
            STALE_RESULTS_TOTAL,
            REDELIVERIES_TOTAL,
            STRAGGLERS_TOTAL,
            HEARTBEATS_TOTAL,
            PROCESS_RESTARTS_TOTAL,
            LEADER_CHANGES_TOTAL,
            BAD_MESSAGES_TOTAL,
            REPLAY_EVENTS_TOTAL,
        ];
        let others = [
            BLOCKS,
            BLOCK_DURATION_SECONDS,
            LEADER,
            LEASE_EPOCH,
            REPLAY_SEQUENCE,
            REPLAY_TARGET_SEQUENCE,
            EVENT_STREAM_BYTES,
            EVENT_STREAM_MESSAGES,
            SCHEDULER_LAG_EVENTS,
        ];
        for name in counters.iter().chain(&others) {
            assert!(name.starts_with("daisy_"), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
        assert!(counters.iter().all(|name| name.ends_with("_total")));
        assert!(others.iter().all(|name| !name.ends_with("_total")));
    }

    #[test]
    fn port_zero_is_refused_with_the_fix() {
        let err = install_prometheus("127.0.0.1:0".parse().unwrap()).unwrap_err();
        assert!(matches!(err, MetricsError::NoPort { .. }));
    }
}
