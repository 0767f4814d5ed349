//! `daisy run --in-process`: the scheduler and one worker slot per
//! `max_workers` of each task in this process, outcomes recorded in the
//! journal `<state-dir>/<run-id>/journal`.

use daisy::in_process::{InProcessRun, RunError, RunOptions};
use daisy::journal::JournalError;
use daisy_scheduler::{RunReport, RunSnapshot, SchedulerConfig};
use daisy_worker::factory::pipeline_processors;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RunContext;
use crate::input::BadInput;

/// A run whose journal is open and locked.
pub(crate) struct Prepared {
    run: InProcessRun,
}

/// Opens the journal: a run in use or a changed layout is refused here,
/// before anything starts.
pub(super) fn prepare(context: &RunContext) -> anyhow::Result<Prepared> {
    let options = RunOptions {
        run_dir: Some(context.run_dir.clone()),
        fresh: context.fresh,
        scheduler: SchedulerConfig::default(),
    };
    let run =
        InProcessRun::prepare(context.pipeline.clone(), options).map_err(|err| match err {
            RunError::Journal(
                err @ (JournalError::Locked { .. } | JournalError::LayoutChanged { .. }),
            ) => anyhow::Error::new(BadInput(err.to_string())),
            RunError::Journal(err @ JournalError::Io { .. }) => anyhow::Error::new(BadInput(
                format!("{err}; check that --state-dir is a writable directory"),
            )),
            other => anyhow::Error::new(other),
        })?;
    Ok(Prepared { run })
}

impl Prepared {
    /// Blocks an earlier session recorded as done.
    pub(super) fn resumed_blocks(&self) -> u64 {
        self.run.resumed_blocks()
    }

    /// Live snapshots for the progress display.
    pub(super) fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        self.run.subscribe()
    }

    /// Runs every block until done or cancelled.
    pub(super) async fn run(
        self,
        context: &RunContext,
        cancel: CancellationToken,
    ) -> anyhow::Result<RunReport> {
        let factory = pipeline_processors(context.children.clone());
        Ok(self.run.run(&*factory, cancel).await?)
    }
}
