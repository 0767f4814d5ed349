//! `daisy trace RUN TASK BLOCK`: the trace id of a block, and where to open it.
//!
//! The id is derived from (run, task, block id) (`daisy_telemetry::block_trace_id`), the
//! same that the scheduler and the workers put on the block's spans, so this needs no
//! server: it works for a run that is long over, on any machine.

use std::process::ExitCode;

use clap::Args;
use daisy_proto::RunId;

use crate::input::BadInput;

const AFTER_HELP: &str = "\
Examples:
  daisy trace cells segment 1234567
      prints the trace id of block 1234567 of task 'segment' in run 'cells'
  daisy trace cells segment 1234567 --jaeger http://localhost:16686
      ...and the link that opens its trace in Jaeger (also from $DAISY_JAEGER_URL)

The block id is Daisy's block id, as in logs, `daisy plan --blocks` and the summary. The trace
holds every attempt of the block: each dispatch, each worker's queue wait, check and process,
retries, redeliveries and failovers, when the run exported traces (--otlp).";

/// Print the trace id of a block (and its Jaeger link).
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct TraceArgs {
    /// The run.
    run: String,
    /// The task id.
    task: String,
    /// Daisy's block id.
    block: u64,
    /// Jaeger's UI, to print the link to the trace.
    #[arg(long, value_name = "URL", env = "DAISY_JAEGER_URL")]
    jaeger: Option<String>,
}

/// Runs `daisy trace`.
pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let run = RunId::new(args.run.as_str()).ok_or_else(|| {
        BadInput(format!(
            "run '{}' is not a run id: run ids are 1 to 64 of [A-Za-z0-9_-]",
            args.run
        ))
    })?;
    if args.task.is_empty() {
        return Err(BadInput("the task id is empty: name the block's task".to_owned()).into());
    }
    let trace = daisy_telemetry::block_trace_id(run.as_str(), &args.task, args.block);
    println!("{trace}");
    if let Some(jaeger) = &args.jaeger {
        println!("{}/trace/{trace}", jaeger.trim_end_matches('/'));
    }
    Ok(ExitCode::SUCCESS)
}
