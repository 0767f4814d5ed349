//! Daisy's block ids: the Cantor number of a block's grid index.
//!
//! `cantor([x]) = x` and `cantor([x1..xn]) = pyramid(n, Σx) + cantor([x1..x(n-1)])`
//! with `pyramid(n, s) = s(s+1)…(s+n-1) / n!`, the number of n-tuples of
//! non-negative integers whose sum is below `s`. The numbering is a bijection
//! between ℕⁿ and ℕ, so it can be inverted exactly. Everything is integer
//! arithmetic in `u128` (Daisy 1.x used floats and lost precision on large
//! grids; Daisy 2.0 and daisy-rs agree on every id that fits in a `u64`).

use crate::{Coordinate, MAX_DIMS};

/// `pyramid(n, s)` = C(s + n - 1, n), or `None` on overflow of `u128`.
pub(crate) fn pyramid(n: usize, s: u128) -> Option<u128> {
    // Multiplying consecutive integers and dividing by d+1 at each step keeps
    // the value an exact binomial coefficient: C(s+d, d+1) at step d.
    let mut value: u128 = 1;
    for d in 0..n as u128 {
        value = value.checked_mul(s + d)? / (d + 1);
    }
    Some(value)
}

/// The Cantor number of a point with non-negative values, or `None` if it
/// does not fit in a `u64` (or a value is negative).
pub fn cantor_number(point: &Coordinate) -> Option<u64> {
    let values = point.as_slice();
    if values.iter().any(|&v| v < 0) {
        return None;
    }
    let mut id: u128 = 0;
    let mut sum: u128 = 0;
    // cantor([x1..xn]) = Σ_{m=1..n} pyramid(m, x1+..+xm), with pyramid(1, s) = s.
    for (m, &value) in values.iter().enumerate() {
        sum += value as u128;
        id = id.checked_add(pyramid(m + 1, sum)?)?;
    }
    u64::try_from(id).ok()
}

/// The point of `dims` non-negative values whose Cantor number is `id`.
///
/// # Panics
/// If `dims` is 0 or greater than [`MAX_DIMS`].
pub fn cantor_point(id: u64, dims: usize) -> Coordinate {
    assert!((1..=MAX_DIMS).contains(&dims), "cantor_point needs 1..={MAX_DIMS} dims");
    let mut point = Coordinate::zeros(dims);
    let mut rest = id as u128;
    // Peel off the last axis: find the largest s with pyramid(n, s) <= rest;
    // s is the sum of all n values, and rest - pyramid(n, s) numbers the prefix.
    for n in (1..=dims).rev() {
        let sum = if n == 1 { rest } else { largest_sum_at_most(n, rest) };
        rest -= pyramid(n, sum).expect("pyramid of a sum found by search fits");
        point.set(n - 1, sum as i64);
    }
    // Axis m now holds the sum of the first m+1 values: take differences.
    for axis in (1..dims).rev() {
        let value = point[axis] - point[axis - 1];
        point.set(axis, value);
    }
    point
}

/// The largest `s` with `pyramid(n, s) <= target` (n >= 2).
fn largest_sum_at_most(n: usize, target: u128) -> u128 {
    let fits = |s: u128| pyramid(n, s).is_some_and(|p| p <= target);
    let mut high: u128 = 1;
    while fits(high) {
        high *= 2;
    }
    let mut low = high / 2; // fits(low) holds (pyramid(n, 0) = 0 <= target)
    if high == 1 {
        return 0;
    }
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if fits(middle) {
            low = middle;
        } else {
            high = middle;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_d_ids_follow_the_diagonals() {
        let ids: Vec<u64> =
            (0..5).map(|x| cantor_number(&Coordinate::from([0, x])).unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 3, 6, 10]);
        assert_eq!(cantor_number(&Coordinate::from([1, 1])), Some(4));
        assert_eq!(cantor_number(&Coordinate::from([1, 0])), Some(2));
        assert_eq!(cantor_number(&Coordinate::from([7])), Some(7));
    }

    #[test]
    fn negative_or_huge_points_have_no_id() {
        assert_eq!(cantor_number(&Coordinate::from([-1, 0])), None);
        assert_eq!(cantor_number(&Coordinate::from([i64::MAX, i64::MAX, i64::MAX])), None);
    }

    #[test]
    fn inverse_round_trips_on_small_grids() {
        for dims in 1..=4 {
            let mut seen = std::collections::HashSet::new();
            let side = 7;
            let count = (side as usize).pow(dims as u32);
            for flat in 0..count {
                let point = Coordinate::from_fn(dims, |axis| {
                    ((flat / (side as usize).pow(axis as u32)) % side as usize) as i64
                });
                let id = cantor_number(&point).unwrap();
                assert!(seen.insert(id), "ids are unique");
                assert_eq!(cantor_point(id, dims), point, "dims {dims} id {id}");
            }
        }
    }

    #[test]
    fn every_small_id_decodes_to_a_point_that_encodes_back() {
        for dims in 1..=5 {
            for id in 0..2000u64 {
                let point = cantor_point(id, dims);
                assert_eq!(cantor_number(&point), Some(id));
            }
        }
    }
}
