//! Tests of the `daisy` binaries, run as a user runs them.

mod conflict_faults;
mod faults;
mod ops;
mod plan;
mod run;
mod timeline;
mod traces;
mod util;
