//! The pure core of daisy-rs: Daisy-exact block geometry, lazy block
//! dependencies, pipeline validation and the scheduling state machine.
//!
//! # Ownership
//! This crate decides *what* may run: which blocks exist (ids, levels,
//! ROIs — identical to Daisy's), what each block waits for, when a block is
//! ready, retried, failed or orphaned. It does no I/O, reads no clock and
//! logs nothing: callers (the scheduler actor, the CLI, tests) pass the time
//! in and act on what comes back. Transports, processes and files live in
//! other crates.
//!
//! # Layout
//! * [`Coordinate`], [`Roi`]: nD integer geometry (funlib.geometry's
//!   operations).
//! * [`grid`]: one task's blocks — fit modes, conflict levels, Cantor ids,
//!   dense indices, all computed, never stored.
//! * [`spec`]: task specs and the TOML pipeline file.
//! * [`pipeline`]: validation and the dependencies between blocks.
//! * [`plan`]: the plan `daisy plan --json` prints.
//! * [`scheduler`]: the state machine, and [`simulate`].
//!
//! # Why
//! Keeping the decisions free of I/O lets one implementation serve both
//! transports (in-process channels and NATS JetStream) and lets property
//! tests drive millions of random steps without a runtime (raft-rs's
//! design). The alternative, a scheduler written against a broker, can only
//! be tested slowly and never exhaustively.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use daisy_core::{Outcome, Pipeline, Scheduler, TaskIndex, parse_pipeline};
//!
//! let tasks = parse_pipeline(r#"
//!     [[task]]
//!     id = "smooth"
//!     total_roi = { offset = [0, 0], shape = [6, 6] }
//!     read_roi = { offset = [0, 0], shape = [3, 3] }
//!     write_roi = { offset = [1, 1], shape = [1, 1] }
//!     command = ["./smooth-block"]
//! "#).unwrap();
//! let pipeline = Arc::new(Pipeline::new(tasks).unwrap());
//! let task = pipeline.task(TaskIndex(0));
//! assert_eq!((task.grid.num_blocks(), task.grid.num_levels()), (16, 4));
//!
//! let mut scheduler = Scheduler::new(pipeline.clone());
//! let now = Duration::ZERO;
//! while let Some(acquired) = scheduler.acquire(TaskIndex(0), now) {
//!     let block = pipeline.block(acquired.key);
//!     // ... process block.read_roi into block.write_roi ...
//!     scheduler.release(acquired.key, Outcome::Success).unwrap();
//! }
//! assert!(scheduler.all_succeeded());
//! ```
#![deny(missing_docs)]

mod cantor;
mod coordinate;
pub mod grid;
pub mod pipeline;
pub mod plan;
mod roi;
pub mod scheduler;
#[cfg(test)]
mod scheduler_tests;
pub mod spec;

pub use cantor::{cantor_number, cantor_point};
pub use coordinate::{Coordinate, MAX_DIMS, TooManyDims};
pub use grid::{BlockGrid, BlockId, BlockIndex, Fit, GridBox, GridError};
pub use pipeline::{Block, BlockKey, Pipeline, PipelineError, PipelineTask, TaskIndex};
pub use roi::{Roi, SnapMode};
pub use scheduler::{
    Acquired, Outcome, ReleaseError, Released, Scheduler, Simulation, TaskCounters, Unreachable,
    simulate, simulate_with_progress,
};
pub use spec::{ProcessSpec, SpecError, TaskId, TaskSpec, parse_pipeline, pipeline_toml};
