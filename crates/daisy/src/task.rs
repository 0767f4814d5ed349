//! Tasks with Rust closures as process functions, and `run_blockwise`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daisy_core::{Fit, Pipeline, PipelineError, Roi, TaskId, TaskIndex, TaskSpec};
use daisy_nats::ConnectOptions;
use daisy_proto::{FailureKind, RunId};
use daisy_scheduler::RunReport;
use daisy_worker::factory::{NoProcessor, ProcessorFactory, error_chain};
use daisy_worker::nats::NatsWorkerError;
use daisy_worker::runner::{BlockProcessor, ProcessError, WorkBlock};
use tokio_util::sync::CancellationToken;

use crate::in_process::{InProcessRun, RunError, RunOptions};
use crate::nats::{NatsRun, NatsRunError, NatsRunOptions, ServerChoice};

/// The error a process function may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type ProcessFn = Arc<dyn Fn(&WorkBlock) -> Result<(), BoxError> + Send + Sync>;
type CheckFn = Arc<dyn Fn(&WorkBlock) -> bool + Send + Sync>;

/// A task: the blocks to cut, and the Rust function that processes one.
///
/// Cheap to clone. Upstream tasks are held by the task, so passing only the
/// last task of a chain to [`run_blockwise`] runs the whole chain.
#[derive(Clone)]
pub struct Task {
    inner: Arc<TaskInner>,
}

struct TaskInner {
    spec: TaskSpec,
    process: ProcessFn,
    check: Option<CheckFn>,
    upstream: Vec<Task>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("spec", &self.inner.spec).finish_non_exhaustive()
    }
}

/// Why a task could not be built or a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The id is not `[A-Za-z0-9_-]+`.
    #[error(transparent)]
    InvalidId(#[from] daisy_core::spec::InvalidTaskId),
    /// A required field was not set.
    #[error("task '{task}': {field} is not set: call .{field}(..) on the builder")]
    Missing {
        /// The task.
        task: String,
        /// The missing field.
        field: &'static str,
    },
    /// The tasks do not form a valid pipeline.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The run failed to run to its end.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The NATS run id is not `[A-Za-z0-9_-]{1,64}`.
    #[error("run id {id:?}: use 1 to 64 letters, digits, '_' or '-'")]
    InvalidRunId {
        /// The rejected id.
        id: String,
    },
    /// The NATS run failed (connecting, the scheduler replica).
    #[error(transparent)]
    Nats(#[from] NatsRunError),
    /// A [`Worker`](crate::Worker) could not serve its run.
    #[error(transparent)]
    Worker(#[from] NatsWorkerError),
    /// The async runtime could not start.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// Builds a [`Task`]; see [`Task::builder`].
pub struct TaskBuilder {
    id: String,
    total_roi: Option<Roi>,
    read_roi: Option<Roi>,
    write_roi: Option<Roi>,
    fit: Fit,
    read_write_conflict: bool,
    max_workers: u32,
    max_retries: u32,
    timeout: Duration,
    upstream: Vec<Task>,
    process: Option<ProcessFn>,
    check: Option<CheckFn>,
}

impl Task {
    /// The task's process and check functions.
    fn functions(&self) -> (ProcessFn, Option<CheckFn>) {
        (self.inner.process.clone(), self.inner.check.clone())
    }

    /// Starts a task with Daisy's defaults (fit valid, conflicts on, one
    /// worker, two retries, a 10 minute timeout).
    pub fn builder(id: impl Into<String>) -> TaskBuilder {
        TaskBuilder {
            id: id.into(),
            total_roi: None,
            read_roi: None,
            write_roi: None,
            fit: Fit::Valid,
            read_write_conflict: true,
            max_workers: 1,
            max_retries: daisy_core::spec::DEFAULT_MAX_RETRIES,
            timeout: daisy_core::spec::DEFAULT_TIMEOUT,
            upstream: Vec::new(),
            process: None,
            check: None,
        }
    }

    /// The task's spec.
    pub fn spec(&self) -> &TaskSpec {
        &self.inner.spec
    }

    /// The task's id.
    pub fn id(&self) -> &TaskId {
        &self.inner.spec.id
    }
}

impl TaskBuilder {
    /// The region tiled by blocks, including the context of outer blocks.
    pub fn total_roi(mut self, roi: Roi) -> Self {
        self.total_roi = Some(roi);
        self
    }
    /// A block's read ROI (template: only its offset to the write ROI matters).
    pub fn read_roi(mut self, roi: Roi) -> Self {
        self.read_roi = Some(roi);
        self
    }
    /// A block's write ROI (template).
    pub fn write_roi(mut self, roi: Roi) -> Self {
        self.write_roi = Some(roi);
        self
    }
    /// How boundary blocks are treated.
    pub fn fit(mut self, fit: Fit) -> Self {
        self.fit = fit;
        self
    }
    /// Whether neighbouring blocks must not run at the same time.
    pub fn read_write_conflict(mut self, conflict: bool) -> Self {
        self.read_write_conflict = conflict;
        self
    }
    /// How many blocks run at once (worker threads).
    pub fn max_workers(mut self, workers: u32) -> Self {
        self.max_workers = workers;
        self
    }
    /// How many times a failed block is retried.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
    /// How long an attempt may take (in-process code cannot be killed: an
    /// attempt that overran is counted as failed when it returns).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// A task whose output this task reads.
    pub fn upstream(mut self, task: &Task) -> Self {
        self.upstream.push(task.clone());
        self
    }
    /// The function that processes one block. An `Err` or a panic fails the
    /// attempt.
    pub fn process<F, E>(mut self, process: F) -> Self
    where
        F: Fn(&WorkBlock) -> Result<(), E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        self.process = Some(Arc::new(move |block: &WorkBlock| process(block).map_err(Into::into)));
        self
    }
    /// A function that says whether a block is already done (then it is
    /// skipped). Runs on the worker threads, in parallel.
    pub fn check<F>(mut self, check: F) -> Self
    where
        F: Fn(&WorkBlock) -> bool + Send + Sync + 'static,
    {
        self.check = Some(Arc::new(check));
        self
    }

    /// Builds the task.
    ///
    /// # Errors
    /// [`TaskError`] for an invalid id or a missing ROI or process function.
    /// The ROIs themselves are checked when the pipeline is run.
    pub fn build(self) -> Result<Task, TaskError> {
        let id = TaskId::new(self.id.clone())?;
        let missing = |field| TaskError::Missing { task: self.id.clone(), field };
        let total_roi = self.total_roi.ok_or_else(|| missing("total_roi"))?;
        let read_roi = self.read_roi.ok_or_else(|| missing("read_roi"))?;
        let write_roi = self.write_roi.ok_or_else(|| missing("write_roi"))?;
        let process = self.process.clone().ok_or_else(|| missing("process"))?;
        let mut spec = TaskSpec::new(id, total_roi, read_roi, write_roi);
        spec.fit = self.fit;
        spec.read_write_conflict = self.read_write_conflict;
        spec.max_workers = self.max_workers;
        spec.max_retries = self.max_retries;
        spec.timeout = self.timeout;
        spec.upstream = self.upstream.iter().map(|t| t.id().clone()).collect();
        Ok(Task {
            inner: Arc::new(TaskInner {
                spec,
                process,
                check: self.check,
                upstream: self.upstream,
            }),
        })
    }
}

/// The processors of these tasks' closures, found by task id, so that one
/// factory serves a pipeline of any of its tasks (a [`Worker`](crate::Worker)
/// learns the run's pipeline from NATS). A task of the pipeline that none
/// of `tasks` defines fails its blocks, naming it.
pub(crate) fn closure_factory(tasks: &[Task]) -> Arc<ProcessorFactory> {
    let by_id: HashMap<TaskId, (ProcessFn, Option<CheckFn>)> =
        tasks.iter().map(|t| (t.id().clone(), t.functions())).collect();
    Arc::new(
        move |pipeline: &Arc<Pipeline>, task: TaskIndex, _slot: u32| -> Box<dyn BlockProcessor> {
            let id = &pipeline.task(task).spec.id;
            match by_id.get(id) {
                Some((process, check)) => {
                    Box::new(ClosureProcessor { process: process.clone(), check: check.clone() })
                }
                None => Box::new(NoProcessor::new(format!(
                    "this worker program defines no process function for task '{id}'"
                ))),
            }
        },
    )
}

struct ClosureProcessor {
    process: ProcessFn,
    check: Option<CheckFn>,
}

impl BlockProcessor for ClosureProcessor {
    fn check(&mut self, block: &WorkBlock) -> Result<bool, ProcessError> {
        Ok(self.check.as_ref().is_some_and(|check| check(block)))
    }

    fn process(&mut self, block: &WorkBlock) -> Result<(), ProcessError> {
        (self.process)(block)
            .map_err(|err| ProcessError { kind: FailureKind::Failed, message: error_chain(&*err) })
    }
}

/// Options of [`Runner`].
#[derive(Debug, Default)]
pub struct Runner {
    options: RunOptions,
    cancel: CancellationToken,
    nats: Option<String>,
    run_id: Option<String>,
}

impl Runner {
    /// A runner with no journal (nothing recorded on disk).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the run in `dir` (a journal file) so a run that stopped
    /// resumes there: blocks that succeeded are skipped.
    pub fn resume_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.run_dir = Some(dir.into());
        self
    }

    /// Discards what an earlier run recorded in the resume dir.
    pub fn fresh(mut self, fresh: bool) -> Self {
        self.options.fresh = fresh;
        self
    }

    /// Runs the tasks through NATS JetStream at `url` instead of in-process
    /// channels: a scheduler replica and this process's worker slots talk
    /// through the server, and the same binary started elsewhere with
    /// [`Worker`](crate::Worker) joins in. The run resumes from its event
    /// stream when started again.
    pub fn nats(mut self, url: impl Into<String>) -> Self {
        self.nats = Some(url.into());
        self
    }

    /// Names the run on NATS (its streams). Default: the last task's id.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// A token that stops the run (blocks in flight finish first).
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Runs the tasks and every task upstream of them, in this process,
    /// and waits for the end. Blocks on a tokio runtime of its own; from
    /// async code use [`Runner::run_async`].
    ///
    /// # Errors
    /// [`TaskError`] if the tasks do not form a valid pipeline or the run
    /// could not finish. Failed blocks are not an error: see
    /// [`RunReport::all_succeeded`].
    pub fn run(self, tasks: impl IntoIterator<Item = Task>) -> Result<RunReport, TaskError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(TaskError::Runtime)?;
        runtime.block_on(self.run_async(tasks))
    }

    /// [`Runner::run`] from async code.
    ///
    /// # Errors
    /// As [`Runner::run`].
    pub async fn run_async(
        self,
        tasks: impl IntoIterator<Item = Task>,
    ) -> Result<RunReport, TaskError> {
        let tasks = with_upstream(tasks);
        let pipeline =
            Arc::new(Pipeline::new(tasks.iter().map(|t| t.inner.spec.clone()).collect())?);
        let factory = closure_factory(&tasks);
        if let Some(url) = self.nats {
            let id = self.run_id.unwrap_or_else(|| {
                tasks.last().map(|t| t.id().to_string()).unwrap_or_else(|| "run".into())
            });
            let run = RunId::new(&id).ok_or(TaskError::InvalidRunId { id })?;
            let options = NatsRunOptions::new(ServerChoice::Connect(ConnectOptions::new(url)), run);
            let run = NatsRun::prepare(pipeline, options).await?;
            return Ok(run.run(Some(factory), self.cancel).await?);
        }
        let run = InProcessRun::prepare(pipeline, self.options)?;
        Ok(run.run(&*factory, self.cancel).await?)
    }
}

/// The tasks and every task upstream of them, each once, upstream first.
pub(crate) fn with_upstream(tasks: impl IntoIterator<Item = Task>) -> Vec<Task> {
    fn visit(task: &Task, seen: &mut HashSet<*const TaskInner>, out: &mut Vec<Task>) {
        if !seen.insert(Arc::as_ptr(&task.inner)) {
            return;
        }
        for up in &task.inner.upstream {
            visit(up, seen, out);
        }
        out.push(task.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for task in tasks {
        visit(&task, &mut seen, &mut out);
    }
    out
}

/// Runs the tasks (and their upstream tasks) in this process with no
/// journal. Equivalent to `Runner::new().run(tasks)`.
///
/// # Errors
/// See [`Runner::run`].
pub fn run_blockwise(tasks: impl IntoIterator<Item = Task>) -> Result<RunReport, TaskError> {
    Runner::new().run(tasks)
}
