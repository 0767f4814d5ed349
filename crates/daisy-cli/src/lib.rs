//! The `daisy`, `daisy-scheduler` and `daisy-worker` binaries: clap
//! commands, telemetry set-up, progress and summaries.
//!
//! `daisy`: plan and run blockwise pipelines over huge nD volumes.
//!
//! Exit codes, one rule for every command of the three binaries
//! ([`EXIT_CODES`]): 0 done, 1 blocks failed (or the run could not finish),
//! 2 bad input, 3 the NATS server cannot be reached or started.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The exit-code rule of every command of the three binaries, for their
/// `--help` (a macro: `concat!` takes literals only). Scripts depend on it:
/// `tests/local.rs` checks each code.
macro_rules! exit_codes_help {
    () => {
        "Exit codes (the same rule for every daisy, daisy-scheduler and daisy-worker command):
  0  done: every block succeeded or was skipped, or the command did what it was asked
  1  blocks failed or were orphaned (daisy status: the run has such blocks), or the run
     was interrupted or could not go on
  2  bad input: pipeline file, arguments, unknown run, a run directory in use, a changed
     layout, a request that does not apply (retry of an unfinished run, ...)
  3  the NATS server cannot be reached (or the embedded one cannot be started)
  130  a second Ctrl-C quit at once"
    };
}

mod commands;
mod foreground;
mod input;
mod metrics_args;
mod nats_args;
mod operator;
mod progress;
mod rss;
mod summary;
mod telemetry;

pub use commands::replica::scheduler_main;
pub use commands::worker::worker_main;

use input::BadInput;
use nats_args::Unreachable;

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy plan pipeline.toml                 how many blocks, levels and root blocks per task
  daisy plan pipeline.toml --json --blocks every block: id, level, ROIs, upstream blocks
  daisy plan pipeline.toml --simulate      dry run of the real scheduler with instant blocks
  daisy run pipeline.toml                  process every block: progress, summary, resume
  daisy run pipeline.toml --json           ...with the final report as JSON on stdout
  daisy status [RUN] --watch               a run's progress, leader and workers, from another shell
  daisy runs                               the runs on the NATS server (--delete RUN deletes one)
  daisy retry RUN                          re-drive the failed and orphaned blocks of a finished run
  daisy cancel RUN                         stop a running run; `daisy run FILE` resumes it
  daisy trace RUN TASK BLOCK --jaeger URL  the trace id of a block, and the Jaeger link to it
  daisy run pipeline.toml --otlp http://localhost:4318   one trace per block in Jaeger

run, status, runs, retry and cancel use --nats URL, else $NATS_URL, else the embedded server of
./.daisy (--state-dir): `daisy run` starts it, and after the run ended status, runs, retry and
cancel start it on the same store for as long as they take.

",
    exit_codes_help!(),
    "
The pipeline file format is described in the README (\"The pipeline file\")."
);

/// Plan and run blockwise pipelines over huge nD volumes (a Rust Daisy).
#[derive(Debug, Parser)]
// `about` comes from the doc comment above, not from the package description: that one
// describes all three binaries, and every `--help` opened with it.
#[command(name = "daisy", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log lines on stderr: -v info, -vv debug (beats RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(flatten)]
    telemetry: telemetry::TelemetryArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    Plan(commands::plan::PlanArgs),
    Run(commands::run::RunArgs),
    Status(commands::status::StatusArgs),
    Runs(commands::runs::RunsArgs),
    Retry(commands::retry::RetryArgs),
    Cancel(commands::cancel::CancelArgs),
    Trace(commands::trace::TraceArgs),
}

/// The `daisy` binary.
pub fn daisy_main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match cli.telemetry.init("daisy", cli.verbose) {
        Ok(telemetry) => telemetry,
        Err(err) => return exit_code(Err(err.into())),
    };
    let result = match cli.command {
        Command::Plan(args) => commands::plan::run(args),
        Command::Run(args) => commands::run::run(args, telemetry.logs()),
        Command::Status(args) => commands::status::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Retry(args) => commands::retry::run(args),
        Command::Cancel(args) => commands::cancel::run(args),
        Command::Trace(args) => commands::trace::run(args),
    };
    // Flushes the spans still queued before the process ends.
    drop(telemetry);
    exit_code(result)
}

/// Exit code 1: blocks failed or were orphaned, or the run could not finish.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code 2: bad input.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;
/// Exit code 3: the NATS server cannot be reached or started.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

/// Prints an error and maps it to the documented exit code.
pub(crate) fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else if err.downcast_ref::<Unreachable>().is_some() {
                ExitCode::from(EXIT_UNREACHABLE)
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}
