//! End-to-end in-process throughput: no-op Rust closures, 100,000 blocks,
//! 2 workers (Daisy 2.0 measured here: 8.9 k blocks/s multiprocess; target
//! >= 200 k blocks/s). Median of several runs.
//!
//! `cargo bench -p daisy --bench in_process` (`DAISY_BENCH_RUNS`, default 5).

use std::time::Instant;

use daisy::{Roi, Task, run_blockwise};

fn main() {
    let runs: usize =
        std::env::var("DAISY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let blocks = 100_000;
    let mut rates = Vec::new();
    for _ in 0..runs {
        let task = Task::builder("noop")
            .total_roi(Roi::new([0].into(), [blocks].into()))
            .read_roi(Roi::new([0].into(), [1].into()))
            .write_roi(Roi::new([0].into(), [1].into()))
            .read_write_conflict(false)
            .max_workers(2)
            .process(|_| Ok::<(), std::convert::Infallible>(()))
            .build()
            .expect("a valid task");
        let started = Instant::now();
        let report = run_blockwise([task]).expect("the run finishes");
        let seconds = started.elapsed().as_secs_f64();
        assert!(report.all_succeeded());
        rates.push(blocks as f64 / seconds);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "in-process, no-op closures, {blocks} blocks, 2 workers: median {:.0} blocks/s over {runs} runs (min {:.0}, max {:.0}); Daisy 2.0 here: 8.9 k blocks/s; target >= 200 k blocks/s",
        median,
        rates[0],
        rates[rates.len() - 1]
    );
}
