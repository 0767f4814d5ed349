//! Tests of the `daisy` binaries, run as a user runs them.

mod conflict_faults;
mod faults;
mod metrics;
mod ops;
mod plan;
mod run;
mod timeline;
mod util;
