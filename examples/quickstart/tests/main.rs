//! Runs the real `quickstart` binary and checks what it prints and writes.
//!
//! Each test gets its own temporary directory for the zarr arrays (`--dir`),
//! so the outputs can be opened and checked after the run.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use daisy::{Coordinate, Roi};
use daisy_array::Array;

fn quickstart(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("the quickstart binary was built by cargo for this test")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_succeeded(output: &Output) -> String {
    let stdout = stdout_of(output);
    assert!(
        output.status.success(),
        "quickstart failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn roi(begin: i64, len: i64) -> Roi {
    Roi::new(Coordinate::from([begin]), Coordinate::from([len]))
}

/// Σ_{i<n} i², summed the slow way.
fn sum_of_squares(n: i64) -> i128 {
    (0..i128::from(n)).map(|i| i * i).sum()
}

#[test]
fn small_run_checks_its_result_and_writes_every_square_and_partial_sum() {
    let dir = tempfile::tempdir().unwrap();
    let output = quickstart(&["--n", "65536", "--blocks", "16", "--sum-blocks", "4"], dir.path());
    let stdout = assert_succeeded(&output);

    assert!(stdout.contains("check: ok"), "{stdout}");
    // 65536 values: Σ i² = 93,822,844,764,160.
    assert_eq!(sum_of_squares(65536), 93_822_844_764_160);
    assert!(stdout.contains("sum of squares = 93,822,844,764,160"), "{stdout}");
    assert!(stdout.contains("square  16      16         0       0"), "{stdout}");
    assert!(stdout.contains("sum     4       4          0       0"), "{stdout}");
    assert!(stdout.contains("serial") && stdout.contains("blockwise"), "{stdout}");

    let squares = Array::<i64>::open(dir.path().join("blockwise/squares.zarr")).unwrap();
    let values = squares.read(&roi(0, 65536)).unwrap();
    assert!(values.iter().enumerate().all(|(i, &square)| square == (i as i64) * (i as i64)));

    let partial_sums = Array::<i64>::open(dir.path().join("blockwise/partial_sums.zarr")).unwrap();
    // One voxel per sum block, addressed in the input's world units.
    assert_eq!(partial_sums.voxel_size(), Coordinate::from([16384]));
    let partials = partial_sums.read(&roi(0, 65536)).unwrap();
    let expected: Vec<i64> =
        (0..4).map(|k| (k * 16384..(k + 1) * 16384).map(|i: i64| i * i).sum()).collect();
    assert_eq!(partials.iter().copied().collect::<Vec<_>>(), expected);
}

#[test]
fn full_size_run_checks_its_result() {
    // The README's command 1 with its defaults (4,096,000 values, 250 and 16
    // blocks). A debug build of this package still takes well under 5 s:
    // its dependencies are optimised even in dev builds (workspace profile).
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = quickstart(&[], dir.path());
    let stdout = assert_succeeded(&output);
    assert!(stdout.contains("sum of squares = 22,906,483,856,726,016,000"), "{stdout}");
    assert!(stdout.contains("check: ok"), "{stdout}");
    assert!(stdout.contains("square  250     250        0       0"), "{stdout}");
    assert!(stdout.contains("sum     16      16         0       0"), "{stdout}");
    eprintln!("full-size quickstart took {:?}", started.elapsed());
}

#[test]
fn default_partial_sums_fit_in_i64_but_the_total_needs_i128() {
    // The arithmetic the example relies on (see `sum_block` in main.rs).
    let closed_form = |n: i128| (n - 1) * n * (2 * n - 1) / 6;
    let total = closed_form(4_096_000);
    assert_eq!(total, 22_906_483_856_726_016_000);
    assert!(total > i128::from(u64::MAX));
    let largest_partial = total - closed_form(4_096_000 - 256_000);
    assert!(largest_partial < i128::from(i64::MAX));
}

#[test]
fn sizes_that_do_not_divide_n_are_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = quickstart(&["--n", "1000", "--blocks", "3"], dir.path());
    assert_eq!(output.status.code(), Some(2), "{}", stdout_of(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a multiple of --blocks 3"), "{stderr}");
}
