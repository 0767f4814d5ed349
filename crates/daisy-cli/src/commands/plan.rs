//! `daisy plan`: what a pipeline will do, before anything runs.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use daisy_core::plan::Plan;
use daisy_core::{Pipeline, ProcessSpec, simulate_with_progress};
use serde::Serialize;

use crate::input::load_pipeline;
use crate::rss::peak_rss_bytes;

const AFTER_HELP: &str = "\
Examples:
  daisy plan pipeline.toml
      task     blocks  grid          levels  root blocks  fit    conflict  workers  upstream
      smooth   4096    16x16x16      8       512          valid  yes       8        -

  daisy plan pipeline.toml --json            {\"tasks\": [{\"id\", \"num_blocks\", \"num_levels\"}]}
  daisy plan pipeline.toml --json --blocks   ...plus every block in Daisy's order, with its
                                             id, level, read/write ROI and upstream blocks
  daisy plan pipeline.toml --simulate        drive the real scheduler through every block with
                                             instant successes: proves every block is reachable
                                             and measures scheduling speed and memory

Root blocks are the blocks ready at the start (level 0 of tasks without upstream tasks).
Block ids are Daisy's: the same pipeline gives the same ids in Daisy and daisy-rs.";

/// Show the blocks a pipeline will process, or simulate scheduling them.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct PlanArgs {
    /// The pipeline file (TOML, one [[task]] table per task).
    file: PathBuf,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// With --json: list every block (id, level, ROIs, upstream). Meant for
    /// small pipelines: the output grows with the block count.
    #[arg(long, requires = "json")]
    blocks: bool,
    /// Dry run: schedule every block with instant successes (respecting
    /// dependencies and max_workers) and report blocks, seconds, blocks/s and
    /// peak memory.
    #[arg(long, conflicts_with = "blocks")]
    simulate: bool,
}

#[derive(Serialize)]
struct SimulationReport {
    blocks: u64,
    seconds: f64,
    blocks_per_s: f64,
    peak_rss_bytes: Option<u64>,
}

#[derive(Serialize)]
struct JsonOutput {
    #[serde(flatten)]
    plan: Plan,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulated: Option<SimulationReport>,
}

/// Runs `daisy plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let pipeline = load_pipeline(&args.file)?;
    let pipeline_dir = args.file.parent().unwrap_or(Path::new("."));
    for warning in missing_programs(&pipeline, pipeline_dir) {
        // Not eprintln!: a closed stderr (`2>&1 | head`) must not panic.
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    let simulated = args.simulate.then(|| simulate(&pipeline, !args.json)).transpose()?;
    match write_plan(&args, &pipeline, simulated) {
        // `daisy plan --json --blocks | head`: the reader has all it wants. Exit
        // quietly, as Unix tools do on a closed pipe.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(err) => Err(anyhow::Error::new(err).context("writing the plan")),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn write_plan(
    args: &PlanArgs,
    pipeline: &Pipeline,
    simulated: Option<SimulationReport>,
) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    if args.json {
        let output = JsonOutput { plan: Plan::new(pipeline, args.blocks), simulated };
        serde_json::to_writer(&mut stdout, &output)?;
        writeln!(stdout)?;
    } else {
        write_table(&mut stdout, pipeline)?;
        if let Some(report) = simulated {
            writeln!(
                stdout,
                "\nsimulated {} blocks in {:.3} s: {:.0} blocks/s, peak RSS {}",
                report.blocks,
                report.seconds,
                report.blocks_per_s,
                report
                    .peak_rss_bytes
                    .map_or("unknown".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
            )?;
        }
    }
    stdout.flush()
}

/// Interpreters whose first argument that is not a flag is the script they run.
const INTERPRETERS: &[&str] =
    &["python", "python3", "sh", "bash", "zsh", "Rscript", "julia", "perl", "ruby", "node"];

/// A warning for every `worker`, `command` or `check` program (or an
/// interpreter's script) that does not exist where `daisy run` would start
/// it: a relative path against the pipeline file's directory, a bare name on
/// `PATH`. Only a warning: a `daisy-worker` on another machine may have what
/// this one lacks.
fn missing_programs(pipeline: &Pipeline, pipeline_dir: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    for task in pipeline.tasks() {
        let spec = &task.spec;
        let process = match &spec.process {
            Some(ProcessSpec::Worker(argv)) => Some(("worker", argv)),
            Some(ProcessSpec::Command(argv)) => Some(("command", argv)),
            None => None,
        };
        for (key, argv) in
            process.into_iter().chain(spec.check.as_ref().map(|argv| ("check", argv)))
        {
            let Some(program) = argv.first() else { continue };
            let where_ = |path: &str| {
                if path.contains('/') {
                    format!("{}", pipeline_dir.join(path).display())
                } else {
                    "on PATH".to_owned()
                }
            };
            if !program_exists(program, pipeline_dir) {
                warnings.push(format!(
                    "task '{}': {key} program `{program}` not found ({}); create it or fix                      `{key} = [..]` in the pipeline file",
                    spec.id,
                    where_(program)
                ));
                continue;
            }
            let interpreter = Path::new(program).file_name().and_then(|name| name.to_str());
            if !interpreter.is_some_and(|name| INTERPRETERS.contains(&name)) {
                continue;
            }
            if let Some(script) = argv[1..].iter().find(|arg| !arg.starts_with('-'))
                && Path::new(script).extension().is_some()
                && !is_file(&pipeline_dir.join(script))
            {
                warnings.push(format!(
                    "task '{}': {key} script `{script}` not found ({}); {key} processes start                      in the pipeline file's directory, so create it there or fix `{key} = [..]`",
                    spec.id,
                    pipeline_dir.join(script).display()
                ));
            }
        }
    }
    warnings
}

/// Whether `program` names a file: a path with a slash relative to `dir`, a
/// bare name in a directory of `PATH` (as `execvp` looks it up).
fn program_exists(program: &str, dir: &Path) -> bool {
    if program.contains('/') {
        return is_file(&dir.join(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|entry| is_file(&entry.join(program))))
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file())
}

fn simulate(
    pipeline: &std::sync::Arc<Pipeline>,
    show_progress: bool,
) -> anyhow::Result<SimulationReport> {
    let total = pipeline.num_blocks();
    let bar = (show_progress && std::io::stderr().is_terminal() && total >= 1 << 20).then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "simulating {bar:40} {pos}/{len} blocks ({per_sec}, eta {eta})",
            )
            .expect("the progress template is valid"),
        );
        bar
    });
    let started = Instant::now();
    let simulation = simulate_with_progress(pipeline.clone(), |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    })
    .map_err(|err| crate::input::BadInput(format!("simulation: {err}")))?;
    let seconds = started.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(SimulationReport {
        blocks: simulation.blocks,
        seconds,
        blocks_per_s: simulation.blocks as f64 / seconds,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

fn write_table(out: &mut impl Write, pipeline: &Pipeline) -> std::io::Result<()> {
    let header = [
        "task",
        "blocks",
        "grid",
        "levels",
        "root blocks",
        "fit",
        "conflict",
        "workers",
        "upstream",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for &task_index in pipeline.topological_order() {
        let task = pipeline.task(task_index);
        let grid = &task.grid;
        let root_blocks = if task.upstream.is_empty() { grid.level_size(0) } else { 0 };
        let upstream = if task.upstream.is_empty() {
            "-".to_owned()
        } else {
            task.upstream
                .iter()
                .map(|&up| pipeline.task(up).spec.id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let grid_shape =
            grid.grid_shape().as_slice().iter().map(i64::to_string).collect::<Vec<_>>().join("x");
        rows.push([
            task.spec.id.to_string(),
            grid.num_blocks().to_string(),
            grid_shape,
            grid.num_levels().to_string(),
            root_blocks.to_string(),
            grid.fit().to_string(),
            if grid.read_write_conflict() { "yes" } else { "no" }.to_owned(),
            task.spec.max_workers.to_string(),
            upstream,
        ]);
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    let count =
        |n: u64, noun: &str| if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") };
    writeln!(
        out,
        "\n{} in {}; every block waits for its conflicting neighbours of the previous level and for the upstream blocks it reads",
        count(pipeline.num_blocks(), "block"),
        count(pipeline.len() as u64, "task"),
    )?;
    Ok(())
}
