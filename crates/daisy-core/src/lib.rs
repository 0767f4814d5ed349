//! daisy-core
#![deny(missing_docs)]

mod cantor;
mod coordinate;
pub mod grid;
mod roi;

pub use cantor::{cantor_number, cantor_point};
pub use coordinate::{Coordinate, MAX_DIMS, TooManyDims};
pub use grid::{BlockGrid, BlockId, BlockIndex, Fit, GridBox, GridError};
pub use roi::{Roi, SnapMode};
