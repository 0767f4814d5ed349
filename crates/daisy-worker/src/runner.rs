//! The worker loop: takes batches of blocks from a transport, has a
//! processor run them on a blocking thread, reports the outcomes.
//!
//! ```text
//!  transport ──Dispatch──► WorkerSlot ──spawn_blocking──► BlockProcessor
//!      ▲                      │  (heartbeats while a batch runs)  │ check, process
//!      └──────OutcomeReport───┘◄───────────── results ────────────┘
//! ```
//!
//! # Task policy
//! One slot is one task (`task = "worker.slot"`). A transport error ends
//! the slot with an error; a block's failure is just an outcome. On cancel
//! the slot stops between blocks: blocks of the batch not yet started are
//! handed back in the report ([`OutcomeReport::returned`]), so the
//! scheduler dispatches only them again, with no attempt counted.
//!
//! # Why batches
//! A no-op block takes microseconds; a message per block would cap a run at
//! the transport's message rate. The scheduler sizes batches to ~100 ms of
//! work, so per-batch costs (a thread hop, a message) vanish.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use daisy_core::{BlockId, BlockIndex, Pipeline, Roi, TaskIndex};
use daisy_proto::{BlockResult, Dispatch, FailureKind, OutcomeKind, OutcomeReport, WorkerId};
use daisy_telemetry::metrics::{labels, names};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::process::{BlockFailure, BlockLine, BlockRoi, CheckProcess, Processor};
use crate::running::RunningSlot;
use crate::traces::{BatchTrace, BlockTiming};

/// One block as a processor sees it (shaped like Daisy's `Block`).
#[derive(Debug, Clone)]
pub struct WorkBlock {
    /// The task's id.
    pub task_id: Arc<str>,
    /// Daisy's block id.
    pub block_id: BlockId,
    /// The block's dense index in its task's grid.
    pub index: BlockIndex,
    /// What the block reads.
    pub read_roi: Roi,
    /// What the block writes.
    pub write_roi: Roi,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// How long the attempt may take.
    pub timeout: Duration,
}

impl WorkBlock {
    /// The JSON-lines protocol form of the block.
    pub fn to_line(&self) -> BlockLine {
        let roi =
            |roi: &Roi| BlockRoi { offset: roi.offset().to_vec(), shape: roi.shape().to_vec() };
        BlockLine {
            task: self.task_id.to_string(),
            block_id: self.block_id.0,
            read_roi: roi(&self.read_roi),
            write_roi: roi(&self.write_roi),
            attempt: self.attempt,
        }
    }
}

/// Why an attempt failed, as a processor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    /// The kind the scheduler decides on.
    pub kind: FailureKind,
    /// Text for people.
    pub message: String,
}

/// A user process's failure, as is: the process module reports the wire's kinds.
impl From<BlockFailure> for ProcessError {
    fn from(BlockFailure { kind, message }: BlockFailure) -> Self {
        Self { kind, message }
    }
}

/// Runs blocks: a Rust closure, a user's process, or anything else.
/// Processors run on blocking threads, one block at a time per slot.
pub trait BlockProcessor: Send + 'static {
    /// Whether the block is already done (Daisy's `check_function`); the
    /// default has no check.
    ///
    /// # Errors
    /// A failed check is logged and the block processed.
    fn check(&mut self, _block: &WorkBlock) -> Result<bool, ProcessError> {
        Ok(false)
    }

    /// Processes one block.
    ///
    /// # Errors
    /// The attempt failed; the kind decides retries and restarts.
    fn process(&mut self, block: &WorkBlock) -> Result<(), ProcessError>;

    /// Worker process restarts so far (0 for in-process code).
    fn restarts(&self) -> u64 {
        0
    }

    /// Whether `process` itself stops an attempt at the block's timeout (a
    /// child process is killed). In-process code cannot be stopped: an
    /// attempt that overran is counted as a timeout when it returns.
    fn enforces_timeout(&self) -> bool {
        false
    }

    /// Whether [`BlockProcessor::check`] runs anything (a check span is recorded then).
    fn has_check(&self) -> bool {
        false
    }

    /// The log files a block's output goes to, named on its process span.
    fn log_paths(&self) -> Vec<String> {
        Vec::new()
    }

    /// Stops any child process; called once when the slot ends.
    fn shutdown(&mut self) {}
}

impl BlockProcessor for Box<dyn BlockProcessor> {
    fn check(&mut self, block: &WorkBlock) -> Result<bool, ProcessError> {
        (**self).check(block)
    }
    fn process(&mut self, block: &WorkBlock) -> Result<(), ProcessError> {
        (**self).process(block)
    }
    fn restarts(&self) -> u64 {
        (**self).restarts()
    }
    fn enforces_timeout(&self) -> bool {
        (**self).enforces_timeout()
    }
    fn has_check(&self) -> bool {
        (**self).has_check()
    }
    fn log_paths(&self) -> Vec<String> {
        (**self).log_paths()
    }
    fn shutdown(&mut self) {
        (**self).shutdown();
    }
}

/// The processor of a pipeline-file task: a `worker =` or `command =`
/// process, with an optional `check =` process.
pub struct CommandProcessor {
    processor: Processor,
    check: Option<CheckProcess>,
    /// The slot's stdout and stderr logs, named on the block's process span.
    logs: Option<[std::path::PathBuf; 2]>,
}

impl CommandProcessor {
    /// Wraps processes built from the pipeline file.
    pub fn new(processor: Processor, check: Option<CheckProcess>) -> Self {
        Self { processor, check, logs: None }
    }

    /// Names the slot's stdout and stderr logs (on the traces of its blocks).
    pub fn with_logs(mut self, logs: [std::path::PathBuf; 2]) -> Self {
        self.logs = Some(logs);
        self
    }
}

impl BlockProcessor for CommandProcessor {
    fn check(&mut self, block: &WorkBlock) -> Result<bool, ProcessError> {
        match &mut self.check {
            Some(check) => Ok(check.check(&block.to_line(), block.timeout)?),
            None => Ok(false),
        }
    }

    fn process(&mut self, block: &WorkBlock) -> Result<(), ProcessError> {
        Ok(self.processor.process(&block.to_line(), block.timeout)?)
    }

    fn restarts(&self) -> u64 {
        self.processor.restarts()
    }

    fn enforces_timeout(&self) -> bool {
        true
    }

    fn has_check(&self) -> bool {
        self.check.is_some()
    }

    fn log_paths(&self) -> Vec<String> {
        self.logs.iter().flatten().map(|path| path.display().to_string()).collect()
    }

    fn shutdown(&mut self) {
        self.processor.shutdown(Duration::from_secs(5));
    }
}

/// A transport failure on the worker side.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct WorkerTransportError {
    /// What the transport was doing.
    pub what: &'static str,
    /// Why it failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The worker's side of a transport, for one task.
pub trait WorkerTransport: Send {
    /// The next batch of blocks; `None` when the task has no more work.
    fn next_dispatch(&mut self) -> impl Future<Output = Option<Dispatch>> + Send;

    /// Sends (and, for durable transports, records) the outcomes of a batch.
    fn report(
        &mut self,
        report: OutcomeReport,
    ) -> impl Future<Output = Result<(), WorkerTransportError>> + Send;

    /// Tells the transport the current batch is still being worked on
    /// (JetStream in-progress acks); called every [`HEARTBEAT_INTERVAL`].
    fn heartbeat(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Where the slot marks the block it starts, so the scheduler learns what runs now
    /// (its `processing` count, stragglers); `None` (the default) tells nobody.
    fn running_slot(&self) -> Option<RunningSlot> {
        None
    }

    /// How often to heartbeat while a batch runs.
    fn heartbeat_interval(&self) -> Duration {
        HEARTBEAT_INTERVAL
    }

    /// Whether the current batch is still this slot's: a durable transport may hand a batch
    /// whose heartbeats lapsed (the process was paused, the server unreachable) to another
    /// worker. The slot then starts no further block of it.
    fn still_held(&self) -> bool {
        true
    }

    /// Where the current batch's block spans go (the run, the batch's stream sequence);
    /// `None` records none.
    fn batch_trace(&self) -> Option<BatchTrace> {
        None
    }
}

/// How often a slot heartbeats while a batch runs.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// One worker slot of one task.
pub struct WorkerSlot<P, T> {
    /// The pipeline, to turn block indices into ROIs and ids.
    pub pipeline: Arc<Pipeline>,
    /// The task this slot works for.
    pub task: TaskIndex,
    /// The slot's unique name.
    pub worker_id: WorkerId,
    /// What runs the blocks.
    pub processor: P,
    /// Where blocks come from and outcomes go.
    pub transport: T,
}

impl<P: BlockProcessor, T: WorkerTransport> WorkerSlot<P, T> {
    /// Processes batches until the transport has no more or `cancel` fires.
    ///
    /// # Errors
    /// A transport failure.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WorkerTransportError> {
        let WorkerSlot { pipeline, task, worker_id, processor, mut transport } = self;
        let task_id: Arc<str> = Arc::from(pipeline.task(task).spec.id.as_str());
        let timeout = pipeline.task(task).spec.timeout;
        let stop = Arc::new(AtomicBool::new(false));
        let mut processor = Some(processor);
        let mut reported_restarts = 0u64;
        let running_slot = transport.running_slot();
        // Resolved once: a no-op block must not pay a label lookup.
        let durations =
            metrics::histogram!(names::BLOCK_DURATION_SECONDS, labels::TASK => task_id.to_string());
        let restarts_counter =
            metrics::counter!(names::PROCESS_RESTARTS_TOTAL, labels::TASK => task_id.to_string());
        loop {
            let dispatch = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                dispatch = transport.next_dispatch() => dispatch,
            };
            let Some(dispatch) = dispatch else { break };
            if dispatch.task != *task_id {
                warn!(expected = %task_id, got = %dispatch.task, "dispatch for another task dropped");
                continue;
            }
            let grid = &pipeline.task(task).grid;
            let blocks: Vec<WorkBlock> = dispatch
                .blocks
                .iter()
                .filter(|work| work.index < grid.num_blocks())
                .map(|work| {
                    let k = grid.grid_index(BlockIndex(work.index));
                    WorkBlock {
                        task_id: task_id.clone(),
                        block_id: grid.block_id(&k),
                        index: BlockIndex(work.index),
                        read_roi: grid.read_roi(&k),
                        write_roi: grid.write_roi(&k),
                        attempt: work.attempt,
                        timeout,
                    }
                })
                .collect();
            debug!(task = %task_id, blocks = blocks.len(), "batch received");
            // Block spans: only when exported and the transport names the batch.
            let trace =
                daisy_telemetry::blocks::enabled().then(|| transport.batch_trace()).flatten();
            let mut heartbeats = Vec::new();
            let mut running = processor.take().expect("the processor is back after every batch");
            let stop_flag = stop.clone();
            let slot = running_slot.clone();
            let timed = trace.is_some();
            let traced_blocks = timed.then(|| {
                let level = |block: &WorkBlock| grid.level(&grid.grid_index(block.index));
                blocks.iter().map(|block| (block.clone(), level(block))).collect::<Vec<_>>()
            });
            let mut batch = tokio::task::spawn_blocking(move || {
                let mut timings = timed.then(Vec::new);
                let results =
                    run_batch(&mut running, &blocks, &stop_flag, slot.as_ref(), timings.as_mut());
                (running, (results, timings))
            });
            let mut heartbeat = tokio::time::interval(transport.heartbeat_interval());
            heartbeat.tick().await;
            let (returned, results) = loop {
                tokio::select! {
                    biased;
                    joined = &mut batch => match joined {
                        Ok(done) => break done,
                        Err(err) => {
                            // run_batch catches panics per block, so this is a bug.
                            return Err(WorkerTransportError { what: "running a batch", source: err.into() });
                        }
                    },
                    () = cancel.cancelled(), if !stop.load(Ordering::Relaxed) => stop.store(true, Ordering::Relaxed),
                    _ = heartbeat.tick() => {
                        transport.heartbeat().await;
                        if trace.is_some() {
                            heartbeats.push(std::time::SystemTime::now());
                        }
                        if !transport.still_held() && !stop.load(Ordering::Relaxed) {
                            warn!(task = %task_id, "the batch may be another worker's now: starting no further block of it");
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            };
            let (results, timings) = results;
            let restarts = returned.restarts();
            let spans = trace.zip(timings).zip(traced_blocks).map(|((trace, timings), blocks)| {
                (trace, timings, blocks, returned.has_check(), returned.log_paths())
            });
            processor = Some(returned);
            results.iter().for_each(|result| durations.record(f64::from(result.seconds)));
            restarts_counter.increment(restarts - reported_restarts);
            // Blocks not started (the slot was stopped) go back to the scheduler.
            let returned = dispatch
                .blocks
                .iter()
                .map(|work| work.index)
                .filter(|index| !results.iter().any(|result| result.index == *index))
                .collect();
            let report = OutcomeReport {
                task: task_id.to_string(),
                worker: worker_id.clone(),
                results,
                worker_restarts: u32::try_from(restarts - reported_restarts).unwrap_or(u32::MAX),
                epoch: dispatch.epoch,
                returned,
                ..OutcomeReport::default()
            };
            reported_restarts = restarts;
            let results = spans.as_ref().map(|_| report.results.clone());
            let recording = std::time::SystemTime::now();
            transport.report(report).await?;
            if let (Some((trace, timings, blocks, has_check, logs)), Some(results)) =
                (spans, results)
            {
                let recorded = (recording, std::time::SystemTime::now());
                crate::traces::emit_batch(
                    &trace,
                    &worker_id,
                    &blocks,
                    &results,
                    &timings,
                    &heartbeats,
                    recorded,
                    has_check,
                    &logs,
                );
            }
        }
        if let Some(mut processor) = processor {
            let _ = tokio::task::spawn_blocking(move || processor.shutdown()).await;
        }
        Ok(())
    }
}

/// Runs a batch on the current (blocking) thread, stopping between blocks
/// when `stop` is set.
fn run_batch<P: BlockProcessor>(
    processor: &mut P,
    blocks: &[WorkBlock],
    stop: &AtomicBool,
    running: Option<&RunningSlot>,
    mut timings: Option<&mut Vec<BlockTiming>>,
) -> Vec<BlockResult> {
    let mut results = Vec::with_capacity(blocks.len());
    for block in blocks {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(running) = running {
            running.started(block.index.0, block.attempt);
        }
        let started = Instant::now();
        let mut timing = timings.as_ref().map(|_| BlockTiming::start());
        let outcome = run_block(processor, block, timing.as_mut());
        if let (Some(timings), Some(mut timing)) = (timings.as_deref_mut(), timing) {
            timing.end = std::time::SystemTime::now();
            timings.push(timing);
        }
        let seconds = started.elapsed().as_secs_f32();
        let (outcome, error) = match outcome {
            Ok(outcome) => (outcome, None),
            Err(err) => (OutcomeKind::Failed { kind: err.kind }, Some(error_tail(err.message))),
        };
        results.push(BlockResult {
            index: block.index.0,
            attempt: block.attempt,
            outcome,
            error,
            seconds,
        });
    }
    if let Some(running) = running {
        running.idle();
    }
    results
}

fn run_block<P: BlockProcessor>(
    processor: &mut P,
    block: &WorkBlock,
    timing: Option<&mut BlockTiming>,
) -> Result<OutcomeKind, ProcessError> {
    let checked = catch_unwind(AssertUnwindSafe(|| processor.check(block)));
    if let Some(timing) = timing {
        timing.checked = std::time::SystemTime::now();
    }
    match checked {
        Ok(Ok(true)) => return Ok(OutcomeKind::Skipped),
        Ok(Ok(false)) => {}
        Ok(Err(err)) => {
            warn!(task = %block.task_id, block_id = %block.block_id, error = %err.message, "check failed, processing the block");
        }
        Err(panic) => {
            warn!(task = %block.task_id, block_id = %block.block_id, error = %panic_message(&panic), "check panicked, processing the block");
        }
    }
    let started = Instant::now();
    match catch_unwind(AssertUnwindSafe(|| processor.process(block))) {
        Ok(Ok(())) if !processor.enforces_timeout() && started.elapsed() > block.timeout => {
            Err(ProcessError {
                kind: FailureKind::Timeout,
                message: format!(
                    "the block took {:.1}s, longer than the task's timeout of {:.1}s (in-process code cannot be killed, so it ran to the end; its result is not trusted)",
                    started.elapsed().as_secs_f64(),
                    block.timeout.as_secs_f64()
                ),
            })
        }
        Ok(Ok(())) => Ok(OutcomeKind::Success),
        Ok(Err(err)) => Err(err),
        Err(panic) => {
            Err(ProcessError { kind: FailureKind::Panicked, message: panic_message(&panic) })
        }
    }
}

/// The most bytes of an error text a result carries: its tail, where a traceback ends.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// The last [`MAX_ERROR_BYTES`] of an error text (cut at a character boundary).
fn error_tail(mut message: String) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return message;
    }
    let mut start = message.len() - MAX_ERROR_BYTES;
    while !message.is_char_boundary(start) {
        start += 1;
    }
    message.replace_range(..start, "…");
    message
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        format!("panicked: {text}")
    } else if let Some(text) = panic.downcast_ref::<String>() {
        format!("panicked: {text}")
    } else {
        "panicked".to_owned()
    }
}
