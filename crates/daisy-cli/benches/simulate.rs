//! Scheduling benchmark: `daisy plan --simulate` on the pipelines,
//! each run in a fresh process (so peak RSS is the run's own), several
//! times, reporting the median.
//!
//! `cargo bench -p daisy-cli` (or `just bench`). Set `DAISY_BENCH_RUNS` to
//! change the number of runs (default 5; the 100 M-block case runs 3 times)
//! and `DAISY_BENCH_SKIP_100M=1` to skip the largest case.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

struct Case {
    file: &'static str,
    what: &'static str,
    daisy: &'static str,
    target: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "1d-1m-no-conflict.toml",
        what: "1-D, 1 M blocks, no conflict",
        daisy: "300 k blocks/s (Daisy 2.0, serial)",
        target: ">= 3 M blocks/s",
    },
    Case {
        file: "3d-1m-conflict.toml",
        what: "3-D, 100^3 blocks of 64^3 + 8 halo, conflict",
        daisy: "46 k blocks/s, 155 MB (Daisy 2.0)",
        target: ">= 2 M blocks/s, <= 50 MB",
    },
    Case {
        file: "3d-100m-conflict.toml",
        what: "3-D, 464^3 = 99.9 M blocks, conflict",
        daisy: "~15 GB (Daisy, estimated)",
        target: "< 1 GB peak RSS",
    },
];

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let runs: usize =
        std::env::var("DAISY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let skip_largest = std::env::var_os("DAISY_BENCH_SKIP_100M").is_some();
    let pipelines = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pipelines");
    println!("daisy plan --simulate, median of runs (each run a fresh process)\n");
    println!(
        "{:<46} {:>12} {:>14} {:>12}  {:<28} Daisy",
        "case", "blocks", "blocks/s", "peak RSS", "target"
    );
    for case in CASES {
        let largest = case.file.starts_with("3d-100m");
        if largest && skip_largest {
            continue;
        }
        let case_runs = if largest { runs.min(3) } else { runs };
        let mut rates = Vec::new();
        let mut rss = Vec::new();
        let mut blocks = 0;
        for _ in 0..case_runs {
            let output = Command::new(env!("CARGO_BIN_EXE_daisy"))
                .args(["plan", "--simulate", "--json"])
                .arg(pipelines.join(case.file))
                .output()
                .expect("daisy runs");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let json: Value = serde_json::from_slice(&output.stdout).expect("json output");
            let simulated = &json["simulated"];
            blocks = simulated["blocks"].as_u64().unwrap_or(0);
            rates.push(simulated["blocks_per_s"].as_f64().unwrap_or(0.0));
            rss.push(simulated["peak_rss_bytes"].as_f64().unwrap_or(0.0));
        }
        println!(
            "{:<46} {:>12} {:>12.2} M {:>9.1} MB  {:<28} {}",
            case.what,
            blocks,
            median(&mut rates) / 1e6,
            median(&mut rss) / 1e6,
            case.target,
            case.daisy,
        );
    }
}
