//! World ↔ voxel mapping, reopening, and reads that leave the array.

use daisy_array::{Array, ArrayError, ArrayOptions, Compression, DAISY_ATTRIBUTE, ReadOutside};
use daisy_core::Coordinate;
use ndarray::{ArrayD, IxDyn};

use crate::roi1;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn voxel_size_4_offset_8_maps_world_rois() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = ArrayOptions::new(Coordinate::from([20]), Coordinate::from([5]), -1i32)
        .voxel_size(Coordinate::from([4]))
        .offset(Coordinate::from([8]));
    let array = Array::create(dir.path().join("a.zarr"), options)?;
    assert_eq!(array.roi(), roi1(8, 80));
    assert_eq!(array.chunk_roi_shape(), Coordinate::from([20]));

    // World [28, 48) = voxels [5, 10) = chunk 1.
    let data = ArrayD::from_shape_vec(IxDyn(&[5]), vec![50, 60, 70, 80, 90])?;
    array.write(&roi1(28, 20), &data)?;
    let read = array.read(&roi1(24, 12))?; // voxels [4, 7)
    assert_eq!(read.as_slice(), Some(&[-1, 50, 60][..]));
    // World [8, 88) is the whole array: voxel 5 is the first written one.
    assert_eq!(array.read(&array.roi())?[5], 50);

    let misaligned = array.read(&roi1(30, 4));
    assert!(matches!(misaligned, Err(ArrayError::NotVoxelAligned { .. })));
    let bad_shape = array.read(&roi1(28, 6));
    assert!(matches!(bad_shape, Err(ArrayError::NotVoxelAligned { .. })));
    Ok(())
}

#[test]
fn reopening_keeps_voxel_size_offset_and_fill_value() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("a.zarr");
    let options = ArrayOptions::new(Coordinate::from([6, 8]), Coordinate::from([3, 4]), 7u8)
        .voxel_size(Coordinate::from([10, 2]))
        .offset(Coordinate::from([-30, 4]))
        .compression(Compression::Gzip { level: 1 });
    let created = Array::create(&path, options.clone())?;
    created.write(
        &created.roi(),
        &ArrayD::from_shape_fn(IxDyn(&[6, 8]), |i| (i[0] * 8 + i[1]) as u8),
    )?;

    let opened = Array::<u8>::open(&path)?;
    assert_eq!(opened.voxel_size(), Coordinate::from([10, 2]));
    assert_eq!(opened.offset(), Coordinate::from([-30, 4]));
    assert_eq!(opened.shape(), Coordinate::from([6, 8]));
    assert_eq!(opened.chunk_shape(), Coordinate::from([3, 4]));
    assert_eq!(opened.fill_value(), 7);
    assert_eq!(opened.read(&opened.roi())?, created.read(&created.roi())?);

    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("zarr.json"))?)?;
    let daisy = &metadata["attributes"][DAISY_ATTRIBUTE];
    assert_eq!(daisy["voxel_size"], serde_json::json!([10, 2]));
    assert_eq!(daisy["offset"], serde_json::json!([-30, 4]));

    // Resuming: open_or_create reopens a matching array, refuses another.
    assert!(Array::open_or_create(&path, options.clone()).is_ok());
    let other = options.voxel_size(Coordinate::from([5, 2]));
    let refused = Array::open_or_create(&path, other);
    assert!(matches!(refused, Err(ArrayError::Incompatible { field: "voxel_size", .. })));
    assert!(matches!(
        Array::<u8>::create(&path, ArrayOptions::new([6, 8].into(), [3, 4].into(), 0)),
        Err(ArrayError::AlreadyExists { .. })
    ));
    assert!(matches!(Array::<f32>::open(&path), Err(ArrayError::DataTypeMismatch { .. })));
    Ok(())
}

#[test]
fn read_outside_fills_or_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = ArrayOptions::new(Coordinate::from([10]), Coordinate::from([5]), 0.5f64)
        .offset(Coordinate::from([100]));
    let array = Array::create(dir.path().join("a.zarr"), options)?;
    array.write(&array.roi(), &ArrayD::from_elem(IxDyn(&[10]), 2.0))?;

    let overhang = roi1(97, 6); // 3 outside, 3 inside
    assert!(matches!(array.read(&overhang), Err(ArrayError::OutsideArray { .. })));
    let filled = array.read_with(&overhang, ReadOutside::Fill)?;
    assert_eq!(filled.as_slice(), Some(&[0.5, 0.5, 0.5, 2.0, 2.0, 2.0][..]));

    // Policy on the handle; entirely outside on both sides.
    let filling = array.clone().with_read_outside(ReadOutside::Fill);
    assert_eq!(filling.read(&roi1(0, 2))?.as_slice(), Some(&[0.5, 0.5][..]));
    let both_sides = filling.read(&roi1(99, 12))?;
    assert_eq!(both_sides[0], 0.5);
    assert_eq!(both_sides[1], 2.0);
    assert_eq!(both_sides[11], 0.5);
    // Option at create time.
    let created_filling = Array::create(
        dir.path().join("b.zarr"),
        ArrayOptions::new(Coordinate::from([4]), Coordinate::from([4]), 1u64)
            .read_outside(ReadOutside::Fill),
    )?;
    assert_eq!(created_filling.read(&roi1(2, 4))?.as_slice(), Some(&[1, 1, 1, 1][..]));
    Ok(())
}

#[test]
fn multidimensional_fill_places_the_inside_part() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = ArrayOptions::new(Coordinate::from([4, 4, 4]), Coordinate::from([2, 2, 2]), 0i64)
        .read_outside(ReadOutside::Fill);
    let array = Array::create(dir.path().join("a.zarr"), options)?;
    let values =
        ArrayD::from_shape_fn(IxDyn(&[4, 4, 4]), |i| (i[0] * 16 + i[1] * 4 + i[2]) as i64 + 1);
    array.write(&array.roi(), &values)?;
    let grown = array.read(&array.roi().grow([1, 1, 1].into(), [1, 1, 1].into()))?;
    assert_eq!(grown.shape(), &[6, 6, 6]);
    assert_eq!(grown[[0, 0, 0]], 0);
    assert_eq!(grown[[1, 1, 1]], 1);
    assert_eq!(grown[[4, 4, 4]], 64);
    assert_eq!(grown[[5, 5, 5]], 0);
    assert_eq!(grown.iter().filter(|&&v| v != 0).count(), 64);
    Ok(())
}

#[test]
fn empty_arrays_open_and_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("empty.zarr");
    let options = ArrayOptions::new(Coordinate::from([0, 4]), Coordinate::from([2, 2]), 3i16);
    Array::create(&path, options)?;
    let opened = Array::<i16>::open(&path)?;
    assert_eq!(opened.chunk_shape(), Coordinate::from([2, 2]));
    assert!(opened.roi().is_empty());
    assert_eq!(opened.read(&opened.roi())?.shape(), &[0, 4]);
    Ok(())
}
