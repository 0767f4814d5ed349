//! Logs, traces and metrics of daisy-rs.
//!
//! Every binary (and the library) installs its `tracing` subscriber through [`init`], and
//! nothing else installs one: log lines go to stderr (human, or JSON with
//! [`LogFormat::Json`]) without tearing progress bars, and spans go to an OTLP collector
//! (Jaeger) when one is configured.
//!
//! # Layout
//! - [`trace_id`]: the trace id of a block, derived from (run, task, block id) so that the
//!   scheduler, every worker and every later run compute the same id without coordination,
//!   and every attempt of a block lands in one trace.
//! - [`blocks`]: the spans of a block's trace (the leader's lifetime span, each dispatch, the
//!   worker's queue wait, check and process), built with the derived ids, sampled the same
//!   way by every party.
//! - [`propagation`]: the W3C `traceparent` of a batch, carried in NATS headers.
//! - [`metrics`]: the Prometheus metric names and their exporter (`--metrics-addr`).
//! - `init` / [`logs`]: the subscriber, the log output and the OTLP exporter.

pub mod blocks;
mod init;
pub mod logs;
pub mod metrics;
pub mod propagation;
pub mod trace_id;

pub use init::{InitError, LogFormat, Options, Telemetry, flush_before_exit, init};
pub use logs::LogOutput;
pub use trace_id::{BlockTraceId, block_trace_id};
