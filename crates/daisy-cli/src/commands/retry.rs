//! `daisy retry`: re-drive the failed and orphaned blocks of a finished run on NATS.
//!
//! Records [`Event::RetryRequested`] in the run's event stream and marks the KV status not
//! finished. Nothing runs until a scheduler is started again: its replay ignores the failures
//! recorded before the request (those blocks count as never attempted, with fresh retries),
//! while every block that succeeded stays done.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use daisy_proto::Event;
use daisy_proto::subjects::{EventScope, MsgId};

use crate::input::BadInput;
use crate::operator::{RunState, ServerArgs, now_unix_ms, runtime};

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy retry cells --nats nats://host:4222
      then start a scheduler (and workers) for the run again:
  daisy-scheduler --nats nats://host:4222 pipeline.toml --run-id cells
  daisy-worker --nats nats://host:4222 --run cells

  daisy retry pipeline
      a local run, after `daisy run pipeline.toml` ended; then `daisy run pipeline.toml`
      (which alone also re-runs failed blocks: resuming gives them fresh retries)

Only the failed blocks and the blocks they orphaned run again; blocks that succeeded do not.

",
    exit_codes_help!(),
    "
For daisy retry: 0 retry recorded; 2 the run is not finished, has no failed or orphaned
blocks, or is unknown."
);

/// Re-drive the failed and orphaned blocks of a finished run.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RetryArgs {
    /// The run.
    run: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Runs `daisy retry`.
pub fn run(args: RetryArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let session = args.server.connect("daisy retry").await?;
        let streams = session.open(Some(&args.run)).await?;
        let state = RunState::read(&streams).await?;
        let run = state.run.clone();
        let Some(mut status) = state.status.clone() else {
            return Err(BadInput(format!("run '{run}' has not started: nothing to retry")).into());
        };
        if !status.finished {
            let why = if status.cancelled {
                format!("it was cancelled; resume it with:\n{}", session.resume_hint(&run))
            } else if let Some(leader) = &state.leader {
                format!("{leader} leads it; retry once it finished")
            } else {
                format!("it stopped before finishing; continue it with:\n{}", session.resume_hint(&run))
            };
            return Err(BadInput(format!("run '{run}' is not finished: {why}")).into());
        }
        let (failed, orphaned) = state.failed_and_orphaned();
        if failed + orphaned == 0 {
            return Err(BadInput(format!(
                "run '{run}' has no failed or orphaned blocks: nothing to retry"
            ))
            .into());
        }
        let event = Event::RetryRequested { unix_ms: now_unix_ms() };
        session
            .nats
            .publish_event(&run, EventScope::Run, &event, &MsgId::for_event(&run, &event), None)
            .await
            .with_context(|| format!("recording the retry request of run '{run}'"))?;
        status.finished = false;
        status.succeeded = false;
        status.updated_unix_ms = now_unix_ms();
        streams
            .put_status(&status)
            .await
            .with_context(|| format!("marking run '{run}' as not finished"))?;
        println!(
            "retry recorded for run {run}: {failed} failed and {orphaned} orphaned blocks run again \
             when a scheduler is started for it:\n{}",
            session.resume_hint(&run)
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
