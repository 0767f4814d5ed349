//! The seed's quickstart, in Rust: square 4,096,000 int64 values blockwise,
//! then sum the squares with a map-reduce that starts while squaring is
//! still running.
//!
//! ```text
//!  input.zarr ──square (250 blocks, 2 workers)──► squares.zarr
//!                                                    │  each sum block waits only for the
//!                                                    ▼  square blocks under it
//!              sum (16 blocks, 2 workers) ──► partial_sums.zarr (16 values)
//!                                                    │
//!              reduce (in main, after the run) ◄─────┘  checked against (n-1)n(2n-1)/6
//! ```
//!
//! Both tasks go to ONE `run_blockwise` call with `square` upstream of `sum`,
//! so the scheduler releases a sum block as soon as the square blocks its
//! read ROI covers are written (block-level pipelining; the seed ran the two
//! steps as two runs and reduced through a shared-memory array).
//!
//! The partial sums live in a zarr array of 16 voxels whose voxel size is
//! one sum block (256,000 world units): a sum block's write ROI is exactly
//! one voxel and one chunk of it, so the blocks write it without any lock.
//!
//! The serial baseline runs the same two block functions in a plain loop
//! over the same blocks, with the same zarr I/O (read input chunk, write
//! squares chunk; read squares, write one partial sum; read the partial sums)
//! into arrays of its own. Creating and filling the input array is timed by
//! neither.
//!
//! Exit status: 0 when every block succeeded and the sum matches the closed
//! form, 1 otherwise (and for I/O errors), 2 for bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use daisy::{Block, Coordinate, Roi, RunReport, Task};
use daisy_array::ndarray::ArrayD;
use daisy_array::{Array, ArrayOptions};

/// The seed's quickstart: square n int64 values blockwise, then sum the
/// squares blockwise (pipelined behind squaring) and check the result.
#[derive(Debug, Parser)]
#[command(name = "quickstart")]
struct Cli {
    /// How many values (0..n) to square and sum.
    #[arg(long, default_value_t = 4_096_000)]
    n: i64,
    /// How many blocks the square task has (n must be a multiple).
    #[arg(long, default_value_t = 250)]
    blocks: i64,
    /// How many blocks the sum task has (n must be a multiple).
    #[arg(long, default_value_t = 16)]
    sum_blocks: i64,
    /// Worker threads per task.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Where to put the zarr arrays (kept after the run); a temporary
    /// directory, removed at exit, if not given.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The sizes of one run, checked.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n: i64,
    square_block: i64,
    sum_block: i64,
    workers: u32,
}

impl TryFrom<&Cli> for Layout {
    type Error = anyhow::Error;

    fn try_from(cli: &Cli) -> anyhow::Result<Self> {
        ensure!(cli.n > 0, "--n must be positive (got {})", cli.n);
        ensure!(cli.blocks > 0 && cli.sum_blocks > 0, "--blocks and --sum-blocks must be positive");
        ensure!(cli.workers > 0, "--workers must be positive");
        for (flag, blocks) in [("--blocks", cli.blocks), ("--sum-blocks", cli.sum_blocks)] {
            ensure!(
                cli.n % blocks == 0,
                "--n {} is not a multiple of {flag} {blocks}: choose a block count that divides n",
                cli.n
            );
        }
        // Every value is squared in i64: (n-1)^2 must fit.
        ensure!(
            (cli.n - 1).checked_mul(cli.n - 1).is_some(),
            "--n {} is too large: (n-1)^2 does not fit in an int64",
            cli.n
        );
        Ok(Self {
            n: cli.n,
            square_block: cli.n / cli.blocks,
            sum_block: cli.n / cli.sum_blocks,
            workers: cli.workers,
        })
    }
}

impl Layout {
    fn total_roi(&self) -> Roi {
        roi(0, self.n)
    }
}

fn roi(begin: i64, len: i64) -> Roi {
    Roi::new(Coordinate::from([begin]), Coordinate::from([len]))
}

/// The arrays of one pass (blockwise or serial).
#[derive(Clone)]
struct Arrays {
    input: Array<i64>,
    squares: Array<i64>,
    partial_sums: Array<i64>,
}

impl Arrays {
    /// Creates the output arrays of one pass in `dir`, reading `input`.
    fn create(dir: &Path, layout: Layout, input: &Array<i64>) -> anyhow::Result<Self> {
        // One squares chunk per square block, so square blocks write whole chunks.
        let squares = Array::create(
            dir.join("squares.zarr"),
            ArrayOptions::new([layout.n].into(), [layout.square_block].into(), 0i64),
        )?;
        // One voxel (and chunk) per sum block: the voxel size is a sum block's
        // length, so a sum block's write ROI (in the same world units as the
        // input) addresses exactly its own partial sum.
        let partial_sums = Array::create(
            dir.join("partial_sums.zarr"),
            ArrayOptions::new([layout.n / layout.sum_block].into(), [1].into(), 0i64)
                .voxel_size([layout.sum_block].into()),
        )?;
        Ok(Self { input: input.clone(), squares, partial_sums })
    }

    /// The map: squares the values of one block.
    fn square_block(&self, block_roi: &Roi) -> anyhow::Result<()> {
        let values = self.input.read(block_roi)?;
        let mut squares = values;
        for value in &mut squares {
            *value = value.checked_mul(*value).context("a square overflows int64")?;
        }
        self.squares.write(block_roi, &squares)?;
        Ok(())
    }

    /// The reduce of one sum block: sums the squares under it into one value.
    ///
    /// Why an int64 holds a partial sum: with the default sizes a sum block
    /// covers 256,000 values; its largest squares are those of the last block,
    /// below 4,096,000^2 ≈ 1.68e13 each, so its sum stays below
    /// 256,000 × 1.68e13 ≈ 4.3e12 × 1e6 = 4.3e18 < i64::MAX ≈ 9.22e18 (exactly
    /// Σ i² for i in 3,840,000..4,096,000 ≈ 4.03e18). The sum is taken in
    /// i128 and converted with a check, so other sizes fail the block with a
    /// clear error instead of wrapping. The total (≈ 2.29e19) does NOT fit in
    /// an int64 (nor a u64): the final reduce uses i128.
    fn sum_block(&self, read_roi: &Roi, write_roi: &Roi) -> anyhow::Result<()> {
        let squares = self.squares.read(read_roi)?;
        let sum: i128 = squares.iter().map(|&square| i128::from(square)).sum();
        let partial = i64::try_from(sum).with_context(|| {
            format!("the partial sum of {read_roi} does not fit in an int64: use more --sum-blocks")
        })?;
        self.partial_sums.write(write_roi, &ArrayD::from_elem(vec![1], partial))?;
        Ok(())
    }

    /// The final reduce: the sum of the partial sums.
    fn total(&self, layout: Layout) -> anyhow::Result<i128> {
        let partial_sums = self.partial_sums.read(&layout.total_roi())?;
        Ok(partial_sums.iter().map(|&partial| i128::from(partial)).sum())
    }
}

/// Σ_{i<n} i² = (n-1)n(2n-1)/6, in i128: for n = 4,096,000 it is ≈ 2.29e19,
/// more than i64::MAX (≈ 9.22e18) and u64::MAX (≈ 1.84e19).
fn closed_form(n: i64) -> i128 {
    let n = i128::from(n);
    (n - 1) * n * (2 * n - 1) / 6
}

/// When the pipelining happened, in nanoseconds since the run started.
struct Timeline {
    start: Instant,
    first_sum_start: AtomicU64,
    last_square_end: AtomicU64,
}

impl Timeline {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            first_sum_start: AtomicU64::new(u64::MAX),
            last_square_end: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The blockwise pass: both tasks in one run, `square` upstream of `sum`.
fn run_blockwise(
    arrays: &Arrays,
    layout: Layout,
    timeline: &Arc<Timeline>,
) -> anyhow::Result<RunReport> {
    let square = Task::builder("square")
        .total_roi(layout.total_roi())
        .read_roi(roi(0, layout.square_block))
        .write_roi(roi(0, layout.square_block))
        .read_write_conflict(false)
        .max_workers(layout.workers)
        .process({
            let arrays = arrays.clone();
            let timeline = Arc::clone(timeline);
            move |block: &Block| {
                arrays.square_block(&block.write_roi)?;
                timeline.last_square_end.fetch_max(timeline.now(), Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .build()?;
    let sum = Task::builder("sum")
        .total_roi(layout.total_roi())
        .read_roi(roi(0, layout.sum_block))
        .write_roi(roi(0, layout.sum_block))
        .read_write_conflict(false)
        .max_workers(layout.workers)
        .upstream(&square)
        .process({
            let arrays = arrays.clone();
            let timeline = Arc::clone(timeline);
            move |block: &Block| {
                timeline.first_sum_start.fetch_min(timeline.now(), Ordering::Relaxed);
                arrays.sum_block(&block.read_roi, &block.write_roi)
            }
        })
        .build()?;
    // Passing only `sum` runs `square` too: upstream tasks come along.
    Ok(daisy::run_blockwise([sum])?)
}

/// The serial baseline: the same block functions in a plain loop.
fn run_serial(arrays: &Arrays, layout: Layout) -> anyhow::Result<i128> {
    for begin in (0..layout.n).step_by(usize::try_from(layout.square_block)?) {
        arrays.square_block(&roi(begin, layout.square_block))?;
    }
    for begin in (0..layout.n).step_by(usize::try_from(layout.sum_block)?) {
        let block_roi = roi(begin, layout.sum_block);
        arrays.sum_block(&block_roi, &block_roi)?;
    }
    arrays.total(layout)
}

/// `1234567` → `"1,234,567"`.
fn grouped(value: impl ToString) -> String {
    let digits = value.to_string();
    let (sign, digits) = digits.split_at(usize::from(digits.starts_with('-')));
    let mut out = String::from(sign);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn seconds(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let layout = match Layout::try_from(&cli) {
        Ok(layout) => layout,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match quickstart(&cli, layout) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs both passes and prints what happened; `Ok(false)` if a block failed
/// or a check did not hold.
fn quickstart(cli: &Cli, layout: Layout) -> anyhow::Result<bool> {
    let temp_dir;
    let dir = match &cli.dir {
        Some(dir) => dir.clone(),
        None => {
            temp_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp_dir.path().to_path_buf()
        }
    };
    let n = layout.n;
    let (square_blocks, sum_blocks) = (n / layout.square_block, n / layout.sum_block);
    println!(
        "quickstart: square {} int64 values (0..n) blockwise, then sum the squares (map-reduce)",
        grouped(n)
    );
    println!(
        "  square: {} blocks of {} values, {} workers; sum: {} blocks of {} values, {} workers, square upstream",
        square_blocks,
        grouped(layout.square_block),
        layout.workers,
        sum_blocks,
        grouped(layout.sum_block),
        layout.workers
    );
    println!("  zarr arrays in {}", dir.display());

    // The input, written once and timed by neither pass.
    let input = Array::create(
        dir.join("input.zarr"),
        ArrayOptions::new([n].into(), [layout.square_block].into(), 0i64),
    )
    .with_context(|| format!("cannot create the input array in {}", dir.display()))?;
    input.write(
        &layout.total_roi(),
        &ArrayD::from_shape_fn(vec![usize::try_from(n)?], |i| i[0] as i64),
    )?;

    let blockwise_dir = dir.join("blockwise");
    let serial_dir = dir.join("serial");
    for pass_dir in [&blockwise_dir, &serial_dir] {
        std::fs::create_dir_all(pass_dir)
            .with_context(|| format!("cannot create {}", pass_dir.display()))?;
    }

    // Blockwise first, so it, not the baseline, pays for any first-use cost.
    let blockwise = Arrays::create(&blockwise_dir, layout, &input)?;
    let timeline = Arc::new(Timeline::new());
    let started = Instant::now();
    let report = run_blockwise(&blockwise, layout, &timeline)?;
    let blockwise_total =
        if report.all_succeeded() { Some(blockwise.total(layout)?) } else { None };
    let blockwise_time = started.elapsed();

    let serial = Arrays::create(&serial_dir, layout, &input)?;
    let started = Instant::now();
    let serial_total = run_serial(&serial, layout)?;
    let serial_time = started.elapsed();

    println!("serial    (same block functions in a loop, same zarr I/O): {}", seconds(serial_time));
    println!(
        "blockwise (run_blockwise, square and sum pipelined):       {}  ({:.1}x)",
        seconds(blockwise_time),
        serial_time.as_secs_f64() / blockwise_time.as_secs_f64()
    );
    let first_sum = timeline.first_sum_start.load(Ordering::Relaxed);
    let last_square = timeline.last_square_end.load(Ordering::Relaxed);
    if first_sum != u64::MAX {
        println!(
            "  pipelining: the first sum block started at {:.1} ms, the last square block ended at {:.1} ms",
            first_sum as f64 / 1e6,
            last_square as f64 / 1e6
        );
    }

    println!("task    blocks  completed  failed  orphaned");
    for task in &report.tasks {
        let counters = &task.counters;
        println!(
            "{:<7} {:<7} {:<10} {:<7} {}",
            task.id, counters.total, counters.completed, counters.failed, counters.orphaned
        );
        if let Some(first_error) = &task.first_error {
            println!("  first error: {first_error:?}");
        }
    }

    let expected = closed_form(n);
    let Some(blockwise_total) = blockwise_total else {
        println!("FAILED: some blocks did not succeed");
        return Ok(false);
    };
    println!("sum of squares = {}", grouped(blockwise_total));
    if blockwise_total != expected || serial_total != expected {
        println!(
            "FAILED: expected (n-1)n(2n-1)/6 = {}, blockwise gave {}, serial gave {}",
            grouped(expected),
            grouped(blockwise_total),
            grouped(serial_total)
        );
        return Ok(false);
    }
    println!("check: ok, equals (n-1)n(2n-1)/6 (blockwise and serial)");
    Ok(true)
}
