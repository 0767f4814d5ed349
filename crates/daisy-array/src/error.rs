//! The errors of array creation, opening, reads and writes.

use std::path::PathBuf;

use daisy_core::{Coordinate, Roi};

/// Why an array operation failed. Every variant names the array's path (when
/// there is one yet) and, for reads and writes, the ROI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// Writing the array metadata failed.
    #[error("cannot write array metadata at {path}")]
    Metadata {
        /// The array's directory.
        path: PathBuf,
        /// What the file system or store reported.
        #[source]
        source: zarrs::storage::StorageError,
    },
    /// Checking the file system for existing metadata failed.
    #[error("cannot access {path}")]
    Io {
        /// The array's directory.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// The compression settings are invalid (gzip levels are 0 to 9).
    #[error("invalid compression {compression:?} for array at {path}")]
    InvalidCompression {
        /// The array's directory.
        path: PathBuf,
        /// The requested compression.
        compression: crate::Compression,
    },
    /// [`Array::create`](crate::Array::create) found an array already there.
    #[error("an array already exists at {path}: open it, or use open_or_create")]
    AlreadyExists {
        /// The array's directory.
        path: PathBuf,
    },
    /// The zarr metadata could not be built (create) or read (open).
    #[error("invalid zarr array at {path}")]
    Zarr {
        /// The array's directory.
        path: PathBuf,
        /// What zarrs reported.
        #[source]
        source: zarrs::array::ArrayCreateError,
    },
    /// The array's chunk grid is not a regular grid (one chunk shape).
    #[error("array at {path} has a {name} chunk grid, only regular grids are supported")]
    UnsupportedChunkGrid {
        /// The array's directory.
        path: PathBuf,
        /// The chunk grid's name.
        name: String,
    },
    /// The array holds another data type than the one asked for.
    #[error("array at {path} holds {found}, not {expected}")]
    DataTypeMismatch {
        /// The array's directory.
        path: PathBuf,
        /// The data type of the requested element type.
        expected: String,
        /// The data type stored in the metadata.
        found: String,
    },
    /// The `daisy` (or funlib) attributes are malformed.
    #[error("malformed attribute {key} of array at {path}")]
    Attributes {
        /// The array's directory.
        path: PathBuf,
        /// The attribute key, e.g. `daisy.voxel_size`.
        key: &'static str,
        /// What parsing reported.
        #[source]
        source: serde_json::Error,
    },
    /// A coordinate or ROI has another number of dimensions than the array.
    #[error("{what} of array at {path} has {found} dimensions, expected {expected}")]
    DimsMismatch {
        /// The array's directory.
        path: PathBuf,
        /// Which value, e.g. `chunk_shape` or `read roi [..]`.
        what: String,
        /// The array's dimensionality.
        expected: usize,
        /// The value's dimensionality.
        found: usize,
    },
    /// A shape, chunk shape or voxel size is not positive where it must be.
    #[error("{what} {value} of array at {path} must be {requirement} on every axis")]
    InvalidGeometry {
        /// The array's directory.
        path: PathBuf,
        /// Which value: `shape`, `chunk_shape` or `voxel_size`.
        what: &'static str,
        /// The offending value.
        value: Coordinate,
        /// `positive` or `non-negative`.
        requirement: &'static str,
    },
    /// The array offset is not a multiple of the voxel size.
    #[error("offset {offset} of array at {path} is not a multiple of voxel size {voxel_size}")]
    OffsetNotVoxelAligned {
        /// The array's directory.
        path: PathBuf,
        /// The offset.
        offset: Coordinate,
        /// The voxel size.
        voxel_size: Coordinate,
    },
    /// A ROI's begin or shape does not fall on voxel boundaries.
    #[error(
        "roi {roi}{} is not aligned to voxel size {voxel_size} (voxel 0 at {offset})",
        .path.as_ref().map(|p| format!(" of array at {}", p.display())).unwrap_or_default()
    )]
    NotVoxelAligned {
        /// The array's directory (none for options not yet bound to a path).
        path: Option<PathBuf>,
        /// The ROI in world units.
        roi: Roi,
        /// The voxel size.
        voxel_size: Coordinate,
        /// The world position of voxel 0.
        offset: Coordinate,
    },
    /// A read (with [`ReadOutside::Error`](crate::ReadOutside::Error)) or a
    /// write touches world positions outside the array.
    #[error("roi {roi} is outside array {array_roi} at {path}")]
    OutsideArray {
        /// The array's directory.
        path: PathBuf,
        /// The requested ROI in world units.
        roi: Roi,
        /// The array's extent in world units.
        array_roi: Roi,
    },
    /// A write ROI does not start and end on the chunk grid.
    #[error(
        "write roi {roi} of array at {path} is not aligned to the chunk grid \
         (chunks of {chunk_roi_shape} world units starting at {offset}, array {array_roi}): \
         make the task's write_roi shape a multiple of the chunk shape starting on the grid, \
         or opt in with write_unaligned / allow_unaligned_writes (partial chunks are then \
         read-modify-written, and two blocks writing one chunk at once race)"
    )]
    UnalignedWrite {
        /// The array's directory.
        path: PathBuf,
        /// The write ROI in world units.
        roi: Roi,
        /// The chunk shape in world units.
        chunk_roi_shape: Coordinate,
        /// The world position of the chunk grid's origin (the array offset).
        offset: Coordinate,
        /// The array's extent in world units.
        array_roi: Roi,
    },
    /// The data handed to a write has another shape than the ROI in voxels.
    #[error("data of shape {found:?} does not fit write roi {roi} ({expected:?} voxels) of {path}")]
    DataShapeMismatch {
        /// The array's directory.
        path: PathBuf,
        /// The write ROI in world units.
        roi: Roi,
        /// The ROI's shape in voxels.
        expected: Vec<usize>,
        /// The data's shape.
        found: Vec<usize>,
    },
    /// An existing array does not match the options of `open_or_create`.
    #[error("existing array at {path} has {field} {existing}, requested {requested}")]
    Incompatible {
        /// The array's directory.
        path: PathBuf,
        /// Which property differs.
        field: &'static str,
        /// The stored value.
        existing: String,
        /// The requested value.
        requested: String,
    },
    /// Reading chunks failed (I/O or decoding).
    #[error("reading roi {roi} of array at {path}")]
    Read {
        /// The array's directory.
        path: PathBuf,
        /// The ROI in world units.
        roi: Roi,
        /// What zarrs reported.
        #[source]
        source: zarrs::array::ArrayError,
    },
    /// Writing chunks failed (I/O or encoding).
    #[error("writing roi {roi} of array at {path}")]
    Write {
        /// The array's directory.
        path: PathBuf,
        /// The ROI in world units.
        roi: Roi,
        /// What zarrs reported.
        #[source]
        source: zarrs::array::ArrayError,
    },
}
