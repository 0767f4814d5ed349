//! Tests of the `daisy` binaries, run as a user runs them.

mod conflict_faults;
mod docs;
mod faults;
mod local;
mod logs;
mod metrics;
mod ops;
mod plan;
mod run;
mod running;
mod smooth;
mod timeline;
mod traces;
mod util;
