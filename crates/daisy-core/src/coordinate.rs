//! Integer points and vectors in up to [`MAX_DIMS`] dimensions.
//!
//! A [`Coordinate`] is `Copy` and lives on the stack: the scheduler builds
//! millions of them per second, so it never allocates. The number of
//! dimensions is part of the value; combining coordinates of different
//! dimensionality is a programming error caught by `debug_assert!` (pipeline
//! validation rejects such input long before).

use std::fmt;
use std::ops::{Add, Div, Index, Mul, Neg, Rem, Sub};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest number of dimensions a coordinate may have.
///
/// Bio-image volumes are 2-D to 5-D (channels, time, z, y, x); six leaves
/// headroom while keeping a [`Roi`](crate::Roi) small enough to copy freely.
pub const MAX_DIMS: usize = 6;

/// An nD integer point or vector (offsets, shapes, block grid indices).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Coordinate {
    dims: u8,
    values: [i64; MAX_DIMS],
}

/// The error of building a coordinate with too many dimensions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dims} dimensions given, at most {MAX_DIMS} are supported")]
pub struct TooManyDims {
    /// How many values were given.
    pub dims: usize,
}

impl Coordinate {
    /// Builds a coordinate from its values.
    ///
    /// # Errors
    /// [`TooManyDims`] if more than [`MAX_DIMS`] values are given.
    pub fn new(values: &[i64]) -> Result<Self, TooManyDims> {
        if values.len() > MAX_DIMS {
            return Err(TooManyDims { dims: values.len() });
        }
        let mut coordinate = Self::zeros(values.len());
        coordinate.values[..values.len()].copy_from_slice(values);
        Ok(coordinate)
    }

    /// A coordinate of `dims` zeros.
    ///
    /// # Panics
    /// If `dims > MAX_DIMS`.
    pub fn zeros(dims: usize) -> Self {
        Self::filled(dims, 0)
    }

    /// A coordinate with every one of its `dims` values equal to `value`.
    ///
    /// # Panics
    /// If `dims > MAX_DIMS`.
    pub fn filled(dims: usize, value: i64) -> Self {
        assert!(dims <= MAX_DIMS, "at most {MAX_DIMS} dimensions are supported");
        let mut values = [0; MAX_DIMS];
        values[..dims].fill(value);
        Self { dims: dims as u8, values }
    }

    /// Builds a coordinate by calling `f` for each axis.
    pub fn from_fn(dims: usize, mut f: impl FnMut(usize) -> i64) -> Self {
        let mut coordinate = Self::zeros(dims);
        for axis in 0..dims {
            coordinate.values[axis] = f(axis);
        }
        coordinate
    }

    /// The number of dimensions.
    #[inline]
    pub fn dims(&self) -> usize {
        self.dims as usize
    }

    /// The values, one per axis.
    #[inline]
    pub fn as_slice(&self) -> &[i64] {
        &self.values[..self.dims as usize]
    }

    /// The values as a `Vec`.
    pub fn to_vec(&self) -> Vec<i64> {
        self.as_slice().to_vec()
    }

    /// Sets the value of one axis.
    #[inline]
    pub fn set(&mut self, axis: usize, value: i64) {
        debug_assert!(axis < self.dims());
        self.values[axis] = value;
    }

    /// Combines two coordinates axis by axis.
    #[inline]
    pub fn zip_with(&self, other: &Self, mut f: impl FnMut(i64, i64) -> i64) -> Self {
        debug_assert_eq!(self.dims, other.dims, "coordinates of different dimensionality");
        let mut out = *self;
        for axis in 0..self.dims() {
            out.values[axis] = f(self.values[axis], other.values[axis]);
        }
        out
    }

    /// Applies `f` to every value.
    #[inline]
    pub fn map(&self, mut f: impl FnMut(i64) -> i64) -> Self {
        let mut out = *self;
        for value in &mut out.values[..self.dims as usize] {
            *value = f(*value);
        }
        out
    }

    /// The product of the values (a volume, for a shape); 1 for zero dims.
    pub fn product(&self) -> i64 {
        self.as_slice().iter().product()
    }

    /// Axis-wise minimum.
    pub fn min(&self, other: &Self) -> Self {
        self.zip_with(other, i64::min)
    }

    /// Axis-wise maximum.
    pub fn max(&self, other: &Self) -> Self {
        self.zip_with(other, i64::max)
    }

    /// Axis-wise division rounding towards negative infinity.
    pub fn floor_div(&self, other: &Self) -> Self {
        self.zip_with(other, i64::div_euclid_floor)
    }

    /// Axis-wise division rounding towards positive infinity.
    pub fn ceil_div(&self, other: &Self) -> Self {
        self.zip_with(other, |a, b| -(-a).div_euclid_floor(b))
    }

    /// Whether every value is a multiple of the corresponding value of `other`.
    pub fn is_multiple_of(&self, other: &Self) -> bool {
        self.as_slice().iter().zip(other.as_slice()).all(|(&a, &b)| b != 0 && a % b == 0)
    }

    /// Whether `f` holds on every axis.
    pub fn all(&self, other: &Self, mut f: impl FnMut(i64, i64) -> bool) -> bool {
        debug_assert_eq!(self.dims, other.dims, "coordinates of different dimensionality");
        (0..self.dims()).all(|axis| f(self.values[axis], other.values[axis]))
    }
}

/// Floor division for `i64` (std's `div_floor` is not stable).
trait DivFloor {
    fn div_euclid_floor(self, rhs: Self) -> Self;
}

impl DivFloor for i64 {
    #[inline]
    fn div_euclid_floor(self, rhs: i64) -> i64 {
        let quotient = self / rhs;
        if (self % rhs != 0) && ((self < 0) != (rhs < 0)) { quotient - 1 } else { quotient }
    }
}

impl Index<usize> for Coordinate {
    type Output = i64;
    #[inline]
    fn index(&self, axis: usize) -> &i64 {
        &self.as_slice()[axis]
    }
}

macro_rules! elementwise {
    ($trait:ident, $method:ident, $op:tt) => {
        impl $trait for Coordinate {
            type Output = Coordinate;
            #[inline]
            fn $method(self, rhs: Coordinate) -> Coordinate {
                self.zip_with(&rhs, |a, b| a $op b)
            }
        }
        impl $trait<i64> for Coordinate {
            type Output = Coordinate;
            #[inline]
            fn $method(self, rhs: i64) -> Coordinate {
                self.map(|a| a $op rhs)
            }
        }
    };
}

elementwise!(Add, add, +);
elementwise!(Sub, sub, -);
elementwise!(Mul, mul, *);

impl Div for Coordinate {
    type Output = Coordinate;
    /// Floor division, as Python's `//` on funlib Coordinates.
    #[inline]
    fn div(self, rhs: Coordinate) -> Coordinate {
        self.floor_div(&rhs)
    }
}

impl Rem for Coordinate {
    type Output = Coordinate;
    /// The remainder with the sign of the divisor, as Python's `%`.
    #[inline]
    fn rem(self, rhs: Coordinate) -> Coordinate {
        self.zip_with(&rhs, |a, b| a - a.div_euclid_floor(b) * b)
    }
}

impl Neg for Coordinate {
    type Output = Coordinate;
    #[inline]
    fn neg(self) -> Coordinate {
        self.map(|a| -a)
    }
}

impl fmt::Debug for Coordinate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Coordinate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (axis, value) in self.as_slice().iter().enumerate() {
            if axis > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{value}")?;
        }
        f.write_str(")")
    }
}

impl Serialize for Coordinate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Coordinate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let values = Vec::<i64>::deserialize(deserializer)?;
        Coordinate::new(&values).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&[i64]> for Coordinate {
    type Error = TooManyDims;
    fn try_from(values: &[i64]) -> Result<Self, TooManyDims> {
        Coordinate::new(values)
    }
}

impl<const N: usize> From<[i64; N]> for Coordinate {
    /// # Panics
    /// If `N > MAX_DIMS` (a literal in code, so a programming error).
    fn from(values: [i64; N]) -> Self {
        Coordinate::new(&values).expect("a coordinate literal has at most MAX_DIMS values")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_elementwise_with_python_floor_semantics() {
        let a = Coordinate::from([7, -7, 6]);
        let b = Coordinate::from([2, 2, 3]);
        assert_eq!(a + b, Coordinate::from([9, -5, 9]));
        assert_eq!(a - b, Coordinate::from([5, -9, 3]));
        assert_eq!(a * b, Coordinate::from([14, -14, 18]));
        assert_eq!(a / b, Coordinate::from([3, -4, 2]));
        assert_eq!(a % b, Coordinate::from([1, 1, 0]));
        assert_eq!(a.ceil_div(&b), Coordinate::from([4, -3, 2]));
        assert_eq!(-a, Coordinate::from([-7, 7, -6]));
        assert_eq!(a + 1, Coordinate::from([8, -6, 7]));
        assert_eq!(b.product(), 12);
        assert!(Coordinate::from([4, 6]).is_multiple_of(&Coordinate::from([2, 3])));
    }

    #[test]
    fn too_many_dims_is_an_error() {
        assert_eq!(Coordinate::new(&[0; 7]), Err(TooManyDims { dims: 7 }));
    }

    #[test]
    fn serializes_as_a_list() {
        let c = Coordinate::from([1, -2]);
        assert_eq!(serde_json::to_string(&c).unwrap(), "[1,-2]");
        let back: Coordinate = serde_json::from_str("[1,-2]").unwrap();
        assert_eq!(back, c);
    }
}
