//! The block grid of one task: which blocks exist, their ids, levels and
//! read/write ROIs, and their conflicts with neighbours, computed lazily.
//!
//! A task's blocks tile `total_write_roi` (the total ROI shrunk by the
//! context) with write ROIs on a grid whose pitch is the write shape. Each
//! block has three names:
//!
//! * its **grid index** `k` (a [`Coordinate`] in blocks, `0 <= k < grid_shape`),
//! * its **dense index** ([`BlockIndex`]): `k` in row-major order, used for
//!   bitsets,
//! * its **block id** ([`BlockId`]): Daisy's Cantor number of `k` shifted by
//!   `context_lo / write_shape` (Daisy numbers blocks relative to the total
//!   *read* ROI), so ids equal Daisy's.
//!
//! With `read_write_conflict`, blocks are ordered in levels (Daisy's scheme):
//! the level stride is the smallest multiple of the write shape that covers
//! the context plus one block, so that blocks of one level never touch each
//! other's read or write ROIs. Level offsets are taken in reverse
//! lexicographic order, and a block of level `L > 0` waits for its
//! neighbours of level `L - 1` only (earlier levels follow transitively).
//!
//! Nothing here is materialised per block: counts are products, positions
//! are mixed-radix arithmetic, and neighbours are a few precomputed shifts
//! per level. A grid of 10^10 blocks costs a few hundred bytes.

use std::fmt;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use crate::cantor::{cantor_number, cantor_point};
use crate::{Coordinate, Roi};

/// How blocks at the boundary of the total ROI are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Only blocks whose write ROI lies wholly inside the total write ROI
    /// (so their read ROI lies inside the total ROI). A trailing partial
    /// block is dropped.
    #[default]
    Valid,
    /// Every block whose write ROI *begins* inside the total write ROI; the
    /// last blocks stick out past the total ROI.
    Overhang,
    /// As `overhang`, with the write ROI cropped to the total write ROI and
    /// the read ROI cropped to the total ROI.
    Shrink,
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fit::Valid => "valid",
            Fit::Overhang => "overhang",
            Fit::Shrink => "shrink",
        })
    }
}

/// Daisy's block id: the Cantor number of the block's grid position,
/// counted from the total read ROI. Unique within a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockId(pub u64);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A block's position in row-major order over its task's grid: the index
/// into the scheduler's bitsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BlockIndex(pub u64);

/// One level of the conflict scheme.
#[derive(Debug, Clone)]
struct Level {
    /// Offset of the level's first block, in blocks.
    offset: Coordinate,
    /// Blocks per axis in this level.
    counts: Coordinate,
    /// Number of blocks in this level.
    size: u64,
    /// Number of blocks in all earlier levels.
    start: u64,
    /// Shifts (in blocks) from a block of this level to its conflicting
    /// neighbours in the previous level.
    upstream_shifts: Vec<Coordinate>,
    /// Shifts (in blocks) from a block of this level to the blocks of the
    /// next level that wait for it.
    downstream_shifts: Vec<Coordinate>,
}

/// The geometry of one task's blocks. See the module docs.
#[derive(Debug, Clone)]
pub struct BlockGrid {
    total_roi: Roi,
    total_write_roi: Roi,
    read_shape: Coordinate,
    write_shape: Coordinate,
    fit: Fit,
    read_write_conflict: bool,
    grid_shape: Coordinate,
    level_stride: Coordinate,
    levels: Vec<Level>,
    cantor_offset: Coordinate,
    num_blocks: u64,
}

/// Why a task's ROIs cannot be tiled into blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    /// The ROIs do not all have the same number of dimensions.
    #[error("{field} has {found} dimensions but total_roi has {expected}")]
    DimsMismatch {
        /// The ROI with the odd dimensionality.
        field: &'static str,
        /// Dimensions of `total_roi`.
        expected: usize,
        /// Dimensions of `field`.
        found: usize,
    },
    /// A shape value is zero or negative.
    #[error("{field} has shape {shape}: every value must be > 0")]
    NonPositiveShape {
        /// The ROI with the bad shape.
        field: &'static str,
        /// Its shape.
        shape: Coordinate,
    },
    /// The write ROI is not inside the read ROI.
    #[error(
        "write_roi {write} is not inside read_roi {read}: the read ROI is the write ROI grown by \
         the context, so it must contain it"
    )]
    WriteNotInRead {
        /// The read ROI template.
        read: Roi,
        /// The write ROI template.
        write: Roi,
    },
    /// Not a single block fits into the total ROI.
    #[error(
        "total_roi {total} holds no block: with a read shape of {read_shape} and fit = \
         \"{fit}\" it must be at least {needed} on every axis"
    )]
    TotalTooSmall {
        /// The total ROI.
        total: Roi,
        /// The read shape.
        read_shape: Coordinate,
        /// The fit mode.
        fit: Fit,
        /// The smallest total shape that holds one block.
        needed: Coordinate,
    },
    /// The largest block id does not fit into 64 bits.
    #[error("the block grid {grid_shape} is too large: its Cantor block ids overflow 64 bits")]
    IdOverflow {
        /// Blocks per axis.
        grid_shape: Coordinate,
    },
    /// The grid has more blocks than a `u64` counts.
    #[error("the block grid {grid_shape} has more than 2^64 blocks")]
    TooManyBlocks {
        /// Blocks per axis.
        grid_shape: Coordinate,
    },
}

/// A box of grid indices, `begin <= k < end` per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridBox {
    /// First grid index, inclusive.
    pub begin: Coordinate,
    /// Last grid index, exclusive.
    pub end: Coordinate,
}

impl GridBox {
    /// Whether the box holds no index.
    pub fn is_empty(&self) -> bool {
        self.begin.as_slice().iter().zip(self.end.as_slice()).any(|(b, e)| b >= e)
    }

    /// Calls `f` on every grid index in the box, last axis fastest.
    pub fn for_each(&self, mut f: impl FnMut(Coordinate)) {
        let _ = self.try_for_each(|k| {
            f(k);
            ControlFlow::Continue(())
        });
    }

    /// Calls `f` on every grid index in the box, last axis fastest, until
    /// `f` breaks.
    pub fn try_for_each(
        &self,
        mut f: impl FnMut(Coordinate) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if self.is_empty() {
            return ControlFlow::Continue(());
        }
        let dims = self.begin.dims();
        let mut k = self.begin;
        loop {
            f(k)?;
            let mut axis = dims;
            loop {
                if axis == 0 {
                    return ControlFlow::Continue(());
                }
                axis -= 1;
                let next = k[axis] + 1;
                if next < self.end[axis] {
                    k.set(axis, next);
                    break;
                }
                k.set(axis, self.begin[axis]);
            }
        }
    }
}

impl BlockGrid {
    /// Tiles `total_roi` with blocks shaped like the `read_roi`/`write_roi`
    /// templates (only their relative offset matters).
    ///
    /// # Errors
    /// A [`GridError`] naming the field at fault.
    pub fn new(
        total_roi: Roi,
        read_roi: Roi,
        write_roi: Roi,
        fit: Fit,
        read_write_conflict: bool,
    ) -> Result<Self, GridError> {
        let dims = total_roi.dims();
        for (field, roi) in [("read_roi", &read_roi), ("write_roi", &write_roi)] {
            if roi.dims() != dims {
                return Err(GridError::DimsMismatch { field, expected: dims, found: roi.dims() });
            }
        }
        for (field, roi) in
            [("total_roi", &total_roi), ("read_roi", &read_roi), ("write_roi", &write_roi)]
        {
            if roi.shape().as_slice().iter().any(|&s| s <= 0) {
                return Err(GridError::NonPositiveShape { field, shape: roi.shape() });
            }
        }
        if !read_roi.contains(&write_roi) {
            return Err(GridError::WriteNotInRead { read: read_roi, write: write_roi });
        }
        let write_shape = write_roi.shape();
        let read_shape = read_roi.shape();
        let context_lo = write_roi.begin() - read_roi.begin();
        let context_hi = read_roi.end() - write_roi.end();
        let total_write_roi = total_roi.grow(-context_lo, -context_hi);
        let total_write_shape = total_write_roi.shape();

        // Block positions per axis: whole blocks for `valid`, blocks that
        // begin inside the total write ROI otherwise.
        let grid_shape = match fit {
            Fit::Valid => total_write_shape.zip_with(&write_shape, |t, w| t.max(0) / w),
            Fit::Overhang | Fit::Shrink => {
                total_write_shape.zip_with(&write_shape, |t, w| (t.max(0) + w - 1) / w)
            }
        };
        if grid_shape.as_slice().contains(&0) {
            let needed = match fit {
                Fit::Valid => read_shape,
                Fit::Overhang | Fit::Shrink => context_lo + context_hi + 1,
            };
            return Err(GridError::TotalTooSmall { total: total_roi, read_shape, fit, needed });
        }
        let num_blocks = grid_shape
            .as_slice()
            .iter()
            .try_fold(1u64, |acc, &g| acc.checked_mul(g as u64))
            .ok_or(GridError::TooManyBlocks { grid_shape })?;

        let cantor_offset = context_lo / write_shape;
        if cantor_number(&(grid_shape - 1 + cantor_offset)).is_none() {
            return Err(GridError::IdOverflow { grid_shape });
        }

        let level_stride = if read_write_conflict {
            let max_context = context_lo.max(&context_hi);
            // ceil((max_context + w) / w) blocks, capped at the grid (so no
            // level is empty).
            let needed = (max_context + write_shape).ceil_div(&write_shape);
            needed.min(&grid_shape)
        } else {
            Coordinate::filled(dims, 1)
        };
        let levels = build_levels(grid_shape, level_stride);

        Ok(Self {
            total_roi,
            total_write_roi,
            read_shape,
            write_shape,
            fit,
            read_write_conflict,
            grid_shape,
            level_stride,
            levels,
            cantor_offset,
            num_blocks,
        })
    }

    /// The number of dimensions.
    pub fn dims(&self) -> usize {
        self.grid_shape.dims()
    }

    /// The total ROI (including context).
    pub fn total_roi(&self) -> Roi {
        self.total_roi
    }

    /// The total ROI shrunk by the context: what the blocks write.
    pub fn total_write_roi(&self) -> Roi {
        self.total_write_roi
    }

    /// The shape of a block's write ROI (before shrinking).
    pub fn write_shape(&self) -> Coordinate {
        self.write_shape
    }

    /// The shape of a block's read ROI (before shrinking).
    pub fn read_shape(&self) -> Coordinate {
        self.read_shape
    }

    /// The fit mode.
    pub fn fit(&self) -> Fit {
        self.fit
    }

    /// Whether neighbouring blocks conflict.
    pub fn read_write_conflict(&self) -> bool {
        self.read_write_conflict
    }

    /// Blocks per axis.
    pub fn grid_shape(&self) -> Coordinate {
        self.grid_shape
    }

    /// The level stride, in blocks per axis.
    pub fn level_stride(&self) -> Coordinate {
        self.level_stride
    }

    /// The number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// The number of conflict levels (1 without conflicts).
    pub fn num_levels(&self) -> usize {
        self.levels.len()
    }

    /// The number of blocks in `level`.
    pub fn level_size(&self, level: usize) -> u64 {
        self.levels[level].size
    }

    /// Whether `k` is the grid index of a block.
    #[inline]
    pub fn contains(&self, k: &Coordinate) -> bool {
        (0..self.dims()).all(|axis| k[axis] >= 0 && k[axis] < self.grid_shape[axis])
    }

    /// The dense (row-major) index of grid index `k`.
    #[inline]
    pub fn dense_index(&self, k: &Coordinate) -> BlockIndex {
        debug_assert!(self.contains(k), "grid index {k} outside {}", self.grid_shape);
        let mut index: u64 = 0;
        for axis in 0..self.dims() {
            index = index * self.grid_shape[axis] as u64 + k[axis] as u64;
        }
        BlockIndex(index)
    }

    /// The grid index of dense index `index`.
    #[inline]
    pub fn grid_index(&self, index: BlockIndex) -> Coordinate {
        debug_assert!(index.0 < self.num_blocks);
        let mut rest = index.0;
        let mut k = self.grid_shape;
        for axis in (0..self.dims()).rev() {
            let extent = self.grid_shape[axis] as u64;
            k.set(axis, (rest % extent) as i64);
            rest /= extent;
        }
        k
    }

    /// Daisy's block id of grid index `k`.
    #[inline]
    pub fn block_id(&self, k: &Coordinate) -> BlockId {
        BlockId(
            cantor_number(&(*k + self.cantor_offset))
                .expect("ids of a grid fit in u64: checked when the grid was built"),
        )
    }

    /// The grid index of the block with Daisy id `id`, if it exists.
    pub fn grid_index_of_id(&self, id: BlockId) -> Option<Coordinate> {
        let k = cantor_point(id.0, self.dims()) - self.cantor_offset;
        self.contains(&k).then_some(k)
    }

    /// The conflict level of grid index `k`.
    #[inline]
    pub fn level(&self, k: &Coordinate) -> usize {
        let mut rank: usize = 0;
        for axis in 0..self.dims() {
            let stride = self.level_stride[axis];
            rank = rank * stride as usize + k[axis].rem_euclid(stride) as usize;
        }
        self.levels.len() - 1 - rank
    }

    /// The write ROI of the block at grid index `k` (cropped for `shrink`).
    #[inline]
    pub fn write_roi(&self, k: &Coordinate) -> Roi {
        let roi = Roi::new(self.total_write_roi.begin() + *k * self.write_shape, self.write_shape);
        match self.fit {
            Fit::Shrink => roi.intersect(&self.total_write_roi),
            Fit::Valid | Fit::Overhang => roi,
        }
    }

    /// The read ROI of the block at grid index `k` (cropped for `shrink`).
    #[inline]
    pub fn read_roi(&self, k: &Coordinate) -> Roi {
        let roi = Roi::new(self.total_roi.begin() + *k * self.write_shape, self.read_shape);
        match self.fit {
            Fit::Shrink => roi.intersect(&self.total_roi),
            Fit::Valid | Fit::Overhang => roi,
        }
    }

    /// The position of `k` in Daisy's enumeration order (level by level,
    /// last axis fastest within a level).
    pub fn enumeration_index(&self, k: &Coordinate) -> u64 {
        let level = &self.levels[self.level(k)];
        let mut index: u64 = 0;
        for axis in 0..self.dims() {
            let within = (k[axis] - level.offset[axis]) / self.level_stride[axis];
            index = index * level.counts[axis] as u64 + within as u64;
        }
        level.start + index
    }

    /// The grid index of the `n`-th block in Daisy's enumeration order.
    ///
    /// # Panics
    /// If `n >= num_blocks()`.
    pub fn nth_block(&self, n: u64) -> Coordinate {
        let level_index = self.levels.partition_point(|level| level.start + level.size <= n);
        let level = &self.levels[level_index];
        self.nth_in_level(level, n - level.start)
    }

    /// The grid index of the `n`-th block of `level` (last axis fastest).
    #[inline]
    pub fn nth_block_of_level(&self, level: usize, n: u64) -> Coordinate {
        self.nth_in_level(&self.levels[level], n)
    }

    #[inline]
    fn nth_in_level(&self, level: &Level, n: u64) -> Coordinate {
        debug_assert!(n < level.size);
        let mut rest = n;
        let mut k = level.offset;
        for axis in (0..self.dims()).rev() {
            let count = level.counts[axis] as u64;
            k.set(axis, level.offset[axis] + (rest % count) as i64 * self.level_stride[axis]);
            rest /= count;
        }
        k
    }

    /// Calls `f` with each block of the previous level that conflicts with
    /// `k` (its intra-task upstream).
    #[inline]
    pub fn for_each_conflict_upstream(&self, k: &Coordinate, mut f: impl FnMut(Coordinate)) {
        for shift in &self.levels[self.level(k)].upstream_shifts {
            let neighbour = *k + *shift;
            if self.contains(&neighbour) {
                f(neighbour);
            }
        }
    }

    /// Calls `f` with each block of the next level that waits for `k`
    /// (its intra-task downstream).
    #[inline]
    pub fn for_each_conflict_downstream(&self, k: &Coordinate, mut f: impl FnMut(Coordinate)) {
        for shift in &self.levels[self.level(k)].downstream_shifts {
            let neighbour = *k + *shift;
            if self.contains(&neighbour) {
                f(neighbour);
            }
        }
    }

    /// The blocks whose (cropped) write ROI intersects `roi`.
    #[inline]
    pub fn blocks_writing_into(&self, roi: &Roi) -> GridBox {
        let region = roi.intersect(&self.total_write_roi);
        if region.is_empty() {
            return self.empty_box();
        }
        let origin = self.total_write_roi.begin();
        let begin = (region.begin() - origin) / self.write_shape;
        let end = (region.end() - origin).ceil_div(&self.write_shape);
        self.clamp_box(begin, end)
    }

    /// The blocks whose (cropped) read ROI intersects `roi`.
    #[inline]
    pub fn blocks_reading_from(&self, roi: &Roi) -> GridBox {
        let region = match self.fit {
            Fit::Shrink => roi.intersect(&self.total_roi),
            Fit::Valid | Fit::Overhang => *roi,
        };
        if region.is_empty() {
            return self.empty_box();
        }
        // Block k reads [origin + k w, origin + k w + r); it intersects
        // [b, e) iff k w < e - origin and k w > b - origin - r.
        let origin = self.total_roi.begin();
        let begin = (region.begin() - origin - self.read_shape) / self.write_shape + 1;
        let end = (region.end() - origin).ceil_div(&self.write_shape);
        self.clamp_box(begin, end)
    }

    fn clamp_box(&self, begin: Coordinate, end: Coordinate) -> GridBox {
        let zeros = Coordinate::zeros(self.dims());
        GridBox { begin: begin.max(&zeros), end: end.min(&self.grid_shape) }
    }

    fn empty_box(&self) -> GridBox {
        let zeros = Coordinate::zeros(self.dims());
        GridBox { begin: zeros, end: zeros }
    }
}

/// Builds the conflict levels: offsets in reverse lexicographic order, the
/// block counts per level, and the neighbour shifts between adjacent levels.
fn build_levels(grid_shape: Coordinate, stride: Coordinate) -> Vec<Level> {
    let dims = grid_shape.dims();
    let num_levels = stride.product() as usize;
    let mut offsets = Vec::with_capacity(num_levels);
    GridBox { begin: Coordinate::zeros(dims), end: stride }.for_each(|offset| offsets.push(offset));
    offsets.reverse();

    let mut levels: Vec<Level> = Vec::with_capacity(num_levels);
    let mut start = 0;
    for offset in offsets {
        let counts = Coordinate::from_fn(dims, |axis| {
            let (g, l, s) = (grid_shape[axis], offset[axis], stride[axis]);
            if g > l { (g - l + s - 1) / s } else { 0 }
        });
        let size = counts.product() as u64;
        levels.push(Level {
            offset,
            counts,
            size,
            start,
            upstream_shifts: Vec::new(),
            downstream_shifts: Vec::new(),
        });
        start += size;
    }
    for level in 1..levels.len() {
        let delta = levels[level - 1].offset - levels[level].offset;
        let shifts = conflict_shifts(delta, stride);
        levels[level - 1].downstream_shifts = shifts.iter().map(|s| -*s).collect();
        levels[level].upstream_shifts = shifts;
    }
    levels
}

/// The shifts from a block to its conflicting neighbours in a level whose
/// offset differs by `delta` (both in blocks): per axis `{d, d + s}` if
/// `d < 0`, `{0}` if `d = 0`, `{d - s, d}` if `d > 0`, and their product.
fn conflict_shifts(delta: Coordinate, stride: Coordinate) -> Vec<Coordinate> {
    let dims = delta.dims();
    let mut shifts = vec![Coordinate::zeros(dims)];
    for axis in 0..dims {
        let (d, s) = (delta[axis], stride[axis]);
        let choices: &[i64] = match d.signum() {
            -1 => &[d, d + s],
            0 => &[0],
            _ => &[d - s, d],
        };
        shifts = shifts
            .iter()
            .flat_map(|shift| {
                choices.iter().map(move |&c| {
                    let mut next = *shift;
                    next.set(axis, c);
                    next
                })
            })
            .collect();
    }
    shifts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roi<const N: usize>(offset: [i64; N], shape: [i64; N]) -> Roi {
        Roi::new(offset.into(), shape.into())
    }

    fn ids_by_level(grid: &BlockGrid) -> Vec<Vec<u64>> {
        let mut levels = vec![Vec::new(); grid.num_levels()];
        for n in 0..grid.num_blocks() {
            let k = grid.nth_block(n);
            levels[grid.level(&k)].push(grid.block_id(&k).0);
        }
        levels
    }

    fn worked_example(conflict: bool) -> BlockGrid {
        BlockGrid::new(
            roi([0, 0], [6, 6]),
            roi([0, 0], [3, 3]),
            roi([1, 1], [1, 1]),
            Fit::Valid,
            conflict,
        )
        .unwrap()
    }

    #[test]
    fn worked_2d_example_ids_by_level() {
        let grid = worked_example(true);
        assert_eq!(grid.level_stride(), Coordinate::from([2, 2]));
        assert_eq!(grid.num_blocks(), 16);
        assert_eq!(
            ids_by_level(&grid),
            vec![
                vec![12, 23, 25, 40],
                vec![8, 17, 19, 32],
                vec![7, 16, 18, 31],
                vec![4, 11, 13, 24]
            ]
        );
        let flat = worked_example(false);
        assert_eq!(flat.num_levels(), 1);
        let mut all: Vec<u64> = ids_by_level(&grid).concat();
        let mut flat_ids = ids_by_level(&flat).concat();
        all.sort_unstable();
        flat_ids.sort_unstable();
        assert_eq!(all, flat_ids);
    }

    fn conflict_upstream_ids(grid: &BlockGrid, id: u64) -> Vec<u64> {
        let k = grid.grid_index_of_id(BlockId(id)).unwrap();
        let mut ids = Vec::new();
        grid.for_each_conflict_upstream(&k, |n| ids.push(grid.block_id(&n).0));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn worked_2d_example_upstream_sets() {
        let grid = worked_example(true);
        assert_eq!(conflict_upstream_ids(&grid, 8), vec![12]);
        assert_eq!(conflict_upstream_ids(&grid, 17), vec![12, 23]);
        assert_eq!(conflict_upstream_ids(&grid, 18), vec![8, 17, 19, 32]);
        assert_eq!(conflict_upstream_ids(&grid, 4), vec![7]);
        assert_eq!(conflict_upstream_ids(&grid, 24), vec![18, 31]);
        assert!(conflict_upstream_ids(&grid, 12).is_empty());
    }

    #[test]
    fn one_d_fit_counts() {
        let count = |write: Roi, fit| {
            BlockGrid::new(roi([0], [12]), roi([0], [5]), write, fit, true).unwrap().num_blocks()
        };
        for fit in [Fit::Valid, Fit::Overhang, Fit::Shrink] {
            assert_eq!(count(roi([2], [1]), fit), 8);
        }
        assert_eq!(count(roi([1], [3]), Fit::Valid), 3);
        assert_eq!(count(roi([1], [3]), Fit::Overhang), 4);
        assert_eq!(count(roi([1], [3]), Fit::Shrink), 4);
    }

    #[test]
    fn overhang_and_shrink_boundary_rois() {
        let last = |fit| {
            let grid =
                BlockGrid::new(roi([0], [12]), roi([0], [5]), roi([1], [3]), fit, true).unwrap();
            let k = Coordinate::from([3]);
            (grid.write_roi(&k), grid.read_roi(&k), grid.block_id(&k))
        };
        let (write, read, id) = last(Fit::Overhang);
        assert_eq!((write, read), (roi([10], [3]), roi([9], [5])));
        let (shrunk_write, shrunk_read, shrunk_id) = last(Fit::Shrink);
        assert_eq!((shrunk_write, shrunk_read), (roi([10], [1]), roi([9], [3])));
        assert_eq!(id, shrunk_id, "the id comes from the unclipped offset");
    }

    #[test]
    fn retries_layout_has_two_levels() {
        let grid =
            BlockGrid::new(roi([0], [4]), roi([0], [3]), roi([1], [1]), Fit::Valid, true).unwrap();
        assert_eq!(ids_by_level(&grid), vec![vec![2], vec![1]]);
    }

    #[test]
    fn inter_task_boxes_match_the_chained_example() {
        let first = worked_example(true);
        let second = BlockGrid::new(
            roi([1, 1], [4, 4]),
            roi([0, 0], [3, 3]),
            roi([1, 1], [1, 1]),
            Fit::Valid,
            true,
        )
        .unwrap();
        let mut ids = Vec::new();
        first
            .blocks_writing_into(&roi([2, 2], [3, 3]))
            .for_each(|k| ids.push(first.block_id(&k).0));
        ids.sort_unstable();
        assert_eq!(ids, vec![12, 17, 18, 23, 24, 25, 31, 32, 40]);

        let mut down = Vec::new();
        second
            .blocks_reading_from(&roi([3, 3], [1, 1]))
            .for_each(|k| down.push(second.block_id(&k).0));
        down.sort_unstable();
        assert_eq!(down, vec![4, 7, 8, 12]);
    }

    #[test]
    fn errors_name_the_problem() {
        let bad = BlockGrid::new(roi([0], [12]), roi([0], [5]), roi([4], [3]), Fit::Valid, true);
        assert!(matches!(bad, Err(GridError::WriteNotInRead { .. })));
        let small = BlockGrid::new(roi([0], [4]), roi([0], [5]), roi([1], [3]), Fit::Valid, true);
        assert!(matches!(small, Err(GridError::TotalTooSmall { .. })));
        let zero = BlockGrid::new(roi([0], [4]), roi([0], [0]), roi([0], [0]), Fit::Valid, true);
        assert!(matches!(zero, Err(GridError::NonPositiveShape { field: "read_roi", .. })));
        let dims =
            BlockGrid::new(roi([0], [4]), roi([0, 0], [1, 1]), roi([0], [1]), Fit::Valid, true);
        assert!(matches!(dims, Err(GridError::DimsMismatch { field: "read_roi", .. })));
    }
}
