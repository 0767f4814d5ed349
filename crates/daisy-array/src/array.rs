//! Reads and writes world-unit ROIs of one zarr v3 array on the file system.
//!
//! An [`Array`] owns a shared handle to one zarr array (one directory with a
//! `zarr.json` and one file per chunk) plus the array's geometry. It does not
//! own the blocks that write it: keeping concurrent writers on disjoint
//! chunks is the scheduler's job (chunk-aligned write ROIs that tile the
//! volume), and this module only refuses writes that would break that.
//!
//! Invariants, checked when an array is created or opened: the voxel size and
//! the chunk shape are positive, the shape is non-negative, the offset is a
//! multiple of the voxel size, and all of them have the array's number of
//! dimensions.
//!
//! Why whole chunks by default: a chunk is the unit of I/O, so a write that
//! covers a chunk only partly must read it, patch it and write it back. Two
//! blocks doing that to one chunk at the same time lose one of the writes,
//! silently. Refusing unaligned writes turns that race into an error at the
//! first block; `write_unaligned` is the explicit way out for the cases where
//! the caller knows no other block touches the chunk. A chunk lock was
//! rejected: it would only cover threads of one process, not the several
//! worker processes that write one array.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use daisy_core::{Coordinate, MAX_DIMS, Roi};
use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn, Slice};
use serde_json::{Map, Value};
use zarrs::array::codec::GzipCodec;
use zarrs::array::{ArrayBuilder, ArraySubset, BytesToBytesCodecTraits};

use crate::geometry::Geometry;
use crate::store::DirectoryStore;
use crate::{ArrayError, ArrayOptions, Compression, Element, ReadOutside};

/// The attribute under which the geometry is stored.
pub const DAISY_ATTRIBUTE: &str = "daisy";
/// The key (under [`DAISY_ATTRIBUTE`], and at the top level for funlib) of
/// the voxel size, a list of integers in world units per voxel.
pub const VOXEL_SIZE_KEY: &str = "voxel_size";
/// The key (under [`DAISY_ATTRIBUTE`], and at the top level for funlib) of
/// the offset, a list of integers: the world position of voxel 0.
pub const OFFSET_KEY: &str = "offset";

/// A zarr v3 array of `T` addressed by ROIs in world units.
///
/// Cloning is cheap (one `Arc`), and clones share the open array: hand one to
/// every worker thread. Reads and writes take `&self` and no lock of this
/// crate; threads writing disjoint chunks proceed in parallel.
pub struct Array<T: Element> {
    shared: Arc<Shared<T>>,
    /// This handle's policy for reads leaving the array.
    read_outside: ReadOutside,
    /// Whether this handle's `write` accepts ROIs off the chunk grid.
    allow_unaligned_writes: bool,
}

/// The part of an array that all clones share.
struct Shared<T> {
    path: PathBuf,
    zarr: zarrs::array::Array<DirectoryStore>,
    geometry: Geometry,
    fill_value: T,
}

impl<T: Element> Clone for Array<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            read_outside: self.read_outside,
            allow_unaligned_writes: self.allow_unaligned_writes,
        }
    }
}

impl<T: Element> std::fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("path", &self.shared.path)
            .field("data_type", &self.shared.zarr.data_type().to_string())
            .field("roi", &self.roi())
            .field("voxel_size", &self.voxel_size())
            .field("chunk_shape", &self.chunk_shape())
            .field("read_outside", &self.read_outside)
            .field("allow_unaligned_writes", &self.allow_unaligned_writes)
            .finish()
    }
}

impl<T: Element> Array<T> {
    /// Creates a new array at the directory `path` and writes its metadata.
    ///
    /// # Errors
    /// [`ArrayError::AlreadyExists`] if `path/zarr.json` exists (use
    /// [`Array::open_or_create`] to resume), the geometry errors
    /// ([`ArrayError::DimsMismatch`], [`ArrayError::InvalidGeometry`],
    /// [`ArrayError::OffsetNotVoxelAligned`]), or a store error.
    pub fn create(path: impl AsRef<Path>, options: ArrayOptions<T>) -> Result<Self, ArrayError> {
        let path = path.as_ref().to_path_buf();
        if metadata_exists(&path)? {
            return Err(ArrayError::AlreadyExists { path });
        }
        Self::create_unchecked(path, options)
    }

    /// Opens the array at `path` if there is one, after checking that it
    /// matches `options` (data type, shape, chunk shape, voxel size,
    /// offset); creates it otherwise. This is Daisy's `prepare_ds`: a rerun
    /// of a pipeline reopens the half-written output instead of failing.
    ///
    /// # Errors
    /// [`ArrayError::Incompatible`] naming the first property that differs,
    /// or any error of [`Array::create`] and [`Array::open`].
    pub fn open_or_create(
        path: impl AsRef<Path>,
        options: ArrayOptions<T>,
    ) -> Result<Self, ArrayError> {
        let path = path.as_ref().to_path_buf();
        if !metadata_exists(&path)? {
            return Self::create_unchecked(path, options);
        }
        let array = Self::open(&path)?
            .with_read_outside(options.read_outside)
            .with_unaligned_writes(options.allow_unaligned_writes);
        let existing = array.shared.geometry;
        let checks = [
            ("shape", existing.shape, options.shape),
            ("chunk_shape", existing.chunk_shape, options.chunk_shape),
            ("voxel_size", existing.voxel_size, options.voxel_size),
            ("offset", existing.offset, options.offset),
        ];
        for (field, existing, requested) in checks {
            if existing != requested {
                return Err(ArrayError::Incompatible {
                    path,
                    field,
                    existing: existing.to_string(),
                    requested: requested.to_string(),
                });
            }
        }
        Ok(array)
    }

    /// Opens the existing array at the directory `path`, with the default
    /// handle policies ([`ReadOutside::Error`], aligned writes only).
    ///
    /// The voxel size and offset come from the `daisy` attribute, else from
    /// the top-level `voxel_size`/`offset` attributes (funlib.persistence),
    /// else they default to ones and zeros.
    ///
    /// # Errors
    /// [`ArrayError::Zarr`] if there is no readable zarr v3 array,
    /// [`ArrayError::DataTypeMismatch`] if it does not hold `T`,
    /// [`ArrayError::Attributes`] for malformed geometry attributes, and the
    /// geometry errors of [`Array::create`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ArrayError> {
        let path = path.as_ref().to_path_buf();
        let store = DirectoryStore::new(&path);
        let zarr = zarrs::array::Array::open(Arc::new(store), "/")
            .map_err(|source| ArrayError::Zarr { path: path.clone(), source })?;
        let expected = T::zarr_data_type();
        let data_type_mismatch = |path: PathBuf| ArrayError::DataTypeMismatch {
            path,
            expected: expected.to_string(),
            found: zarr.data_type().to_string(),
        };
        if *zarr.data_type() != expected {
            return Err(data_type_mismatch(path));
        }
        let Some(fill_value) = T::from_fill_value(zarr.fill_value()) else {
            return Err(data_type_mismatch(path));
        };

        let dims = zarr.dimensionality();
        let shape = coordinate_from_u64(&path, "shape", zarr.shape())?;
        let chunk_shape = regular_chunk_shape(&path, zarr.metadata())?;
        let chunk_shape = coordinate_from_u64(&path, "chunk_shape", &chunk_shape)?;
        let (voxel_size, offset) = geometry_attributes(&path, zarr.attributes(), dims)?;
        let geometry = Geometry { voxel_size, offset, shape, chunk_shape };
        validate_geometry(&path, &geometry)?;
        Ok(Self::from_parts(path, zarr, geometry, fill_value))
    }

    /// Returns this handle with another policy for reads leaving the array.
    pub fn with_read_outside(mut self, read_outside: ReadOutside) -> Self {
        self.read_outside = read_outside;
        self
    }

    /// Returns this handle with `write` accepting (or refusing) ROIs that are
    /// not chunk-aligned; see [`Array::write_unaligned`] for the risk.
    pub fn with_unaligned_writes(mut self, allow: bool) -> Self {
        self.allow_unaligned_writes = allow;
        self
    }

    /// The array's directory.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The number of dimensions.
    pub fn dims(&self) -> usize {
        self.shared.geometry.shape.dims()
    }

    /// The array's extent in world units: `offset` to `offset + shape * voxel_size`.
    pub fn roi(&self) -> Roi {
        self.shared.geometry.roi()
    }

    /// World units per voxel.
    pub fn voxel_size(&self) -> Coordinate {
        self.shared.geometry.voxel_size
    }

    /// The world position of voxel 0 (and of the chunk grid's origin).
    pub fn offset(&self) -> Coordinate {
        self.shared.geometry.offset
    }

    /// The array's shape in voxels.
    pub fn shape(&self) -> Coordinate {
        self.shared.geometry.shape
    }

    /// The chunk shape in voxels.
    pub fn chunk_shape(&self) -> Coordinate {
        self.shared.geometry.chunk_shape
    }

    /// The chunk shape in world units: the natural write ROI shape of a task.
    pub fn chunk_roi_shape(&self) -> Coordinate {
        self.shared.geometry.chunk_roi_shape()
    }

    /// The value of never-written voxels.
    pub fn fill_value(&self) -> T {
        self.shared.fill_value
    }

    /// Reads the world ROI `roi`, with this handle's [`ReadOutside`] policy.
    ///
    /// The result has one element per voxel, axes in array order (C order).
    /// Voxels never written hold the fill value.
    ///
    /// # Errors
    /// See [`Array::read_with`].
    pub fn read(&self, roi: &Roi) -> Result<ArrayD<T>, ArrayError> {
        self.read_with(roi, self.read_outside)
    }

    /// Reads the world ROI `roi`, with the policy `outside` for the part of
    /// it outside the array.
    ///
    /// # Errors
    /// [`ArrayError::DimsMismatch`], [`ArrayError::NotVoxelAligned`] if the
    /// ROI does not fall on voxel boundaries, [`ArrayError::OutsideArray`]
    /// if it leaves the array and `outside` is [`ReadOutside::Error`], and
    /// [`ArrayError::Read`] if a chunk cannot be read or decoded.
    pub fn read_with(&self, roi: &Roi, outside: ReadOutside) -> Result<ArrayD<T>, ArrayError> {
        let voxels = self.voxels_of(roi, "read roi")?;
        let out_shape = usize_shape(&voxels);
        if voxels.is_empty() {
            return Ok(ArrayD::from_elem(IxDyn(&out_shape), self.shared.fill_value));
        }
        let inside = voxels.intersect(&self.shared.geometry.voxel_roi());
        if inside == voxels {
            return self.retrieve(roi, &voxels);
        }
        if outside == ReadOutside::Error {
            return Err(self.outside_error(roi));
        }
        let mut out = ArrayD::from_elem(IxDyn(&out_shape), self.shared.fill_value);
        if !inside.is_empty() {
            let part = self.retrieve(roi, &inside)?;
            let begin = inside.begin() - voxels.begin();
            let end = begin + inside.shape();
            out.slice_each_axis_mut(|axis| {
                let axis = axis.axis.index();
                Slice::from(begin[axis] as isize..end[axis] as isize)
            })
            .assign(&part);
        }
        Ok(out)
    }

    /// Writes `data` to the world ROI `roi`, which must be chunk-aligned
    /// unless this handle allows unaligned writes.
    ///
    /// Chunk-aligned means: in voxels, the ROI begins on the chunk grid and
    /// ends on it or at the array's end, on every axis. Then every chunk is
    /// written whole, without reading it, and blocks writing disjoint
    /// chunk-aligned ROIs never interfere. A chunk whose every value equals
    /// the fill value is not stored (its file is removed).
    ///
    /// # Errors
    /// [`ArrayError::DimsMismatch`], [`ArrayError::NotVoxelAligned`],
    /// [`ArrayError::OutsideArray`] if the ROI leaves the array,
    /// [`ArrayError::DataShapeMismatch`] if `data` is not the ROI's shape in
    /// voxels, [`ArrayError::UnalignedWrite`], and [`ArrayError::Write`] if a
    /// chunk cannot be encoded or stored.
    pub fn write<S, D>(&self, roi: &Roi, data: &ArrayBase<S, D>) -> Result<(), ArrayError>
    where
        S: Data<Elem = T>,
        D: Dimension,
    {
        self.write_impl(roi, data, self.allow_unaligned_writes)
    }

    /// Writes `data` to the world ROI `roi`, which need not be chunk-aligned.
    ///
    /// Chunks covered partly are read, patched and written back. Two writers
    /// patching one chunk at the same time (threads or processes) race: one
    /// write may be lost. Use this only where no other block writes the same
    /// chunks concurrently, e.g. tasks with `read_write_conflict` whose write
    /// ROIs are at least one chunk apart, or a single writer.
    ///
    /// # Errors
    /// As [`Array::write`], without [`ArrayError::UnalignedWrite`].
    pub fn write_unaligned<S, D>(&self, roi: &Roi, data: &ArrayBase<S, D>) -> Result<(), ArrayError>
    where
        S: Data<Elem = T>,
        D: Dimension,
    {
        self.write_impl(roi, data, true)
    }

    fn write_impl<S, D>(
        &self,
        roi: &Roi,
        data: &ArrayBase<S, D>,
        allow_unaligned: bool,
    ) -> Result<(), ArrayError>
    where
        S: Data<Elem = T>,
        D: Dimension,
    {
        let voxels = self.voxels_of(roi, "write roi")?;
        let expected = usize_shape(&voxels);
        if data.shape() != expected.as_slice() {
            return Err(ArrayError::DataShapeMismatch {
                path: self.shared.path.clone(),
                roi: *roi,
                expected,
                found: data.shape().to_vec(),
            });
        }
        if voxels.is_empty() {
            return Ok(());
        }
        let geometry = &self.shared.geometry;
        if !geometry.voxel_roi().contains(&voxels) {
            return Err(self.outside_error(roi));
        }
        if !allow_unaligned && !geometry.is_chunk_aligned(&voxels) {
            return Err(ArrayError::UnalignedWrite {
                path: self.shared.path.clone(),
                roi: *roi,
                chunk_roi_shape: geometry.chunk_roi_shape(),
                offset: geometry.offset,
                array_roi: geometry.roi(),
            });
        }
        let contiguous = data.as_standard_layout();
        let values = contiguous.as_slice().expect("an array in standard layout is contiguous");
        self.shared.zarr.store_array_subset(&subset(&voxels), values).map_err(|source| {
            ArrayError::Write { path: self.shared.path.clone(), roi: *roi, source }
        })
    }

    fn create_unchecked(path: PathBuf, options: ArrayOptions<T>) -> Result<Self, ArrayError> {
        let geometry = Geometry {
            voxel_size: options.voxel_size,
            offset: options.offset,
            shape: options.shape,
            chunk_shape: options.chunk_shape,
        };
        validate_geometry(&path, &geometry)?;
        std::fs::create_dir_all(&path)
            .map_err(|source| ArrayError::Io { path: path.clone(), source })?;
        let store = DirectoryStore::new(&path);
        let mut builder = ArrayBuilder::new(
            u64_values(&geometry.shape),
            u64_values(&geometry.chunk_shape),
            T::zarr_data_type(),
            options.fill_value.to_fill_value(),
        );
        if let Compression::Gzip { level } = options.compression {
            let codec = GzipCodec::new(level).map_err(|_| ArrayError::InvalidCompression {
                path: path.clone(),
                compression: options.compression,
            })?;
            let codecs: Vec<Arc<dyn BytesToBytesCodecTraits>> = vec![Arc::new(codec)];
            builder.bytes_to_bytes_codecs(codecs);
        }
        builder.attributes(geometry_attributes_json(&geometry));
        let zarr = builder
            .build(Arc::new(store), "/")
            .map_err(|source| ArrayError::Zarr { path: path.clone(), source })?;
        zarr.store_metadata()
            .map_err(|source| ArrayError::Metadata { path: path.clone(), source })?;
        let array = Self::from_parts(path, zarr, geometry, options.fill_value);
        Ok(array
            .with_read_outside(options.read_outside)
            .with_unaligned_writes(options.allow_unaligned_writes))
    }

    fn from_parts(
        path: PathBuf,
        zarr: zarrs::array::Array<DirectoryStore>,
        geometry: Geometry,
        fill_value: T,
    ) -> Self {
        Self {
            shared: Arc::new(Shared { path, zarr, geometry, fill_value }),
            read_outside: ReadOutside::Error,
            allow_unaligned_writes: false,
        }
    }

    /// Checks dimensionality and voxel alignment; returns the voxel ROI.
    fn voxels_of(&self, roi: &Roi, what: &str) -> Result<Roi, ArrayError> {
        let geometry = &self.shared.geometry;
        if roi.dims() != self.dims() {
            return Err(ArrayError::DimsMismatch {
                path: self.shared.path.clone(),
                what: format!("{what} {roi}"),
                expected: self.dims(),
                found: roi.dims(),
            });
        }
        geometry.voxels_of(roi).ok_or_else(|| ArrayError::NotVoxelAligned {
            path: Some(self.shared.path.clone()),
            roi: *roi,
            voxel_size: geometry.voxel_size,
            offset: geometry.offset,
        })
    }

    /// Reads voxels known to lie inside the array.
    fn retrieve(&self, roi: &Roi, voxels: &Roi) -> Result<ArrayD<T>, ArrayError> {
        debug_assert!(self.shared.geometry.voxel_roi().contains(voxels));
        let values: Vec<T> =
            self.shared.zarr.retrieve_array_subset(&subset(voxels)).map_err(|source| {
                ArrayError::Read { path: self.shared.path.clone(), roi: *roi, source }
            })?;
        Ok(ArrayD::from_shape_vec(IxDyn(&usize_shape(voxels)), values)
            .expect("zarrs returns one value per voxel of the requested subset"))
    }

    fn outside_error(&self, roi: &Roi) -> ArrayError {
        ArrayError::OutsideArray {
            path: self.shared.path.clone(),
            roi: *roi,
            array_roi: self.roi(),
        }
    }
}

/// Whether `path/zarr.json` exists (an I/O error other than "not found" is
/// an error, not a "no").
fn metadata_exists(path: &Path) -> Result<bool, ArrayError> {
    match std::fs::metadata(path.join("zarr.json")) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ArrayError::Io { path: path.to_path_buf(), source }),
    }
}

fn validate_geometry(path: &Path, geometry: &Geometry) -> Result<(), ArrayError> {
    let dims = geometry.shape.dims();
    let named = [
        ("chunk_shape", geometry.chunk_shape),
        ("voxel_size", geometry.voxel_size),
        ("offset", geometry.offset),
    ];
    for (what, value) in named {
        if value.dims() != dims {
            return Err(ArrayError::DimsMismatch {
                path: path.to_path_buf(),
                what: what.to_string(),
                expected: dims,
                found: value.dims(),
            });
        }
    }
    let invalid = |what, value, requirement| ArrayError::InvalidGeometry {
        path: path.to_path_buf(),
        what,
        value,
        requirement,
    };
    if geometry.shape.as_slice().iter().any(|&s| s < 0) {
        return Err(invalid("shape", geometry.shape, "non-negative"));
    }
    if geometry.chunk_shape.as_slice().iter().any(|&c| c <= 0) {
        return Err(invalid("chunk_shape", geometry.chunk_shape, "positive"));
    }
    if geometry.voxel_size.as_slice().iter().any(|&v| v <= 0) {
        return Err(invalid("voxel_size", geometry.voxel_size, "positive"));
    }
    if !geometry.offset.is_multiple_of(&geometry.voxel_size) {
        return Err(ArrayError::OffsetNotVoxelAligned {
            path: path.to_path_buf(),
            offset: geometry.offset,
            voxel_size: geometry.voxel_size,
        });
    }
    Ok(())
}

/// The attributes written at creation: `{"daisy": {"voxel_size": [..],
/// "offset": [..]}, "voxel_size": [..], "offset": [..]}`.
fn geometry_attributes_json(geometry: &Geometry) -> Map<String, Value> {
    let mut daisy = Map::new();
    daisy.insert(VOXEL_SIZE_KEY.into(), geometry.voxel_size.to_vec().into());
    daisy.insert(OFFSET_KEY.into(), geometry.offset.to_vec().into());
    let mut attributes = daisy.clone();
    attributes.insert(DAISY_ATTRIBUTE.into(), Value::Object(daisy));
    attributes
}

/// Reads voxel size and offset from the attributes: `daisy.*` first, then
/// the top-level funlib keys, then ones and zeros.
fn geometry_attributes(
    path: &Path,
    attributes: &Map<String, Value>,
    dims: usize,
) -> Result<(Coordinate, Coordinate), ArrayError> {
    let daisy = attributes.get(DAISY_ATTRIBUTE).and_then(Value::as_object);
    let lookup = |key: &'static str, daisy_key: &'static str| -> Result<_, ArrayError> {
        let (name, value) = match daisy.and_then(|d| d.get(key)) {
            Some(value) => (daisy_key, value),
            None => match attributes.get(key) {
                Some(value) => (key, value),
                None => return Ok(None),
            },
        };
        serde_json::from_value::<Coordinate>(value.clone()).map(Some).map_err(|source| {
            ArrayError::Attributes { path: path.to_path_buf(), key: name, source }
        })
    };
    let voxel_size = lookup(VOXEL_SIZE_KEY, "daisy.voxel_size")?
        .unwrap_or_else(|| Coordinate::filled(dims.min(MAX_DIMS), 1));
    let offset = lookup(OFFSET_KEY, "daisy.offset")?
        .unwrap_or_else(|| Coordinate::zeros(dims.min(MAX_DIMS)));
    Ok((voxel_size, offset))
}

/// The chunk shape of a regular chunk grid (zarr v3 `chunk_grid`, or zarr v2
/// `chunks`), read from the metadata rather than from the grid so that arrays
/// with an empty axis (no chunk at all) open too.
fn regular_chunk_shape(
    path: &Path,
    metadata: &zarrs::array::ArrayMetadata,
) -> Result<Vec<u64>, ArrayError> {
    let unsupported = |name: &str| ArrayError::UnsupportedChunkGrid {
        path: path.to_path_buf(),
        name: name.to_string(),
    };
    let metadata = serde_json::to_value(metadata).map_err(|_| unsupported("unknown"))?;
    let chunk_shape = match metadata.pointer("/chunk_grid/name").and_then(Value::as_str) {
        Some("regular") => metadata.pointer("/chunk_grid/configuration/chunk_shape"),
        Some(name) => return Err(unsupported(name)),
        None => metadata.get("chunks"),
    };
    chunk_shape
        .and_then(Value::as_array)
        .and_then(|values| values.iter().map(Value::as_u64).collect())
        .ok_or_else(|| unsupported("unknown"))
}

fn coordinate_from_u64(path: &Path, what: &str, values: &[u64]) -> Result<Coordinate, ArrayError> {
    let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    Coordinate::new(&values).map_err(|too_many| ArrayError::DimsMismatch {
        path: path.to_path_buf(),
        what: what.to_string(),
        expected: MAX_DIMS,
        found: too_many.dims,
    })
}

fn u64_values(coordinate: &Coordinate) -> Vec<u64> {
    coordinate.as_slice().iter().map(|&v| v.max(0) as u64).collect()
}

fn usize_shape(voxels: &Roi) -> Vec<usize> {
    voxels.shape().as_slice().iter().map(|&s| s.max(0) as usize).collect()
}

/// The zarr subset of a voxel ROI inside the array (non-negative begin).
fn subset(voxels: &Roi) -> ArraySubset {
    ArraySubset::new_with_start_shape(u64_values(&voxels.begin()), u64_values(&voxels.shape()))
        .expect("begin and shape of one roi have the same dimensionality")
}
