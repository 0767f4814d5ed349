//! Maps world-unit ROIs onto the voxel and chunk grid of one array.
//!
//! World units are what tasks speak (`Block::read_roi`, `write_roi`); voxels
//! are what zarr indexes. With voxel size `v` and offset `o` (the world
//! position of voxel 0, a multiple of `v`), world point `p` is voxel
//! `(p - o) / v`. A world ROI is *voxel-aligned* when its begin and shape are
//! multiples of `v` relative to `o`, and *chunk-aligned* when, in voxels, its
//! begin lies on the chunk grid and its end lies on the chunk grid or at the
//! array's end on every axis.

use daisy_core::{Coordinate, Roi};

/// The fixed geometry of an array: everything needed to map world ROIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// World units per voxel, positive on every axis.
    pub(crate) voxel_size: Coordinate,
    /// World position of voxel 0, a multiple of `voxel_size`.
    pub(crate) offset: Coordinate,
    /// Array shape in voxels, ≥ 0 on every axis.
    pub(crate) shape: Coordinate,
    /// Chunk shape in voxels, positive on every axis.
    pub(crate) chunk_shape: Coordinate,
}

impl Geometry {
    /// The array's extent in world units.
    pub(crate) fn roi(&self) -> Roi {
        Roi::new(self.offset, self.shape * self.voxel_size)
    }

    /// The chunk shape in world units.
    pub(crate) fn chunk_roi_shape(&self) -> Coordinate {
        self.chunk_shape * self.voxel_size
    }

    /// The voxel ROI (relative to voxel 0) of a world ROI, or `None` when the
    /// world ROI is not voxel-aligned.
    pub(crate) fn voxels_of(&self, world: &Roi) -> Option<Roi> {
        let relative_begin = world.begin() - self.offset;
        if !relative_begin.is_multiple_of(&self.voxel_size)
            || !world.shape().is_multiple_of(&self.voxel_size)
        {
            return None;
        }
        Some(Roi::new(relative_begin / self.voxel_size, world.shape() / self.voxel_size))
    }

    /// The array's extent in voxels: `[0, shape)`.
    pub(crate) fn voxel_roi(&self) -> Roi {
        Roi::new(Coordinate::zeros(self.shape.dims()), self.shape)
    }

    /// Whether a voxel ROI inside the array starts on the chunk grid and ends
    /// on it or at the array's end, on every axis.
    pub(crate) fn is_chunk_aligned(&self, voxels: &Roi) -> bool {
        let (begin, end) = (voxels.begin(), voxels.end());
        (0..self.shape.dims()).all(|axis| {
            let chunk = self.chunk_shape[axis];
            begin[axis] % chunk == 0 && (end[axis] % chunk == 0 || end[axis] == self.shape[axis])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            voxel_size: Coordinate::from([4, 2]),
            offset: Coordinate::from([8, -2]),
            shape: Coordinate::from([10, 10]),
            chunk_shape: Coordinate::from([4, 5]),
        }
    }

    #[test]
    fn world_rois_map_to_voxels() {
        let g = geometry();
        assert_eq!(g.roi(), Roi::new([8, -2].into(), [40, 20].into()));
        assert_eq!(g.chunk_roi_shape(), Coordinate::from([16, 10]));
        let voxels = g.voxels_of(&Roi::new([12, 0].into(), [8, 4].into()));
        assert_eq!(voxels, Some(Roi::new([1, 1].into(), [2, 2].into())));
        // Before the array: negative voxel indices are still a valid mapping.
        let before = g.voxels_of(&Roi::new([0, -2].into(), [4, 2].into()));
        assert_eq!(before, Some(Roi::new([-2, 0].into(), [1, 1].into())));
        assert_eq!(g.voxels_of(&Roi::new([10, 0].into(), [4, 2].into())), None);
        assert_eq!(g.voxels_of(&Roi::new([8, 0].into(), [3, 2].into())), None);
    }

    #[test]
    fn chunk_alignment_allows_the_array_end() {
        let g = geometry();
        assert!(g.is_chunk_aligned(&Roi::new([4, 5].into(), [4, 5].into())));
        assert!(g.is_chunk_aligned(&Roi::new([8, 0].into(), [2, 10].into())));
        assert!(!g.is_chunk_aligned(&Roi::new([2, 0].into(), [2, 5].into())));
        assert!(!g.is_chunk_aligned(&Roi::new([0, 0].into(), [3, 5].into())));
    }
}
