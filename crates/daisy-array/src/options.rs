//! How an array is created and how a handle behaves.

use daisy_core::{Coordinate, Roi};

use crate::{ArrayError, Element};

/// What a read does with the part of its ROI that lies outside the array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOutside {
    /// Fail with [`ArrayError::OutsideArray`] (the default: a ROI that leaves
    /// the array is usually a bug in the task's geometry).
    #[default]
    Error,
    /// Fill the outside part with the array's fill value (a block's read ROI
    /// with context that overhangs the volume).
    Fill,
}

/// How chunks are compressed on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// The raw `bytes` codec: fastest, and the default.
    #[default]
    None,
    /// The `gzip` codec at `level` 0–9: smaller chunks, more CPU per block.
    Gzip {
        /// Compression level, 0 (fastest) to 9 (smallest).
        level: u32,
    },
}

/// The description of a new array, for [`Array::create`](crate::Array::create)
/// and [`Array::open_or_create`](crate::Array::open_or_create).
///
/// `shape`, `chunk_shape`, `voxel_size`, `offset`, `fill_value` and
/// `compression` are stored in the zarr metadata. `read_outside` and
/// `allow_unaligned_writes` only configure the returned handle; they are not
/// stored, and a handle from [`Array::open`](crate::Array::open) gets the
/// defaults (see [`Array::with_read_outside`](crate::Array::with_read_outside)).
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayOptions<T: Element> {
    /// Array shape in voxels (≥ 0 on every axis).
    pub shape: Coordinate,
    /// Chunk shape in voxels (> 0 on every axis). One chunk is one file; a
    /// task's write ROI should be a multiple of it.
    pub chunk_shape: Coordinate,
    /// World units per voxel (> 0 on every axis); all ones by default.
    pub voxel_size: Coordinate,
    /// World position of voxel 0, a multiple of `voxel_size`; zero by default.
    pub offset: Coordinate,
    /// The value of never-written voxels (and of voxels read outside the
    /// array with [`ReadOutside::Fill`]).
    pub fill_value: T,
    /// Chunk compression.
    pub compression: Compression,
    /// The handle's policy for reads that leave the array.
    pub read_outside: ReadOutside,
    /// Whether the handle's [`write`](crate::Array::write) accepts ROIs that
    /// are not chunk-aligned (read-modify-write of partial chunks; two
    /// blocks writing parts of one chunk at once race and may lose data).
    pub allow_unaligned_writes: bool,
}

impl<T: Element> ArrayOptions<T> {
    /// Options for an array of `shape` voxels in chunks of `chunk_shape`
    /// voxels, with voxel size 1, offset 0 and no compression.
    pub fn new(shape: Coordinate, chunk_shape: Coordinate, fill_value: T) -> Self {
        let dims = shape.dims();
        Self {
            shape,
            chunk_shape,
            voxel_size: Coordinate::filled(dims, 1),
            offset: Coordinate::zeros(dims),
            fill_value,
            compression: Compression::None,
            read_outside: ReadOutside::Error,
            allow_unaligned_writes: false,
        }
    }

    /// Options for an array covering the world ROI `total_roi` with
    /// `voxel_size`, in chunks of `chunk_roi_shape` world units (Daisy's
    /// `prepare_ds(total_roi, voxel_size, write_size)`).
    ///
    /// # Errors
    /// [`ArrayError::NotVoxelAligned`] if `total_roi` or `chunk_roi_shape`
    /// is not a multiple of `voxel_size`.
    pub fn from_world(
        total_roi: Roi,
        voxel_size: Coordinate,
        chunk_roi_shape: Coordinate,
        fill_value: T,
    ) -> Result<Self, ArrayError> {
        let aligned = |value: Coordinate| {
            voxel_size.as_slice().iter().all(|&v| v > 0) && value.is_multiple_of(&voxel_size)
        };
        if !aligned(total_roi.begin()) || !aligned(total_roi.shape()) {
            return Err(ArrayError::NotVoxelAligned {
                path: None,
                roi: total_roi,
                voxel_size,
                offset: Coordinate::zeros(voxel_size.dims()),
            });
        }
        if !aligned(chunk_roi_shape) {
            return Err(ArrayError::NotVoxelAligned {
                path: None,
                roi: Roi::new(total_roi.begin(), chunk_roi_shape),
                voxel_size,
                offset: Coordinate::zeros(voxel_size.dims()),
            });
        }
        Ok(Self {
            voxel_size,
            offset: total_roi.begin(),
            ..Self::new(total_roi.shape() / voxel_size, chunk_roi_shape / voxel_size, fill_value)
        })
    }

    /// Sets the voxel size (world units per voxel).
    pub fn voxel_size(mut self, voxel_size: Coordinate) -> Self {
        self.voxel_size = voxel_size;
        self
    }

    /// Sets the offset (world position of voxel 0).
    pub fn offset(mut self, offset: Coordinate) -> Self {
        self.offset = offset;
        self
    }

    /// Sets the chunk compression.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets the handle's policy for reads that leave the array.
    pub fn read_outside(mut self, read_outside: ReadOutside) -> Self {
        self.read_outside = read_outside;
        self
    }

    /// Lets the handle's `write` accept ROIs that are not chunk-aligned.
    pub fn allow_unaligned_writes(mut self, allow: bool) -> Self {
        self.allow_unaligned_writes = allow;
        self
    }
}
