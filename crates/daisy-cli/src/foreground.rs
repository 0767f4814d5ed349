//! What `daisy run` and `daisy-scheduler` do around a run in the
//! foreground: the progress display on stderr and Ctrl-C.
//!
//! # Ctrl-C
//! The first SIGINT (or SIGTERM, as sent by batch systems) cancels the run:
//! no new block starts, blocks in flight finish, and the caller prints the
//! summary. A second signal kills the processes of blocks in flight (their
//! whole process groups) and the embedded nats-server, and exits at once
//! with code 130.

use std::future::Future;

use anyhow::Context;
use daisy_core::Pipeline;
use daisy_scheduler::{RunReport, RunSnapshot};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::progress::{Progress, ProgressMode, follow};
use daisy_telemetry::LogOutput;

/// Runs `run` (given the token Ctrl-C cancels) while showing the progress
/// of `snapshots`; returns its report, or its error once the display is
/// left at the last state seen.
pub(crate) async fn run_in_foreground<F>(
    pipeline: &Pipeline,
    snapshots: watch::Receiver<RunSnapshot>,
    no_progress: bool,
    logs: &LogOutput,
    run: impl FnOnce(CancellationToken) -> F,
) -> anyhow::Result<RunReport>
where
    F: Future<Output = anyhow::Result<RunReport>>,
{
    let tasks: Vec<(String, u64)> = pipeline
        .topological_order()
        .iter()
        .map(|&task| {
            let task = pipeline.task(task);
            (task.spec.id.to_string(), task.grid.num_blocks())
        })
        .collect();
    let progress = Progress::new(ProgressMode::choose(no_progress), &tasks, logs.clone());
    let stop_progress = CancellationToken::new();
    let progress_task = tokio::spawn(follow(progress, snapshots.clone(), stop_progress.clone()));

    let cancel = CancellationToken::new();
    let run_over = CancellationToken::new();
    let interrupts = tokio::spawn(watch_interrupts(cancel.clone(), run_over.clone(), logs.clone()));

    let result = run(cancel).await;
    run_over.cancel();
    stop_progress.cancel();
    let mut progress = progress_task.await.context("the progress display panicked")?;
    interrupts.await.context("the signal handler panicked")?;
    match result {
        Ok(report) => {
            progress.finish(&report);
            Ok(report)
        }
        Err(err) => {
            progress.finish(&snapshots.borrow().clone());
            Err(err)
        }
    }
}

/// Cancels the run at the first SIGINT/SIGTERM and exits at the second.
async fn watch_interrupts(cancel: CancellationToken, run_over: CancellationToken, logs: LogOutput) {
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("cannot install the Ctrl-C handler; Ctrl-C ends the run at once");
        return;
    };
    tokio::select! {
        biased;
        () = run_over.cancelled() => return,
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    logs.note(
        "daisy: interrupted: no new blocks start; waiting for the blocks in flight (Ctrl-C again \
         to quit at once)",
    );
    cancel.cancel();
    tokio::select! {
        biased;
        () = run_over.cancelled() => {}
        _ = interrupt.recv() => quit_at_once(&logs),
        _ = terminate.recv() => quit_at_once(&logs),
    }
}

/// Exits now. Our user processes and the embedded nats-server run in
/// process groups of their own (so that the first Ctrl-C lets blocks in
/// flight finish), out of reach of the terminal's signal: they are killed
/// here, or they would run on as orphans still writing data.
fn quit_at_once(logs: &LogOutput) -> ! {
    daisy_worker::process::kill_all_children();
    daisy::nats::embedded::kill_embedded_servers();
    daisy_telemetry::flush_before_exit();
    logs.note(
        "daisy: interrupted again: quitting now; blocks in flight are not recorded and run again \
         next time",
    );
    std::process::exit(130)
}
