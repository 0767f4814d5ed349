//! Stores nD volumes as zarr v3 arrays that blocks read and write by ROI in
//! world units.
//!
//! A block function gets its `read_roi` and `write_roi` in world units (the
//! units of the task's `total_roi`); an [`Array`] maps them onto voxels with
//! its voxel size and offset, and onto zarr chunks, one file each, through
//! the `zarrs` crate. Many threads and processes write one array at once as
//! long as their write ROIs cover disjoint chunks.
//!
//! **Owns:** the on-disk layout of one array (its `zarr.json` and chunk
//! files) and the world ↔ voxel ↔ chunk mapping. **Does not own:** which
//! block writes which ROI (the scheduler in `daisy-scheduler`/`daisy`), nor
//! groups or hierarchies of arrays (one directory is one array).
//!
//! **Layout.** The array is the root of a zarr v3 file-system store at the
//! given directory: `zarr.json` plus chunks under `c/<i>/<j>/…`. Its
//! attributes hold the geometry, so another process opens it with the same
//! mapping:
//!
//! ```json
//! "attributes": {
//!   "daisy": { "voxel_size": [4, 4, 4], "offset": [8, 0, 0] },
//!   "voxel_size": [4, 4, 4],
//!   "offset": [8, 0, 0]
//! }
//! ```
//!
//! `daisy.voxel_size` is world units per voxel; `daisy.offset` is the world
//! position of voxel 0. The top-level copies are the keys funlib.persistence
//! reads, so Python's `open_ds` sees the same geometry; on open, `daisy` wins,
//! then the top-level keys, then voxel size 1 and offset 0 (a plain zarr
//! array written by any tool opens with its voxel indices as world units).
//!
//! **Invariants** (checked at create and open): voxel size and chunk shape
//! are positive, the shape is non-negative, the offset is a multiple of the
//! voxel size. Every read and write ROI must fall on voxel boundaries; writes
//! must also fall on chunk boundaries (or end at the array's end) unless the
//! caller opts in with [`Array::write_unaligned`] or
//! [`ArrayOptions::allow_unaligned_writes`].
//!
//! **Concurrency.** Threads share one [`Array`] (clone it: an `Arc`);
//! processes each open the directory. Writers of disjoint chunks never
//! touch the same file, so they need no lock. Each chunk file is replaced
//! atomically (written to a temporary file, then renamed), so a reader sees
//! a chunk before or after a write, never half of it. Two blocks writing
//! parts of one chunk at once still race (each reads, patches and writes the
//! whole chunk, and one patch is lost): the chunk-alignment check of
//! [`Array::write`] exists to make that impossible by default. Writes are not
//! `fsync`ed (as in zarr-python): a killed process loses nothing it wrote, a
//! power loss may lose recent chunks.
//!
//! **Why** zarr v3 through `zarrs` with the raw `bytes` codec by default:
//! the format is what the Python side (zarr-python, funlib, Daisy) reads and
//! writes, and uncompressed chunks keep the per-block cost at a file write.
//! Gzip is one option away ([`Compression::Gzip`]). A home-grown raw format
//! was rejected: nothing else could read it. The file-system store is our own
//! (`store.rs`) rather than zarrs' `FilesystemStore`, which rewrites chunks in
//! place and `fsync`s each one: 0.2–1.5 ms per chunk here, more than the
//! rest of a block write.
//!
//! # Example
//!
//! ```
//! use daisy_array::{Array, ArrayOptions, ReadOutside};
//! use daisy_core::{Coordinate, Roi};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! // 100 voxels of 4 world units starting at world position 8; chunks of 10 voxels.
//! let options = ArrayOptions::new(Coordinate::from([100]), Coordinate::from([10]), 0i64)
//!     .voxel_size(Coordinate::from([4]))
//!     .offset(Coordinate::from([8]));
//! let array = Array::create(dir.path().join("squares.zarr"), options)?;
//! assert_eq!(array.roi(), Roi::new(Coordinate::from([8]), Coordinate::from([400])));
//! assert_eq!(array.chunk_roi_shape(), Coordinate::from([40]));
//!
//! // A block's write ROI: one chunk, 40 world units = 10 voxels.
//! let write_roi = Roi::new(Coordinate::from([48]), Coordinate::from([40]));
//! let values = ndarray::ArrayD::from_shape_fn(vec![10], |i| (i[0] as i64).pow(2));
//! array.write(&write_roi, &values)?;
//!
//! // Another process opens the same geometry from disk.
//! let reopened = Array::<i64>::open(dir.path().join("squares.zarr"))?;
//! assert_eq!(reopened.read(&write_roi)?, values);
//!
//! // A read ROI overhanging the array start: the outside part is filled.
//! let read_roi = Roi::new(Coordinate::from([0]), Coordinate::from([16]));
//! let overhang = reopened.read_with(&read_roi, ReadOutside::Fill)?;
//! assert_eq!(overhang.as_slice(), Some(&[0i64, 0, 0, 0][..]));
//! # Ok(())
//! # }
//! ```

mod array;
mod element;
mod error;
mod geometry;
mod options;
mod store;

pub use array::{Array, DAISY_ATTRIBUTE, OFFSET_KEY, VOXEL_SIZE_KEY};
pub use element::Element;
pub use error::ArrayError;
pub use ndarray;
pub use options::{ArrayOptions, Compression, ReadOutside};
