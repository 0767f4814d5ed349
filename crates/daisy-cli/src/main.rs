//! `daisy`: plan and run blockwise pipelines over huge nD volumes.
//!
//! Exit codes: 0 when every block succeeded or was skipped, 1 when blocks
//! failed (or the run could not finish), 2 for bad input (a pipeline file
//! that does not parse or validate, bad arguments).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod input;
mod rss;

use input::BadInput;

const AFTER_HELP: &str = "\
Examples:
  daisy plan pipeline.toml                 how many blocks, levels and root blocks per task
  daisy plan pipeline.toml --json --blocks every block: id, level, ROIs, upstream blocks
  daisy plan pipeline.toml --simulate      dry run of the real scheduler with instant blocks

Exit codes: 0 all blocks done, 1 some blocks failed, 2 bad input.
The pipeline file format is described in the README (\"The pipeline file\").";

/// Plan and run blockwise pipelines over huge nD volumes (a Rust Daisy).
#[derive(Debug, Parser)]
#[command(name = "daisy", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Plan(commands::plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => commands::plan::run(args),
    };
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
