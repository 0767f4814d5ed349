//! `daisy cancel`: stop a run on NATS from another shell; it stays resumable.
//!
//! Records [`Event::CancelRequested`] in the run's event stream: the leader sees it in the
//! tail it follows and stops as on Ctrl-C (no new dispatches; it exits with the interrupted
//! mark). Also marks the KV status cancelled, so that workers finish the blocks they hold,
//! record them and exit. The next scheduler started for the run resumes it.

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
  daisy cancel cells --nats nats://host:4222
      the leader stops dispatching and exits (code 1, interrupted); workers finish
      their blocks in flight and exit; nothing recorded is lost
  daisy-scheduler --nats nats://host:4222 pipeline.toml --run-id cells
      resumes the run later

  daisy cancel pipeline
      a local run (`daisy run pipeline.toml` in another shell) stops as on Ctrl-C;
      `daisy run pipeline.toml` resumes it

Scheduler replicas standing by stop with the leader. Starting a scheduler again later
resumes the run.

",
    exit_codes_help!(),
    "
For daisy cancel: 0 cancel recorded; 2 the run is finished or unknown."
);

/// Stop a running run (resumable).
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct CancelArgs {
    /// The run.
    run: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Runs `daisy cancel`.
pub fn run(args: CancelArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let session = args.server.connect("daisy cancel").await?;
        let streams = session.open(Some(&args.run)).await?;
        let state = RunState::read(&streams).await?;
        let run = state.run.clone();
        if state.finished() {
            return Err(BadInput(format!("run '{run}' is finished: nothing to cancel")).into());
        }
        let event = Event::CancelRequested { unix_ms: now_unix_ms() };
        session
            .nats
            .publish_event(&run, EventScope::Run, &event, &MsgId::for_event(&run, &event), None)
            .await
            .with_context(|| format!("recording the cancel request of run '{run}'"))?;
        let mut status = state.status.clone().unwrap_or_default();
        status.cancelled = true;
        status.updated_unix_ms = now_unix_ms();
        streams
            .put_status(&status)
            .await
            .with_context(|| format!("marking run '{run}' as cancelled"))?;
        let leader = match &state.leader {
            Some(leader) => format!("its leader {leader} stops dispatching and exits"),
            None => "no scheduler leads it now".to_owned(),
        };
        let workers = match state.workers {
            1 => "1 live worker finishes its blocks".to_owned(),
            n => format!("{n} live workers finish their blocks"),
        };
        println!(
            "cancel recorded for run {run}: {leader}; {workers} in flight and exit. Resume it \
             with:\n{}",
            session.resume_hint(&run)
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
