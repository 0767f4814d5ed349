//! Tests of daisy-array against real zarr arrays in temp dirs (one test
//! binary per package, one module per area).

mod errors;
mod geometry;
mod parallel;

use daisy_core::{Coordinate, Roi};

/// A 1-D ROI from begin and shape.
fn roi1(begin: i64, shape: i64) -> Roi {
    Roi::new(Coordinate::from([begin]), Coordinate::from([shape]))
}
