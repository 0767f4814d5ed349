//! daisy-core
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
    simulate,
};
pub use spec::{ProcessSpec, SpecError, TaskId, TaskSpec, parse_pipeline};
