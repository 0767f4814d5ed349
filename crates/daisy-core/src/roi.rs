//! Regions of interest: axis-aligned boxes given by an offset and a shape.
//!
//! The operations are those Daisy users know from `funlib.geometry.Roi`
//! (begin/end/shape, grow, shift, intersect, contains, snap to grid, union),
//! in integer world units. A `Roi` is `Copy`; every operation returns a new
//! value.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

use crate::Coordinate;

/// An axis-aligned box `[offset, offset + shape)`.
///
/// A ROI with any shape value ≤ 0 is *empty*: it contains no point and
/// intersects nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Roi {
    offset: Coordinate,
    shape: Coordinate,
}

/// How [`Roi::snap_to_grid`] rounds the begin and the end of a ROI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapMode {
    /// Outward: the smallest grid-aligned ROI that contains this one.
    Grow,
    /// Inward: the largest grid-aligned ROI inside this one.
    Shrink,
    /// Begin and end each to the nearest grid line (ties round up).
    Closest,
}

impl Roi {
    /// A ROI from its offset (begin) and shape.
    ///
    /// # Panics
    /// In debug builds, if offset and shape differ in dimensionality.
    pub fn new(offset: Coordinate, shape: Coordinate) -> Self {
        debug_assert_eq!(offset.dims(), shape.dims(), "offset and shape dims differ");
        Self { offset, shape }
    }

    /// A ROI from its begin (inclusive) and end (exclusive).
    pub fn from_begin_end(begin: Coordinate, end: Coordinate) -> Self {
        Self::new(begin, end - begin)
    }

    /// The first point inside the ROI (same as [`Roi::begin`]).
    #[inline]
    pub fn offset(&self) -> Coordinate {
        self.offset
    }

    /// The first point inside the ROI.
    #[inline]
    pub fn begin(&self) -> Coordinate {
        self.offset
    }

    /// The first point past the ROI on every axis.
    #[inline]
    pub fn end(&self) -> Coordinate {
        self.offset + self.shape
    }

    /// The extent per axis.
    #[inline]
    pub fn shape(&self) -> Coordinate {
        self.shape
    }

    /// The number of dimensions.
    #[inline]
    pub fn dims(&self) -> usize {
        self.offset.dims()
    }

    /// The number of points inside (0 when empty).
    pub fn size(&self) -> i64 {
        if self.is_empty() { 0 } else { self.shape.product() }
    }

    /// Whether the ROI contains no point (some shape value ≤ 0).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.shape.as_slice().iter().any(|&s| s <= 0)
    }

    /// Whether `point` lies inside: `begin <= point < end` on every axis.
    #[inline]
    pub fn contains_point(&self, point: &Coordinate) -> bool {
        let end = self.end();
        (0..self.dims()).all(|axis| self.offset[axis] <= point[axis] && point[axis] < end[axis])
    }

    /// Whether `other` lies inside this ROI.
    ///
    /// As in funlib, an empty `other` is contained when this ROI is empty
    /// or contains `other`'s begin.
    pub fn contains(&self, other: &Roi) -> bool {
        if other.is_empty() {
            return self.is_empty() || self.contains_point(&other.begin());
        }
        self.offset.all(&other.offset, |a, b| a <= b) && other.end().all(&self.end(), |a, b| a <= b)
    }

    /// Whether the two ROIs share a point (empty ROIs never intersect).
    #[inline]
    pub fn intersects(&self, other: &Roi) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        let (self_end, other_end) = (self.end(), other.end());
        (0..self.dims())
            .all(|axis| self.offset[axis] < other_end[axis] && other.offset[axis] < self_end[axis])
    }

    /// The common part of two ROIs; empty (shape 0 on some axis) if disjoint.
    pub fn intersect(&self, other: &Roi) -> Roi {
        let begin = self.begin().max(&other.begin());
        let end = self.end().min(&other.end()).max(&begin);
        Roi::from_begin_end(begin, end)
    }

    /// The smallest ROI containing both (an empty operand is ignored).
    pub fn union(&self, other: &Roi) -> Roi {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        Roi::from_begin_end(self.begin().min(&other.begin()), self.end().max(&other.end()))
    }

    /// Moves the begin by `-negative` and the end by `+positive`.
    ///
    /// Negative amounts shrink the ROI.
    pub fn grow(&self, negative: Coordinate, positive: Coordinate) -> Roi {
        Roi::new(self.offset - negative, self.shape + negative + positive)
    }

    /// Translates the ROI by `by`.
    #[inline]
    pub fn shift(&self, by: Coordinate) -> Roi {
        Roi::new(self.offset + by, self.shape)
    }

    /// Rounds begin and end onto multiples of `grid` (origin at zero).
    pub fn snap_to_grid(&self, grid: Coordinate, mode: SnapMode) -> Roi {
        let (begin, end) = (self.begin(), self.end());
        match mode {
            SnapMode::Grow => {
                Roi::from_begin_end((begin / grid) * grid, begin_ceil(end, grid) * grid)
            }
            SnapMode::Shrink => {
                Roi::from_begin_end(begin_ceil(begin, grid) * grid, (end / grid) * grid)
            }
            SnapMode::Closest => {
                let round = |c: Coordinate| ((c * 2 + grid) / (grid * 2)) * grid;
                Roi::from_begin_end(round(begin), round(end))
            }
        }
    }
}

fn begin_ceil(value: Coordinate, grid: Coordinate) -> Coordinate {
    value.ceil_div(&grid)
}

impl Add<Coordinate> for Roi {
    type Output = Roi;
    fn add(self, by: Coordinate) -> Roi {
        self.shift(by)
    }
}

impl Sub<Coordinate> for Roi {
    type Output = Roi;
    fn sub(self, by: Coordinate) -> Roi {
        self.shift(-by)
    }
}

impl fmt::Display for Roi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // funlib's form: "[1:4, 2:6] (3, 4)".
        let (begin, end) = (self.begin(), self.end());
        f.write_str("[")?;
        for axis in 0..self.dims() {
            if axis > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}:{}", begin[axis], end[axis])?;
        }
        write!(f, "] {}", self.shape)
    }
}

impl fmt::Debug for Roi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Roi(offset={}, shape={})", self.offset, self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roi(offset: [i64; 2], shape: [i64; 2]) -> Roi {
        Roi::new(offset.into(), shape.into())
    }

    #[test]
    fn begin_end_shape_size() {
        let r = roi([1, 2], [3, 4]);
        assert_eq!(r.begin(), Coordinate::from([1, 2]));
        assert_eq!(r.end(), Coordinate::from([4, 6]));
        assert_eq!(r.size(), 12);
        assert!(!r.is_empty());
        assert!(roi([0, 0], [0, 4]).is_empty());
        assert_eq!(roi([0, 0], [-1, 4]).size(), 0);
    }

    #[test]
    fn contains_points_and_rois() {
        let r = roi([0, 0], [4, 4]);
        assert!(r.contains_point(&[0, 3].into()));
        assert!(!r.contains_point(&[0, 4].into()));
        assert!(r.contains(&roi([1, 1], [3, 3])));
        assert!(!r.contains(&roi([1, 1], [4, 3])));
        assert!(r.contains(&roi([2, 2], [0, 0])));
        assert!(!r.contains(&roi([5, 5], [0, 0])));
    }

    #[test]
    fn intersect_and_union() {
        let a = roi([0, 0], [4, 4]);
        let b = roi([2, 3], [4, 4]);
        assert!(a.intersects(&b));
        assert_eq!(a.intersect(&b), roi([2, 3], [2, 1]));
        assert_eq!(a.union(&b), roi([0, 0], [6, 7]));
        let far = roi([10, 10], [1, 1]);
        assert!(!a.intersects(&far));
        assert!(a.intersect(&far).is_empty());
        // touching is not intersecting
        assert!(!a.intersects(&roi([4, 0], [1, 1])));
    }

    #[test]
    fn grow_shift_and_operators() {
        let r = roi([2, 2], [2, 2]);
        assert_eq!(r.grow([1, 1].into(), [2, 0].into()), roi([1, 1], [5, 3]));
        assert_eq!(r.grow([-1, 0].into(), [0, 0].into()), roi([3, 2], [1, 2]));
        assert_eq!(r + Coordinate::from([1, -1]), roi([3, 1], [2, 2]));
        assert_eq!(r - Coordinate::from([1, -1]), roi([1, 3], [2, 2]));
    }

    #[test]
    fn snap_to_grid() {
        let r = roi([-3, 5], [7, 6]); // [-3, 4) x [5, 11)
        let grid = Coordinate::from([4, 4]);
        assert_eq!(r.snap_to_grid(grid, SnapMode::Grow), roi([-4, 4], [8, 8]));
        assert_eq!(r.snap_to_grid(grid, SnapMode::Shrink), roi([0, 8], [4, 0]));
        assert_eq!(r.snap_to_grid(grid, SnapMode::Closest), roi([-4, 4], [8, 8]));
    }
}
