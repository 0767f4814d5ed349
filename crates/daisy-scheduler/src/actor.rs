//! The scheduler actor's loop. See the crate docs for the picture.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daisy_core::{
    BlockIndex, BlockKey, Outcome, Pipeline, ReleaseError, Released, Scheduler, TaskIndex,
};
use daisy_proto::{BlockWork, Dispatch, Event, FailureKind, OutcomeKind, OutcomeReport, Straggler};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::batch::BatchSizer;
use crate::metrics::{OutcomeCounts, SchedulerMetrics};
use crate::replay::replay;
use crate::report::{FirstError, RunReport, RunSnapshot, TaskReport};
use crate::straggler::{BlockTimes, StragglerRule};
use crate::transport::{
    BatchId, Input, QueuedBatch, ReplayedOutcomes, SchedulerTransport, TransportError,
};

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
    /// How often batches in flight are checked for having left the transport without an
    /// outcome (a message removed by a deposed leader's purge, say). A batch missing at two
    /// checks in a row is reclaimed: its blocks are ready again, no attempt counted.
    pub reclaim_interval: Duration,
    /// A block running this many times its task's median block time (and at least a
    /// second) is a straggler: logged once per attempt, counted in
    /// `daisy_stragglers_total`, listed in the snapshots. `None` turns detection off.
    pub straggler_factor: Option<f64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            target_batch_seconds: 0.1,
            max_batch: 1024,
            snapshot_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            unix_ms: crate::unix_ms_now,
            reclaim_interval: Duration::from_secs(10),
            straggler_factor: Some(crate::straggler::DEFAULT_STRAGGLER_FACTOR),
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

/// A batch in flight: the blocks of it not yet reported, at the attempts they were
/// dispatched with.
struct InFlightBatch {
    task: TaskIndex,
    blocks: Vec<BlockWork>,
    /// Whether the last reclaim check found its message gone.
    missing: bool,
    dispatched: tokio::time::Instant,
}

/// Per-task bookkeeping beyond the core's block states.
struct TaskRuntime {
    batches_in_flight: usize,
    sizer: BatchSizer,
    closed: bool,
    report: TaskReport,
    /// Recent times of successful attempts (the median stragglers are measured against).
    times: BlockTimes,
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
    /// Every batch in flight, by id: which attempt of a block is live, when a batch's
    /// message may go, what to reclaim.
    batches: HashMap<BatchId, InFlightBatch>,
    /// Blocks handed back from a batch whose deliveries ran out: each is dispatched alone.
    suspects: HashSet<BlockKey>,
    /// The run's id, for the trace ids of stragglers.
    run_id: String,
    /// Attempts already reported as stragglers (each is logged and counted once); an entry
    /// goes when its attempt is no longer in flight.
    stragglers: HashSet<(BlockKey, u32)>,
    metrics: SchedulerMetrics,
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
        let found = replay(&pipeline, &mut core, replayed);
        let tasks = pipeline
            .tasks()
            .iter()
            .enumerate()
            .map(|(position, task)| TaskRuntime {
                batches_in_flight: 0,
                sizer: BatchSizer::new(),
                closed: found.abandoned[position].is_some(),
                times: BlockTimes::default(),
                report: TaskReport {
                    id: task.spec.id.to_string(),
                    counters: Default::default(),
                    failed_attempts: 0,
                    timeouts: 0,
                    worker_restarts: found.worker_restarts[position],
                    first_error: None,
                    abandoned: found.abandoned[position].clone(),
                    timeout_seconds: task.spec.timeout.as_secs_f64(),
                    stragglers: Vec::new(),
                },
            })
            .collect();
        let (snapshot, _) = watch::channel(RunSnapshot::default());
        let metrics = SchedulerMetrics::new(&pipeline);
        let mut actor = Self {
            pipeline,
            core,
            transport,
            config,
            tasks,
            snapshot,
            started: Instant::now(),
            stale_results: 0,
            epoch: 0,
            batches: HashMap::new(),
            suspects: HashSet::new(),
            run_id: String::new(),
            stragglers: HashSet::new(),
            metrics,
        };
        for QueuedBatch { batch, dispatch } in found.in_flight {
            let Some(task) = actor.pipeline.task_index(&dispatch.task) else { continue };
            // Blocks the record already settled will not be reported again.
            let blocks: Vec<BlockWork> = dispatch
                .blocks
                .into_iter()
                .filter(|block| {
                    block.index < actor.pipeline.task(task).grid.num_blocks()
                        && actor
                            .core
                            .is_processing(BlockKey { task, index: BlockIndex(block.index) })
                })
                .collect();
            if !blocks.is_empty() {
                actor.track(batch, task, blocks);
            }
        }
        // Counters from the first moment: a status written before the first tick must not
        // show an empty run (right after a failover it shows the replayed counters).
        // The metrics first: what the replay rebuilt finished under earlier leaders, and
        // must not be counted again as finished now.
        actor.metrics.start_from(&actor.core);
        actor.publish(false, false);
        actor
    }

    /// Starts tracking a batch in flight.
    fn track(&mut self, batch: BatchId, task: TaskIndex, blocks: Vec<BlockWork>) {
        let dispatched = tokio::time::Instant::now();
        let previous =
            self.batches.insert(batch, InFlightBatch { task, blocks, missing: false, dispatched });
        debug_assert!(previous.is_none(), "batch ids are unique while in flight");
        if previous.is_none() {
            self.tasks[task.get()].batches_in_flight += 1;
        }
    }

    /// Stops tracking a batch (all of it reported, or reclaimed).
    fn untrack(&mut self, batch: BatchId) -> Option<InFlightBatch> {
        let removed = self.batches.remove(&batch)?;
        let runtime = &mut self.tasks[removed.task.get()];
        runtime.batches_in_flight = runtime.batches_in_flight.saturating_sub(1);
        Some(removed)
    }

    /// Sets the fencing epoch stamped on every dispatch (NATS leader lease).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets the run's id, from which the trace ids of stragglers are derived (empty by
    /// default).
    pub fn with_run_id(mut self, run_id: &str) -> Self {
        self.run_id = run_id.to_owned();
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
        let unix_ms = (self.config.unix_ms)();
        self.transport
            .record(&Event::RunStarted { layout_hash, unix_ms, epoch: self.epoch })
            .await?;
        info!(tasks = self.pipeline.len(), blocks = self.pipeline.num_blocks(), "run started");
        let mut interval = tokio::time::interval(self.config.snapshot_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reclaim = tokio::time::interval(self.config.reclaim_interval);
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reclaim.tick().await;
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
                .map(|t| self.core.counters(TaskIndex(t as u32)).in_flight())
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
                    self.close_all_tasks();
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    warn!(batches_in_flight = in_flight, "gave up waiting for blocks in flight");
                    break;
                }
                input = self.transport.next_input() => match input? {
                    Input::Outcomes(report) => self.apply(report).await?,
                    Input::CancelRequested => {
                        // Workers record the outcomes of the blocks they hold themselves, and
                        // the next leader replays them: nothing to wait for.
                        warn!(batches_in_flight = in_flight, "cancel requested (daisy cancel): stopping the run; workers finish their blocks in flight");
                        self.close_all_tasks();
                        drain_deadline = Some(tokio::time::Instant::now());
                        break;
                    }
                    Input::Closed => {
                        if drain_deadline.is_some() {
                            break;
                        }
                        return Err(SchedulerError::WorkersGone { in_flight });
                    }
                },
                _ = reclaim.tick() => self.reclaim_lost_batches().await,
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

    fn close_all_tasks(&mut self) {
        for position in 0..self.tasks.len() {
            self.close_task(TaskIndex(position as u32));
        }
    }

    /// Hands back to ready the blocks of batches that left the transport without an outcome
    /// at two checks in a row (see [`SchedulerConfig::reclaim_interval`]).
    async fn reclaim_lost_batches(&mut self) {
        let old_enough = tokio::time::Instant::now() - self.config.reclaim_interval;
        let candidates: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(_, batch)| batch.dispatched <= old_enough)
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let lost = match self.transport.lost_batches(&candidates).await {
            Ok(lost) => lost,
            Err(err) => {
                debug!(error = %err, "could not check batches in flight");
                return;
            }
        };
        for id in &candidates {
            let lost_now = lost.contains(id);
            let Some(batch) = self.batches.get_mut(id) else { continue };
            if !lost_now || !batch.missing {
                batch.missing = lost_now;
                continue;
            }
            let Some(batch) = self.untrack(*id) else { continue };
            let mut returned = 0;
            for block in &batch.blocks {
                let key = BlockKey { task: batch.task, index: BlockIndex(block.index) };
                // A block another batch in flight holds is that batch's to report.
                let held_elsewhere = self.batches.values().any(|other| {
                    other.task == batch.task && other.blocks.iter().any(|b| b.index == block.index)
                });
                if !held_elsewhere && self.core.return_unstarted(key) {
                    returned += 1;
                }
            }
            let task = &self.pipeline.task(batch.task).spec.id;
            warn!(%task, batch = %id, blocks = returned, "batch left the block stream without outcomes: its blocks are ready again");
        }
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
                    let work = BlockWork { index: acquired.key.index.0, attempt: acquired.attempt };
                    // A block of a batch whose deliveries ran out goes alone, so that a
                    // poison block fails by itself and its batch-mates do not.
                    if self.suspects.contains(&acquired.key) {
                        if blocks.is_empty() {
                            self.suspects.remove(&acquired.key);
                            blocks.push(work);
                        } else {
                            self.core.return_unstarted(acquired.key);
                        }
                        break;
                    }
                    blocks.push(work);
                }
                if blocks.is_empty() {
                    break; // ready blocks were all known-done and got skipped
                }
                debug!(task = %spec.id, blocks = blocks.len(), "dispatching batch");
                let dispatch = Dispatch {
                    task: spec.id.to_string(),
                    epoch: self.epoch,
                    blocks: blocks.clone(),
                };
                let batch = self.transport.dispatch(task, dispatch).await?;
                self.metrics.dispatched(task, blocks.len());
                self.track(batch, task, blocks);
            }
        }
        Ok(())
    }

    /// Applies the outcomes of one report.
    ///
    /// A result counts only for the live attempt of its block: the attempt its batch holds
    /// it at when the report names a batch in flight, the core's current attempt otherwise.
    /// Results of attempts given up on (a late report of a worker that vanished) are stale
    /// and dropped. Blocks the worker handed back unstarted are ready again, no attempt
    /// counted. Once every block of a batch is accounted for, its message is removed.
    async fn apply(&mut self, report: OutcomeReport) -> Result<(), TransportError> {
        let Some(task) = self.pipeline.task_index(&report.task) else {
            warn!(task = %report.task, worker = %report.worker, "report for an unknown task dropped");
            return Ok(());
        };
        let batch_id = BatchId(report.dispatch_sequence);
        let batch_known = report.dispatch_sequence > 0
            && self.batches.get(&batch_id).is_some_and(|batch| batch.task == task);
        if report.dispatch_sequence > 0 && !batch_known {
            // A batch no longer in flight (reported in full, reclaimed, abandoned) or never
            // this leader's: whoever reports it now is late, and the blocks it names belong
            // to other attempts.
            self.stale_results += report.results.len() as u64;
            debug!(task = %report.task, batch = %batch_id, worker = %report.worker, "report of a batch no longer in flight dropped");
            return Ok(());
        }
        self.tasks[task.get()].report.worker_restarts += u64::from(report.worker_restarts);
        let pipeline = self.pipeline.clone();
        let grid = &pipeline.task(task).grid;
        let mut outcomes = OutcomeCounts::default();
        for result in &report.results {
            if result.index >= grid.num_blocks() {
                warn!(task = %report.task, index = result.index, "result for a block outside the grid dropped");
                continue;
            }
            let key = BlockKey { task, index: BlockIndex(result.index) };
            if batch_known && !self.take_from_batch(batch_id, result.index, result.attempt) {
                self.stale_results += 1;
                debug!(task = %report.task, index = result.index, attempt = result.attempt, "result of a block no longer in its batch dropped");
                continue;
            }
            let outcome = outcome_of(result.outcome);
            let released = if batch_known {
                self.core.release(key, outcome)
            } else {
                self.core.release_attempt(key, result.attempt, outcome)
            };
            if released.is_ok() {
                outcomes.add(result.outcome);
                self.note_outcome(task, &report, key, result);
            }
            match released {
                Ok(Released::Failed { orphaned }) => {
                    let block_id = grid.block_id(&grid.grid_index(key.index));
                    error!(task = %report.task, %block_id, orphaned, "block failed for good");
                }
                Ok(_) => {}
                Err(
                    err @ (ReleaseError::NotProcessing { .. } | ReleaseError::StaleAttempt { .. }),
                ) => {
                    self.stale_results += 1;
                    debug!(task = %report.task, error = %err, "stale result dropped");
                }
            }
        }
        for &index in &report.returned {
            let key = BlockKey { task, index: BlockIndex(index) };
            // The batch holds the block at the attempt it was dispatched with.
            let attempt = self.batches.get(&batch_id).and_then(|batch| {
                batch.blocks.iter().find(|block| block.index == index).map(|block| block.attempt)
            });
            let live = batch_known
                && attempt.is_some_and(|attempt| self.take_from_batch(batch_id, index, attempt));
            if live && self.core.return_unstarted(key) {
                debug!(task = %report.task, index, "block handed back unstarted");
                if report.leader_epoch.is_some() {
                    self.suspects.insert(key);
                }
            }
        }
        if batch_known && self.batches.get(&batch_id).is_some_and(|batch| batch.blocks.is_empty()) {
            self.untrack(batch_id);
            self.transport.remove_batch(task, batch_id).await;
        }
        self.metrics.applied(task, &report, &outcomes);
        self.check_restart_budget(task).await
    }

    /// Removes a block from a batch in flight if it is there at `attempt`; returns whether
    /// it was.
    fn take_from_batch(&mut self, batch: BatchId, index: u64, attempt: u32) -> bool {
        let Some(batch) = self.batches.get_mut(&batch) else { return false };
        match batch.blocks.iter().position(|b| b.index == index && b.attempt == attempt) {
            Some(position) => {
                batch.blocks.swap_remove(position);
                true
            }
            None => false,
        }
    }

    /// Counts an applied result in the task's report (batch sizing, failures, the first
    /// error).
    fn note_outcome(
        &mut self,
        task: TaskIndex,
        report: &OutcomeReport,
        key: BlockKey,
        result: &daisy_proto::BlockResult,
    ) {
        let grid = &self.pipeline.task(task).grid;
        let runtime = &mut self.tasks[task.get()];
        runtime.sizer.observe(f64::from(result.seconds));
        if result.outcome == OutcomeKind::Success {
            runtime.times.observe(result.seconds);
        }
        let OutcomeKind::Failed { kind } = result.outcome else { return };
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
        let event = Event::TaskAbandoned { task: spec.id.to_string(), reason, epoch: self.epoch };
        self.transport.record(&event).await?;
        // Its batches still queued must not run (their outcomes would be ignored).
        let abandoned: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(_, batch)| self.core.counters(batch.task).in_flight() == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in abandoned {
            self.untrack(id);
        }
        self.transport.purge_task(task).await;
        Ok(())
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
        let running = self.running_now();
        // Indexed by task: what the bars, the status and the metrics all show.
        let counters: Vec<daisy_core::TaskCounters> = (0..self.pipeline.len())
            .map(|position| {
                let task = TaskIndex(position as u32);
                self.core.counters(task).mark_running(running[position].count)
            })
            .collect();
        let tasks = self
            .pipeline
            .topological_order()
            .iter()
            .map(|&task| {
                let mut report = self.tasks[task.get()].report.clone();
                report.counters = counters[task.get()];
                report.stragglers.clone_from(&running[task.get()].stragglers);
                report
            })
            .collect();
        self.snapshot.send_replace(RunSnapshot { tasks, finished, interrupted });
        self.metrics.publish(&counters, self.stale_results);
    }
}

/// What runs now in one task, as far as workers reported it.
#[derive(Default)]
struct RunningInTask {
    /// Blocks in flight that a worker runs now.
    count: u64,
    /// Those of them that run far longer than the task's median.
    stragglers: Vec<Straggler>,
}

impl<T: SchedulerTransport> RunScheduler<T> {
    /// What runs now, per task: the blocks workers report running that are in flight here
    /// at the attempt reported (a report may lag behind an outcome, or come from a worker
    /// whose batch went to another), each counted once. Logs and counts each new straggler.
    fn running_now(&mut self) -> Vec<RunningInTask> {
        let mut per_task: Vec<RunningInTask> =
            (0..self.pipeline.len()).map(|_| RunningInTask::default()).collect();
        self.stragglers.retain(|&(key, attempt)| {
            self.core.is_processing(key) && self.core.attempt(key) == attempt
        });
        let reported = self.transport.running_blocks();
        if reported.is_empty() {
            return per_task;
        }
        let rule = self.config.straggler_factor.map(|factor| StragglerRule { factor });
        let mut seen = HashSet::with_capacity(reported.len());
        let mut medians: Vec<Option<Option<f64>>> = vec![None; self.pipeline.len()];
        for block in reported {
            let Some(task) = self.pipeline.task_index(&block.task) else { continue };
            let grid = &self.pipeline.task(task).grid;
            if block.index >= grid.num_blocks() {
                continue;
            }
            let key = BlockKey { task, index: BlockIndex(block.index) };
            let live = self.core.is_processing(key) && self.core.attempt(key) == block.attempt;
            if !live || !seen.insert(key) {
                continue;
            }
            per_task[task.get()].count += 1;
            let Some(rule) = rule else { continue };
            let median =
                *medians[task.get()].get_or_insert_with(|| self.tasks[task.get()].times.median());
            let Some(median) = median else { continue };
            let running = Duration::from_millis(block.running_ms);
            if running <= rule.threshold(median) {
                continue;
            }
            let block_id = grid.block_id(&grid.grid_index(key.index)).0;
            let task_id = &self.pipeline.task(task).spec.id;
            let trace_id =
                daisy_telemetry::block_trace_id(&self.run_id, task_id.as_str(), block_id)
                    .to_string();
            let straggler = Straggler {
                block_id,
                attempt: block.attempt,
                worker: block.slot.to_string(),
                running_seconds: running.as_secs_f64(),
                median_seconds: median,
                trace_id,
            };
            if self.stragglers.insert((key, block.attempt)) {
                // The trace's mark too: the fields name the block's trace.
                warn!(
                    daisy.task = %task_id,
                    daisy.block_id = block_id,
                    daisy.trace_id = %straggler.trace_id,
                    attempt = block.attempt,
                    worker = %straggler.worker,
                    running_seconds = straggler.running_seconds,
                    median_seconds = median,
                    "straggler: block runs far longer than its task's median block time"
                );
                metrics::counter!("daisy_stragglers_total", "task" => task_id.to_string())
                    .increment(1);
                self.transport.straggler(task, block.index, block.attempt);
            }
            per_task[task.get()].stragglers.push(straggler);
        }
        per_task
    }
}

/// What a reported outcome means to the core.
fn outcome_of(outcome: OutcomeKind) -> Outcome {
    match outcome {
        OutcomeKind::Success => Outcome::Success,
        OutcomeKind::Skipped => Outcome::Skipped,
        OutcomeKind::Failed { kind: FailureKind::DeliveriesExhausted } => Outcome::Exhausted,
        OutcomeKind::Failed { .. } => Outcome::Failed,
    }
}

fn first_line(message: &str) -> &str {
    message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}
