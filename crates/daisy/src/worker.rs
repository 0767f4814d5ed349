//! [`Worker`]: the same binary that runs a pipeline of Rust closures with
//! `Runner::nats(url)`, started anywhere, joins the run as a worker.

use daisy_nats::ConnectOptions;
use daisy_proto::RunId;
use daisy_worker::nats::{NatsWorkerOptions, run_nats_worker};
use tokio_util::sync::CancellationToken;

use crate::nats::NatsRunError;
use crate::task::{Task, TaskError, closure_factory, with_upstream};

/// Serves a run over NATS with this program's closures: start the same
/// binary on any number of machines to add workers to a run that
/// `Runner::nats(url)` (or `daisy-scheduler`) leads.
#[derive(Debug)]
pub struct Worker {
    url: String,
    run: String,
    slots: u32,
    cancel: CancellationToken,
}

impl Worker {
    /// A worker for run `run` on the NATS server at `url`, one slot per core.
    pub fn new(url: impl Into<String>, run: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            run: run.into(),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            cancel: CancellationToken::new(),
        }
    }

    /// How many blocks to process at once.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// A token that stops the worker (blocks in flight finish first).
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Processes blocks of the run with these tasks' closures (and their
    /// upstream tasks') until the run is finished.
    ///
    /// # Errors
    /// [`TaskError::InvalidRunId`], [`TaskError::Nats`] if the server cannot
    /// be reached, [`TaskError::Worker`] if serving fails.
    pub async fn serve(self, tasks: impl IntoIterator<Item = Task>) -> Result<(), TaskError> {
        let tasks = with_upstream(tasks);
        let run = RunId::new(&self.run).ok_or(TaskError::InvalidRunId { id: self.run })?;
        let nats = daisy_nats::connect(&ConnectOptions::new(self.url.clone()))
            .await
            .map_err(|source| NatsRunError::Connect { url: self.url, source })?;
        run_nats_worker(
            nats,
            NatsWorkerOptions::new(run, self.slots),
            closure_factory(&tasks),
            self.cancel,
        )
        .await?;
        Ok(())
    }
}
