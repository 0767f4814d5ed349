//! The scheduler actor's loop. See the crate docs for the picture.

use std::sync::Arc;
use std::time::{Duration, Instant};

use daisy_core::{BlockIndex, BlockKey, Outcome, Pipeline, Released, Scheduler, TaskIndex};
use daisy_proto::{BlockWork, Dispatch, Event, FailureKind, OutcomeKind, OutcomeReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::batch::BatchSizer;
use crate::report::{FirstError, RunReport, RunSnapshot, TaskReport};
use crate::transport::{ReplayMode, ReplayedOutcomes, SchedulerTransport, TransportError};

/// Tuning of the scheduler actor.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Work per dispatch batch, in measured block seconds.
    pub target_batch_seconds: f64,
    /// The most blocks in one batch.
    pub max_batch: usize,
    /// How often the live snapshot is refreshed.
    pub snapshot_interval: Duration,
    /// After a cancel, how long to wait for blocks in flight.
    pub drain_timeout: Duration,
    /// Clock of the caller's choosing for timestamps in recorded events.
    pub unix_ms: fn() -> u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            target_batch_seconds: 0.1,
            max_batch: 1024,
            snapshot_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            unix_ms: crate::unix_ms_now,
        }
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Every worker went away while blocks were still in flight.
    #[error("all workers stopped while {in_flight} batches of blocks were in flight")]
    WorkersGone {
        /// Batches that never reported.
        in_flight: usize,
    },
    /// Nothing is in flight, nothing is ready, and the run is not done: a
    /// bug in dependency bookkeeping (never expected; `daisy plan
    /// --simulate` checks every pipeline for it).
    #[error("no block is ready or running but {pending} blocks are pending: please report this")]
    Stalled {
        /// Blocks that can no longer become ready.
        pending: u64,
    },
}

/// Per-task bookkeeping beyond the core's block states.
struct TaskRuntime {
    batches_in_flight: usize,
    sizer: BatchSizer,
    closed: bool,
    report: TaskReport,
}

/// The scheduler actor: owns the run's block states and drives them over a
/// transport until every block is done (or the run is cancelled).
pub struct RunScheduler<T: SchedulerTransport> {
    pipeline: Arc<Pipeline>,
    core: Scheduler,
    transport: T,
    config: SchedulerConfig,
    tasks: Vec<TaskRuntime>,
    snapshot: watch::Sender<RunSnapshot>,
    started: Instant,
    stale_results: u64,
    epoch: u64,
}

impl<T: SchedulerTransport> RunScheduler<T> {
    /// An actor for `pipeline`, resuming from what an earlier session
    /// recorded: blocks that succeeded then are skipped now.
    pub fn new(
        pipeline: Arc<Pipeline>,
        transport: T,
        config: SchedulerConfig,
        replayed: ReplayedOutcomes,
    ) -> Self {
        let mut core = Scheduler::new(pipeline.clone());
        replay(&pipeline, &mut core, &replayed);
        let tasks = pipeline
            .tasks()
            .iter()
            .map(|task| TaskRuntime {
                batches_in_flight: 0,
                sizer: BatchSizer::new(),
                closed: false,
                report: TaskReport {
                    id: task.spec.id.to_string(),
                    counters: Default::default(),
                    failed_attempts: 0,
                    timeouts: 0,
                    worker_restarts: 0,
                    first_error: None,
                    abandoned: None,
                    timeout_seconds: task.spec.timeout.as_secs_f64(),
                },
            })
            .collect();
        let (snapshot, _) = watch::channel(RunSnapshot::default());
        Self {
            pipeline,
            core,
            transport,
            config,
            tasks,
            snapshot,
            started: Instant::now(),
            stale_results: 0,
            epoch: 0,
        }
    }

    /// Sets the fencing epoch stamped on every dispatch (NATS leader lease).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// A receiver of live snapshots (progress bars, status).
    pub fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        self.snapshot.subscribe()
    }

    /// Runs until every block is done, the run is cancelled, or the
    /// transport fails. Returns the final report (also sent as the last
    /// snapshot).
    ///
    /// # Errors
    /// [`SchedulerError`] when the run cannot continue.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<RunReport, SchedulerError> {
        let layout_hash = daisy_proto::layout_hash(&self.pipeline);
        self.transport
            .record(&Event::RunStarted { layout_hash, unix_ms: (self.config.unix_ms)() })
            .await?;
        info!(tasks = self.pipeline.len(), blocks = self.pipeline.num_blocks(), "run started");
        let mut interval = tokio::time::interval(self.config.snapshot_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if drain_deadline.is_none() {
                self.fill().await?;
            }
            self.close_finished_tasks();
            // Batches are counted per report; with a durable transport a
            // batch may report twice (redelivery) or never to this actor
            // (sent by an earlier leader), so the core's processing count
            // decides when nothing is in flight.
            let in_flight: usize = self.tasks.iter().map(|t| t.batches_in_flight).sum();
            let processing: u64 = (0..self.pipeline.len())
                .map(|t| self.core.counters(TaskIndex(t as u32)).processing)
                .sum();
            if self.core.is_done() {
                break;
            }
            if drain_deadline.is_some() && (in_flight == 0 || processing == 0) {
                break;
            }
            if processing == 0 && drain_deadline.is_none() {
                let pending = (0..self.pipeline.len())
                    .map(|t| self.core.counters(TaskIndex(t as u32)).pending())
                    .sum();
                error!(pending, "scheduler stalled");
                return Err(SchedulerError::Stalled { pending });
            }
            let deadline = drain_deadline;
            tokio::select! {
                biased;
                () = cancel.cancelled(), if drain_deadline.is_none() => {
                    warn!(batches_in_flight = in_flight, "run interrupted: no new blocks are dispatched, waiting for blocks in flight");
                    drain_deadline = Some(tokio::time::Instant::now() + self.config.drain_timeout);
                    for position in 0..self.tasks.len() {
                        self.close_task(TaskIndex(position as u32));
                    }
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    warn!(batches_in_flight = in_flight, "gave up waiting for blocks in flight");
                    break;
                }
                report = self.transport.next_report() => match report? {
                    Some(report) => self.apply(report).await?,
                    None => {
                        if drain_deadline.is_some() {
                            break;
                        }
                        return Err(SchedulerError::WorkersGone { in_flight });
                    }
                },
                _ = interval.tick() => self.publish(false, false),
            }
        }
        let interrupted = drain_deadline.is_some();
        self.publish(true, interrupted);
        let report = self.snapshot.borrow().clone();
        info!(
            seconds = self.started.elapsed().as_secs_f64(),
            all_succeeded = report.all_succeeded(),
            stale_results = self.stale_results,
            "run finished"
        );
        Ok(report)
    }

    /// Dispatches ready blocks while tasks have room for more batches.
    async fn fill(&mut self) -> Result<(), TransportError> {
        let order: Vec<TaskIndex> = self.pipeline.topological_order().to_vec();
        let now = self.started.elapsed();
        for task in order {
            loop {
                let runtime = &self.tasks[task.get()];
                if runtime.closed
                    || runtime.batches_in_flight >= self.transport.batch_capacity(task)
                {
                    break;
                }
                let spec = &self.pipeline.task(task).spec;
                let ready = self.core.counters(task).ready;
                if ready == 0 {
                    break;
                }
                let size = runtime.sizer.batch_size(
                    self.config.target_batch_seconds,
                    self.config.max_batch,
                    ready,
                    spec.max_workers,
                );
                let mut blocks = Vec::with_capacity(size);
                while blocks.len() < size {
                    let Some(acquired) = self.core.acquire(task, now) else { break };
                    blocks
                        .push(BlockWork { index: acquired.key.index.0, attempt: acquired.attempt });
                }
                if blocks.is_empty() {
                    break; // ready blocks were all known-done and got skipped
                }
                debug!(task = %spec.id, blocks = blocks.len(), "dispatching batch");
                let dispatch = Dispatch { task: spec.id.to_string(), epoch: self.epoch, blocks };
                self.tasks[task.get()].batches_in_flight += 1;
                self.transport.dispatch(task, dispatch).await?;
            }
        }
        Ok(())
    }

    /// Applies the outcomes of one batch.
    async fn apply(&mut self, report: OutcomeReport) -> Result<(), TransportError> {
        let Some(task) = self.pipeline.task_index(&report.task) else {
            warn!(task = %report.task, worker = %report.worker, "report for an unknown task dropped");
            return Ok(());
        };
        let runtime = &mut self.tasks[task.get()];
        runtime.batches_in_flight = runtime.batches_in_flight.saturating_sub(1);
        runtime.report.worker_restarts += u64::from(report.worker_restarts);
        let grid = &self.pipeline.task(task).grid;
        for result in &report.results {
            if result.index >= grid.num_blocks() {
                warn!(task = %report.task, index = result.index, "result for a block outside the grid dropped");
                continue;
            }
            let key = BlockKey { task, index: BlockIndex(result.index) };
            let runtime = &mut self.tasks[task.get()];
            runtime.sizer.observe(f64::from(result.seconds));
            let outcome = match result.outcome {
                OutcomeKind::Success => Outcome::Success,
                OutcomeKind::Skipped => Outcome::Skipped,
                OutcomeKind::Failed { kind } => {
                    runtime.report.failed_attempts += 1;
                    if kind == FailureKind::Timeout {
                        runtime.report.timeouts += 1;
                    }
                    let block_id = grid.block_id(&grid.grid_index(key.index));
                    let message = result.error.clone().unwrap_or_default();
                    warn!(task = %report.task, %block_id, attempt = result.attempt, %kind, worker = %report.worker, error = %first_line(&message), "block attempt failed");
                    if runtime.report.first_error.is_none() {
                        runtime.report.first_error = Some(FirstError {
                            block_id,
                            attempt: result.attempt,
                            kind,
                            message,
                            worker: report.worker.to_string(),
                        });
                    }
                    if kind == FailureKind::DeliveriesExhausted {
                        Outcome::Exhausted
                    } else {
                        Outcome::Failed
                    }
                }
            };
            match self.core.release(key, outcome) {
                Ok(Released::Failed { orphaned }) => {
                    let block_id = grid.block_id(&grid.grid_index(key.index));
                    error!(task = %report.task, %block_id, orphaned, "block failed for good");
                }
                Ok(_) => {}
                Err(err) => {
                    self.stale_results += 1;
                    debug!(task = %report.task, error = %err, "stale result dropped");
                }
            }
        }
        self.check_restart_budget(task).await
    }

    /// Abandons a task whose workers restarted more than allowed.
    async fn check_restart_budget(&mut self, task: TaskIndex) -> Result<(), TransportError> {
        let pipeline = self.pipeline.clone();
        let spec = &pipeline.task(task).spec;
        let runtime = &self.tasks[task.get()];
        if runtime.report.abandoned.is_some()
            || runtime.report.worker_restarts <= u64::from(spec.max_worker_restarts)
            || self.core.counters(task).is_done()
        {
            return Ok(());
        }
        let reason = format!(
            "its worker processes were restarted {} times, more than max_worker_restarts = {}",
            runtime.report.worker_restarts, spec.max_worker_restarts
        );
        error!(task = %spec.id, %reason, "task abandoned");
        let orphaned = self.core.abandon(task);
        info!(task = %spec.id, orphaned, "blocks of the task and its downstream tasks orphaned");
        self.tasks[task.get()].report.abandoned = Some(reason.clone());
        let mut downstream = vec![task];
        while let Some(current) = downstream.pop() {
            self.close_task(current);
            downstream.extend(pipeline.task(current).downstream.iter().copied());
        }
        self.transport.record(&Event::TaskAbandoned { task: spec.id.to_string(), reason }).await
    }

    fn close_finished_tasks(&mut self) {
        for position in 0..self.tasks.len() {
            let task = TaskIndex(position as u32);
            if !self.tasks[position].closed && self.core.counters(task).is_done() {
                self.close_task(task);
            }
        }
    }

    fn close_task(&mut self, task: TaskIndex) {
        let runtime = &mut self.tasks[task.get()];
        if !runtime.closed {
            runtime.closed = true;
            self.transport.close_task(task);
        }
    }

    fn publish(&mut self, finished: bool, interrupted: bool) {
        let tasks = self
            .pipeline
            .topological_order()
            .iter()
            .map(|&task| {
                let mut report = self.tasks[task.get()].report.clone();
                report.counters = self.core.counters(task);
                report
            })
            .collect();
        self.snapshot.send_replace(RunSnapshot { tasks, finished, interrupted });
    }
}

/// Rebuilds the state an earlier session (or leader) recorded.
///
/// In [`ReplayMode::Continue`], failed attempts recorded before the last
/// [`Event::RetryRequested`] (`daisy retry`) are ignored: those blocks count
/// as never attempted, so they (and the blocks they orphaned) run again with
/// fresh retries. Successes before it still count.
fn replay(pipeline: &Pipeline, core: &mut Scheduler, replayed: &ReplayedOutcomes) {
    let key_of = |task: &str, index: u64| {
        let task = pipeline.task_index(task)?;
        (index < pipeline.task(task).grid.num_blocks())
            .then_some(BlockKey { task, index: BlockIndex(index) })
    };
    let retry_at = replayed
        .events
        .iter()
        .rposition(|event| matches!(event, Event::RetryRequested { .. }))
        .filter(|_| replayed.mode == ReplayMode::Continue);
    let mut applied = 0u64;
    let mut retried = 0u64;
    for (position, event) in replayed.events.iter().enumerate() {
        let Event::Outcomes(report) = event else { continue };
        let before_retry = retry_at.is_some_and(|retry_at| position < retry_at);
        for result in &report.results {
            if before_retry && matches!(result.outcome, OutcomeKind::Failed { .. }) {
                retried += 1;
                continue;
            }
            let Some(key) = key_of(&report.task, result.index) else {
                warn!(task = %report.task, index = result.index, "recorded outcome for an unknown block ignored");
                continue;
            };
            match replayed.mode {
                ReplayMode::Resume => {
                    if matches!(result.outcome, OutcomeKind::Success | OutcomeKind::Skipped) {
                        core.mark_known_done(key);
                        applied += 1;
                    }
                }
                ReplayMode::Continue => {
                    let outcome = match result.outcome {
                        OutcomeKind::Success => Outcome::Success,
                        OutcomeKind::Skipped => Outcome::Skipped,
                        OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted } => {
                            Outcome::Exhausted
                        }
                        OutcomeKind::Failed { .. } => Outcome::Failed,
                    };
                    if core.apply_recorded(key, outcome).is_ok() {
                        applied += 1;
                    }
                }
            }
        }
    }
    let mut in_flight = 0u64;
    for (task, index) in &replayed.in_flight {
        if let Some(key) = key_of(task, *index)
            && core.mark_in_flight(key)
        {
            in_flight += 1;
        }
    }
    if retried > 0 {
        info!(
            failed_attempts = retried,
            "retry requested: failures recorded before it are ignored"
        );
    }
    if applied > 0 || in_flight > 0 {
        match replayed.mode {
            ReplayMode::Resume => {
                info!(blocks = applied, "resuming: blocks recorded as done will be skipped");
            }
            ReplayMode::Continue => {
                info!(outcomes = applied, in_flight, "taking over: recorded outcomes applied");
            }
        }
    }
}

fn first_line(message: &str) -> &str {
    message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}
