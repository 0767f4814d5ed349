//! Logs, traces and metrics of daisy-rs.
//!
//! # Layout
//! - [`trace_id`]: the trace id of a block, derived from (run, task, block id) so that the
//!   scheduler, every worker and every later run compute the same id without coordination,
//!   and every attempt of a block lands in one trace.
//! - [`metrics`]: the Prometheus metric names and their exporter (`--metrics-addr`).

pub mod metrics;
pub mod trace_id;

pub use trace_id::{BlockTraceId, block_trace_id};
