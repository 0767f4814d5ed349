//! Rust closures over NATS JetStream: `Runner::nats(url)` runs a scheduler
//! replica and this process's worker slots through the server, and
//! [`Worker`] lets the same binary, started anywhere, join a run.
//!
//! The run's spec in KV is the pipeline file form of the tasks; a task
//! whose blocks a Rust closure processes is written with the command
//! [`CLOSURE_PLACEHOLDER`], so a generic `daisy-worker` that joins fails
//! those blocks with a clear error instead of guessing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use daisy_core::{Pipeline, TaskIndex, pipeline_toml};
use daisy_nats::{ConnectOptions, LeaseHolder, RunSettings};
use daisy_proto::{FailureKind, RunId};
use daisy_scheduler::nats::{ReplicaError, ReplicaOptions, run_replica, signal_leading};
use daisy_scheduler::{ReplayMode, RunReport, SchedulerConfig};
use daisy_worker::nats::{
    NatsProcessorFactory, NatsWorkerOptions, run_nats_worker, run_nats_worker_from,
};
use daisy_worker::runner::{BlockProcessor, ProcessError, WorkBlock};
use tokio_util::sync::CancellationToken;

use crate::task::{CheckFn, ClosureProcessor, ProcessFn, Task, TaskError, with_upstream};

/// The command written for closure tasks in the run's spec.
pub const CLOSURE_PLACEHOLDER: &str =
    "<a Rust closure: start the program that defines it with daisy::Worker>";

fn nats_error(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> TaskError + '_ {
    move |err| TaskError::Nats(format!("{what}: {err}"))
}

fn run_id(id: &str) -> Result<RunId, TaskError> {
    RunId::new(id).ok_or_else(|| {
        TaskError::Nats(format!("run id {id:?}: use 1 to 64 letters, digits, '_' or '-'"))
    })
}

/// A processor for a task this binary has no closure for.
struct Missing(String);

impl BlockProcessor for Missing {
    fn process(&mut self, _block: &WorkBlock) -> Result<(), ProcessError> {
        Err(ProcessError {
            kind: FailureKind::SpawnFailed,
            message: format!(
                "this worker program defines no process function for task '{}'",
                self.0
            ),
        })
    }
}

fn closure_factory(tasks: &[Task]) -> Arc<NatsProcessorFactory> {
    let by_id: HashMap<String, (ProcessFn, Option<CheckFn>)> =
        tasks.iter().map(|t| (t.id().to_string(), t.functions())).collect();
    Arc::new(
        move |pipeline: &Arc<Pipeline>, task: TaskIndex, _slot: u32| -> Box<dyn BlockProcessor> {
            let id = pipeline.task(task).spec.id.to_string();
            match by_id.get(&id) {
                Some((process, check)) => {
                    Box::new(ClosureProcessor { process: process.clone(), check: check.clone() })
                }
                None => Box::new(Missing(id)),
            }
        },
    )
}

/// Runs the tasks over NATS: a scheduler replica (resuming the run if it
/// was recorded before) and worker slots in this process.
pub(crate) async fn run_over_nats(
    url: &str,
    run: &str,
    pipeline: Arc<Pipeline>,
    tasks: &[Task],
    cancel: CancellationToken,
) -> Result<RunReport, TaskError> {
    let run = run_id(run)?;
    let nats = daisy_nats::connect(&ConnectOptions::new(url))
        .await
        .map_err(|e| nats_error("connecting to NATS")(&e))?;
    let specs: Vec<_> = pipeline.tasks().iter().map(|t| t.spec.clone()).collect();
    let spec_toml = pipeline_toml(&specs, CLOSURE_PLACEHOLDER);
    let slots = pipeline.tasks().iter().map(|t| t.spec.max_workers).sum();
    let worker_options = NatsWorkerOptions::new(run.clone(), slots);
    let holder = LeaseHolder::this_process();
    let worker_cancel = CancellationToken::new();
    // The workers start once the replica leads (see `run_nats_worker_from`).
    let leading = CancellationToken::new();
    let workers = tokio::spawn(run_nats_worker_from(
        leading.clone(),
        nats.clone(),
        worker_options,
        closure_factory(tasks),
        worker_cancel.clone(),
    ));
    let report = loop {
        let options = ReplicaOptions {
            run: run.clone(),
            spec_toml: spec_toml.clone(),
            pipeline: pipeline.clone(),
            settings: RunSettings { lease_ttl: Duration::from_secs(5), ..RunSettings::default() },
            holder: holder.clone(),
            scheduler: SchedulerConfig::default(),
            replay_mode: ReplayMode::Resume,
            on_leading: Some(signal_leading(leading.clone(), None)),
        };
        match run_replica(nats.clone(), options, cancel.clone()).await {
            Ok(report) => break Ok(report),
            Err(ReplicaError::LeaseLost { .. }) => continue,
            Err(err) => break Err(TaskError::Nats(err.to_string())),
        }
    };
    worker_cancel.cancel();
    let _ = workers.await;
    report
}

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
    /// [`TaskError::Nats`] if NATS fails.
    pub async fn serve(self, tasks: impl IntoIterator<Item = Task>) -> Result<(), TaskError> {
        let tasks = with_upstream(tasks);
        let run = run_id(&self.run)?;
        let nats = daisy_nats::connect(&ConnectOptions::new(self.url.clone()))
            .await
            .map_err(|e| nats_error("connecting to NATS")(&e))?;
        run_nats_worker(
            nats,
            NatsWorkerOptions::new(run, self.slots),
            closure_factory(&tasks),
            self.cancel,
        )
        .await
        .map_err(|e| TaskError::Nats(e.to_string()))
    }
}
