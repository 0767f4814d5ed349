//! The `daisy`, `daisy-scheduler` and `daisy-worker` binaries: clap
//! commands, telemetry set-up, progress and summaries.
//!
//! `daisy`: plan and run blockwise pipelines over huge nD volumes.
//!
//! Exit codes: 0 when every block succeeded or was skipped, 1 when blocks
//! failed (or the run could not finish), 2 for bad input (a pipeline file
//! that does not parse or validate, bad arguments).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

const AFTER_HELP: &str = "\
Examples:
  daisy plan pipeline.toml                 how many blocks, levels and root blocks per task
  daisy plan pipeline.toml --json --blocks every block: id, level, ROIs, upstream blocks
  daisy plan pipeline.toml --simulate      dry run of the real scheduler with instant blocks
  daisy run pipeline.toml                  process every block: progress, summary, resume
  daisy run pipeline.toml --json           ...with the final report as JSON on stdout
  daisy status [RUN] --watch               a run's progress, leader and workers, from another shell
  daisy runs                               the runs on the NATS server (--delete RUN deletes one)
  daisy retry RUN                          re-drive the failed and orphaned blocks of a finished run
  daisy cancel RUN                         stop a running run; a new scheduler resumes it

status, runs, retry and cancel talk to --nats URL (default: $NATS_URL, then the embedded server
of ./.daisy, which `daisy run` starts).

Exit codes: 0 all blocks done, 1 some blocks failed (or the run was interrupted), 2 bad input.
The pipeline file format is described in the README (\"The pipeline file\").";

/// Plan and run blockwise pipelines over huge nD volumes (a Rust Daisy).
#[derive(Debug, Parser)]
#[command(name = "daisy", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log lines on stderr: -v info, -vv debug (beats RUST_LOG).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    Plan(commands::plan::PlanArgs),
    Run(commands::run::RunArgs),
    Status(commands::status::StatusArgs),
    Runs(commands::runs::RunsArgs),
    Retry(commands::retry::RetryArgs),
    Cancel(commands::cancel::CancelArgs),
}

/// The `daisy` binary.
pub fn daisy_main() -> ExitCode {
    let cli = Cli::parse();
    let logs = telemetry::init(cli.verbose);
    let result = match cli.command {
        Command::Plan(args) => commands::plan::run(args),
        Command::Run(args) => commands::run::run(args, logs),
        Command::Status(args) => commands::status::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Retry(args) => commands::retry::run(args),
        Command::Cancel(args) => commands::cancel::run(args),
    };
    exit_code(result)
}

/// Prints an error and maps it to the documented exit code.
pub(crate) fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
