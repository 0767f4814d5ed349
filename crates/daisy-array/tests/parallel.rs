//! Several writers at once, and the quickstart's shape.

use std::time::Instant;

use daisy_array::{Array, ArrayOptions};
use daisy_core::{Coordinate, Roi};
use ndarray::{ArrayD, IxDyn};

use crate::roi1;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn two_threads_write_disjoint_aligned_blocks_and_read_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let options = ArrayOptions::new(Coordinate::from([64, 48]), Coordinate::from([16, 16]), 0u16);
    let array = Array::create(dir.path().join("a.zarr"), options)?;
    let blocks: Vec<Roi> = (0..4)
        .flat_map(|i| (0..3).map(move |j| Roi::new([i * 16, j * 16].into(), [16, 16].into())))
        .collect();
    let value_at = |y: usize, x: usize| (y * 48 + x) as u16;

    std::thread::scope(|scope| {
        for worker in 0..2 {
            let array = array.clone();
            let blocks = &blocks;
            scope.spawn(move || {
                for block in blocks.iter().skip(worker).step_by(2) {
                    let (y0, x0) = (block.begin()[0] as usize, block.begin()[1] as usize);
                    let data =
                        ArrayD::from_shape_fn(IxDyn(&[16, 16]), |i| value_at(y0 + i[0], x0 + i[1]));
                    array.write(block, &data).expect("aligned block write");
                }
            });
        }
    });

    let all = Array::<u16>::open(dir.path().join("a.zarr"))?.read(&array.roi())?;
    assert_eq!(all.shape(), &[64, 48]);
    assert!(all.indexed_iter().all(|(i, &v)| v == value_at(i[0], i[1])));
    // A read across chunk borders.
    let middle = array.read(&Roi::new([10, 10].into(), [20, 20].into()))?;
    assert_eq!(middle[[0, 0]], value_at(10, 10));
    assert_eq!(middle[[19, 19]], value_at(29, 29));
    Ok(())
}

#[test]
fn array_handles_are_send_sync_and_cheap() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Array<i64>>();
    assert_send_sync::<Array<f32>>();
}

/// The quickstart: 4,096,000 int64 in 250 blocks of 16,384, squared into a
/// second array by 2 threads, then summed.
#[test]
fn quickstart_shape_250_blocks_of_16384() -> TestResult {
    const TOTAL: i64 = 4_096_000;
    const BLOCK: i64 = 16_384;
    let dir = tempfile::tempdir()?;
    let chunk = Coordinate::from([BLOCK]);
    let input = Array::create(
        dir.path().join("in.zarr"),
        ArrayOptions::new(Coordinate::from([TOTAL]), chunk, 0i64),
    )?;
    let output = Array::create(
        dir.path().join("out.zarr"),
        ArrayOptions::new(Coordinate::from([TOTAL]), chunk, 0i64),
    )?;
    let blocks: Vec<Roi> = (0..(TOTAL + BLOCK - 1) / BLOCK)
        .map(|i| roi1(i * BLOCK, BLOCK.min(TOTAL - i * BLOCK)))
        .collect();
    assert_eq!(blocks.len(), 250);

    let started = Instant::now();
    run_on_two_threads(&blocks, |block| {
        let begin = block.begin()[0];
        let values: Vec<i64> = (begin..block.end()[0]).collect();
        let data = ArrayD::from_shape_vec(IxDyn(&[values.len()]), values).expect("1-d shape");
        input.write(block, &data).expect("input block write");
    });
    let filled = started.elapsed();
    run_on_two_threads(&blocks, |block| {
        let values = input.read(block).expect("input block read");
        output.write(block, &values.mapv(|v| v * v)).expect("output block write");
    });
    let squared = started.elapsed();

    let output = Array::<i64>::open(dir.path().join("out.zarr"))?;
    let sum: i128 = blocks
        .iter()
        .map(|block| {
            let values = output.read(block).expect("output block read");
            values.iter().map(|&v| i128::from(v)).sum::<i128>()
        })
        .sum();
    let n = i128::from(TOTAL);
    assert_eq!(sum, (n - 1) * n * (2 * n - 1) / 6);
    eprintln!(
        "quickstart shape: fill {:?}, square {:?}, total with sum {:?}",
        filled,
        squared - filled,
        started.elapsed()
    );
    Ok(())
}

fn run_on_two_threads(blocks: &[Roi], process: impl Fn(&Roi) + Sync) {
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let process = &process;
            scope.spawn(move || blocks.iter().skip(worker).step_by(2).for_each(process));
        }
    });
}

/// Set for the child process of `two_processes_write_disjoint_blocks`.
const CHILD_ARRAY_ENV: &str = "DAISY_ARRAY_TEST_CHILD_ARRAY";

/// The child's half: odd blocks. Does nothing unless started by the parent.
#[test]
fn child_writes_odd_blocks() -> TestResult {
    let Some(path) = std::env::var_os(CHILD_ARRAY_ENV) else {
        return Ok(());
    };
    let array = Array::<i64>::open(path)?;
    for block in (1..16).step_by(2) {
        array.write(&roi1(block * 8, 8), &ArrayD::from_elem(IxDyn(&[8]), block))?;
    }
    Ok(())
}

#[test]
fn two_processes_write_disjoint_blocks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("a.zarr");
    let array = Array::create(&path, ArrayOptions::new([128].into(), [8].into(), -1i64))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "parallel::child_writes_odd_blocks", "--quiet"])
        .env(CHILD_ARRAY_ENV, &path)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    for block in (0..16).step_by(2) {
        array.write(&roi1(block * 8, 8), &ArrayD::from_elem(IxDyn(&[8]), block))?;
    }
    assert!(child.wait()?.success(), "the child writer failed");
    let all = array.read(&array.roi())?;
    assert!(all.iter().enumerate().all(|(i, &v)| v == i as i64 / 8));
    Ok(())
}
