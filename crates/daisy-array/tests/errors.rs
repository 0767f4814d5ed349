//! Refused writes and their error variants.

use daisy_array::{Array, ArrayError, ArrayOptions};
use daisy_core::{Coordinate, Roi};
use ndarray::{ArrayD, IxDyn};

use crate::roi1;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn ramp(len: usize, start: i64) -> ArrayD<i64> {
    ArrayD::from_shape_fn(IxDyn(&[len]), |i| start + i[0] as i64)
}

#[test]
fn unaligned_write_is_refused_then_allowed_by_opt_in() -> TestResult {
    let dir = tempfile::tempdir()?;
    // 25 voxels of size 2 from world 10: world [10, 60), chunks of 20 world units.
    let options = ArrayOptions::new(Coordinate::from([25]), Coordinate::from([10]), 0i64)
        .voxel_size(Coordinate::from([2]))
        .offset(Coordinate::from([10]));
    let array = Array::create(dir.path().join("a.zarr"), options.clone())?;

    let unaligned = roi1(20, 20); // voxels [5, 15): half of chunks 0 and 1
    let refused = array.write(&unaligned, &ramp(10, 5));
    match refused {
        Err(ArrayError::UnalignedWrite { roi, chunk_roi_shape, offset, array_roi, .. }) => {
            assert_eq!(roi, unaligned);
            assert_eq!(chunk_roi_shape, Coordinate::from([20]));
            assert_eq!(offset, Coordinate::from([10]));
            assert_eq!(array_roi, roi1(10, 50));
        }
        other => panic!("expected UnalignedWrite, got {other:?}"),
    }

    // Aligned, with an end at the array's end (chunk 2 is partial).
    array.write(&roi1(50, 10), &ramp(5, 20))?;
    // Per call opt-in.
    array.write_unaligned(&unaligned, &ramp(10, 5))?;
    // Per handle opt-in.
    let relaxed = array.clone().with_unaligned_writes(true);
    relaxed.write(&roi1(10, 6), &ramp(3, 0))?;
    let all = array.read(&array.roi())?;
    let expected: Vec<i64> =
        (0..3).chain([0, 0]).chain(5..15).chain([0; 5]).chain(20..25).collect();
    assert_eq!(all.as_slice(), Some(expected.as_slice()));

    // Per create-options opt-in.
    let by_option =
        Array::open_or_create(dir.path().join("a.zarr"), options.allow_unaligned_writes(true))?;
    by_option.write(&roi1(12, 2), &ramp(1, 99))?;
    assert_eq!(array.read(&roi1(12, 2))?[0], 99);
    Ok(())
}

#[test]
fn writes_outside_the_array_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let array = Array::create(
        dir.path().join("a.zarr"),
        ArrayOptions::new(Coordinate::from([8]), Coordinate::from([4]), 0i64),
    )?;
    let past_end = array.write(&roi1(4, 8), &ramp(8, 0));
    assert!(matches!(
        past_end,
        Err(ArrayError::OutsideArray { roi, array_roi, .. })
            if roi == roi1(4, 8) && array_roi == roi1(0, 8)
    ));
    let before = array.write_unaligned(&roi1(-4, 4), &ramp(4, 0));
    assert!(matches!(before, Err(ArrayError::OutsideArray { .. })));
    Ok(())
}

#[test]
fn bad_shapes_and_dims_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let array = Array::create(
        dir.path().join("a.zarr"),
        ArrayOptions::new(Coordinate::from([8]), Coordinate::from([4]), 0i64),
    )?;
    assert!(matches!(
        array.write(&roi1(0, 4), &ramp(3, 0)),
        Err(ArrayError::DataShapeMismatch { .. })
    ));
    let two_d = Roi::new([0, 0].into(), [4, 4].into());
    assert!(matches!(array.read(&two_d), Err(ArrayError::DimsMismatch { .. })));

    let bad_offset = ArrayOptions::new(Coordinate::from([8]), Coordinate::from([4]), 0i64)
        .voxel_size(Coordinate::from([4]))
        .offset(Coordinate::from([2]));
    assert!(matches!(
        Array::create(dir.path().join("b.zarr"), bad_offset),
        Err(ArrayError::OffsetNotVoxelAligned { .. })
    ));
    let zero_chunk = ArrayOptions::new(Coordinate::from([8]), Coordinate::from([0]), 0i64);
    assert!(matches!(
        Array::create(dir.path().join("c.zarr"), zero_chunk),
        Err(ArrayError::InvalidGeometry { what: "chunk_shape", .. })
    ));
    assert!(matches!(
        ArrayOptions::from_world(roi1(0, 10), Coordinate::from([4]), Coordinate::from([8]), 0i64),
        Err(ArrayError::NotVoxelAligned { .. })
    ));
    let from_world =
        ArrayOptions::from_world(roi1(8, 40), Coordinate::from([4]), Coordinate::from([16]), 0i64)?;
    assert_eq!(from_world.shape, Coordinate::from([10]));
    assert_eq!(from_world.chunk_shape, Coordinate::from([4]));
    assert_eq!(from_world.offset, Coordinate::from([8]));
    assert!(matches!(
        Array::<i64>::open(dir.path().join("missing.zarr")),
        Err(ArrayError::Zarr { .. })
    ));
    Ok(())
}
