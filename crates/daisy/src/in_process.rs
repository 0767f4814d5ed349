//! The in-process transport: bounded channels between the scheduler actor
//! and worker slots (tokio tasks running processors on blocking threads),
//! and a journal file as the durable record.
//!
//! ```text
//!  RunScheduler ──dispatch──► async_channel per task (cap 2 × max_workers) ──► WorkerSlot × max_workers
//!       ▲                                                                           │
//!       └── journal.append, then apply ◄── mpsc reports (cap ≥ all batches in flight) ┘
//! ```
//!
//! The channels form a cycle, so neither direction may block on the other:
//! the scheduler dispatches only while a task has fewer batches in flight
//! than its channel holds (so sending never waits), and the report channel
//! holds every batch that can be in flight (so workers never wait).

use std::path::PathBuf;
use std::sync::Arc;

use daisy_core::{Pipeline, TaskIndex};
use daisy_proto::{Dispatch, Event, OutcomeReport, WorkerId, layout_hash};
use daisy_scheduler::{
    BatchId, Input, ReplayedOutcomes, RunReport, RunScheduler, RunSnapshot, SchedulerConfig,
    SchedulerError, SchedulerTransport, TransportError,
};
use daisy_worker::factory::ProcessorFactory;
use daisy_worker::runner::{WorkerSlot, WorkerTransport, WorkerTransportError};
use daisy_worker::running::{RunningBlocks, RunningSlot};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::journal::{Journal, JournalError};

/// Batches per worker slot that may wait in a task's channel.
const BATCHES_PER_WORKER: usize = 2;

/// Where and how an in-process run records itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The directory holding the run's journal (e.g. `.daisy/<run-id>`);
    /// `None` records nothing (no resume).
    pub run_dir: Option<PathBuf>,
    /// Discard what an earlier session recorded and start over.
    pub fresh: bool,
    /// Scheduler tuning.
    pub scheduler: SchedulerConfig,
}

/// Why an in-process run could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The journal cannot be used (locked, layout changed, I/O).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The scheduler stopped.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// A dispatch with the id the scheduler knows it by.
type NumberedDispatch = (BatchId, Dispatch);

struct InProcessTransport {
    dispatch: Vec<async_channel::Sender<NumberedDispatch>>,
    capacity: Vec<usize>,
    reports: mpsc::Receiver<OutcomeReport>,
    journal: Option<Journal>,
    /// The id of the last batch dispatched (ids start at 1: 0 names no batch).
    last_batch: u64,
    /// What the worker slots run now (they mark each block as they start it).
    running: RunningBlocks,
}

/// Every worker slot of a task stopped while the scheduler still dispatches to it.
#[derive(Debug, thiserror::Error)]
#[error("every worker of the task has stopped")]
struct WorkersStopped;

fn journal_error(err: JournalError) -> TransportError {
    TransportError::new("recording to the journal", err)
}

impl SchedulerTransport for InProcessTransport {
    async fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> Result<BatchId, TransportError> {
        self.last_batch += 1;
        let batch = BatchId(self.last_batch);
        self.dispatch[task.get()]
            .send((batch, dispatch))
            .await
            .map_err(|_| TransportError::new("dispatching blocks", WorkersStopped))?;
        Ok(batch)
    }

    async fn next_input(&mut self) -> Result<Input, TransportError> {
        let Some(report) = self.reports.recv().await else { return Ok(Input::Closed) };
        if let Some(journal) = &mut self.journal {
            let event = Event::Outcomes(report);
            journal.append(&event).map_err(journal_error)?;
            let Event::Outcomes(report) = event else { unreachable!("built just above") };
            return Ok(Input::Outcomes(report));
        }
        Ok(Input::Outcomes(report))
    }

    async fn record(&mut self, event: &Event) -> Result<(), TransportError> {
        match &mut self.journal {
            Some(journal) => journal.append(event).map_err(journal_error),
            None => Ok(()),
        }
    }

    fn running_blocks(&mut self) -> Vec<daisy_proto::RunningBlock> {
        self.running.snapshot()
    }

    fn batch_capacity(&self, task: TaskIndex) -> usize {
        self.capacity[task.get()]
    }

    fn close_task(&mut self, task: TaskIndex) {
        self.dispatch[task.get()].close();
    }
}

struct InProcessWorkerTransport {
    dispatch: async_channel::Receiver<NumberedDispatch>,
    reports: mpsc::Sender<OutcomeReport>,
    /// The batch being worked on.
    current: BatchId,
    /// Where the slot marks the block it starts.
    running: Option<RunningSlot>,
}

impl WorkerTransport for InProcessWorkerTransport {
    async fn next_dispatch(&mut self) -> Option<Dispatch> {
        let (batch, dispatch) = self.dispatch.recv().await.ok()?;
        self.current = batch;
        Some(dispatch)
    }

    async fn report(&mut self, mut report: OutcomeReport) -> Result<(), WorkerTransportError> {
        report.dispatch_sequence = self.current.0;
        // The scheduler stops reading once every block is settled (or the
        // task was abandoned); a late report then has nobody to tell, and
        // the slot ends when its closed channel runs dry.
        let _ = self.reports.send(report).await;
        Ok(())
    }

    fn running_slot(&self) -> Option<RunningSlot> {
        self.running.clone()
    }
}

/// The name of a worker slot of an in-process run: `<task>-<pid>-<slot>`.
fn worker_id(pipeline: &Pipeline, task: TaskIndex, slot: u32) -> WorkerId {
    WorkerId(format!("{}-{}-{slot}", pipeline.task(task).spec.id, std::process::id()))
}

/// A prepared in-process run: the journal is open (so a locked or changed
/// run is refused before anything starts) and progress can be watched.
pub struct InProcessRun {
    pipeline: Arc<Pipeline>,
    scheduler: RunScheduler<InProcessTransport>,
    workers: Vec<(TaskIndex, u32, InProcessWorkerTransport)>,
    resumed_blocks: u64,
}

impl InProcessRun {
    /// Opens the journal, replays it and wires scheduler and workers.
    ///
    /// # Errors
    /// [`RunError::Journal`] if the journal cannot be used.
    pub fn prepare(pipeline: Arc<Pipeline>, options: RunOptions) -> Result<Self, RunError> {
        let (journal, events) = match &options.run_dir {
            Some(dir) => {
                let (journal, events) = Journal::open(dir, &layout_hash(&pipeline), options.fresh)?;
                (Some(journal), events)
            }
            None => (None, Vec::new()),
        };
        let resumed_blocks = events
            .iter()
            .map(|event| match event {
                Event::Outcomes(report) => report
                    .results
                    .iter()
                    .filter(|r| !matches!(r.outcome, daisy_proto::OutcomeKind::Failed { .. }))
                    .count() as u64,
                _ => 0,
            })
            .sum();
        let mut senders = Vec::new();
        let mut capacity = Vec::new();
        let mut workers = Vec::new();
        let mut report_capacity = 16;
        let mut receivers = Vec::new();
        for (position, task) in pipeline.tasks().iter().enumerate() {
            let slots = task.spec.max_workers as usize;
            let batches = slots * BATCHES_PER_WORKER;
            let (tx, rx) = async_channel::bounded(batches);
            senders.push(tx);
            capacity.push(batches);
            receivers.push((TaskIndex(position as u32), slots, rx));
            report_capacity += batches + slots;
        }
        let (report_tx, report_rx) = mpsc::channel(report_capacity);
        let running = RunningBlocks::default();
        for (task, slots, rx) in receivers {
            let task_id = pipeline.task(task).spec.id.as_str();
            for slot in 0..slots as u32 {
                let running = running.slot(worker_id(&pipeline, task, slot), task_id);
                workers.push((
                    task,
                    slot,
                    InProcessWorkerTransport {
                        dispatch: rx.clone(),
                        reports: report_tx.clone(),
                        current: BatchId(0),
                        running: Some(running),
                    },
                ));
            }
        }
        drop(report_tx);
        let transport = InProcessTransport {
            dispatch: senders,
            capacity,
            reports: report_rx,
            journal,
            last_batch: 0,
            running,
        };
        // The run dir is named after the run id (`.daisy/<run-id>`): the trace ids of
        // stragglers then match those of a NATS run of the same id.
        let run_id = options
            .run_dir
            .as_deref()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scheduler = RunScheduler::new(
            pipeline.clone(),
            transport,
            options.scheduler,
            ReplayedOutcomes { events, ..ReplayedOutcomes::default() },
        )
        .with_run_id(&run_id);
        Ok(Self { pipeline, scheduler, workers, resumed_blocks })
    }

    /// How many block outcomes an earlier session recorded as done.
    pub fn resumed_blocks(&self) -> u64 {
        self.resumed_blocks
    }

    /// Live snapshots of the run.
    pub fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        self.scheduler.subscribe()
    }

    /// Runs every block, with processors made by `factory`, until done or
    /// cancelled.
    ///
    /// # Errors
    /// [`RunError::Scheduler`] if the run cannot go on.
    pub async fn run(
        self,
        factory: &ProcessorFactory,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let InProcessRun { pipeline, scheduler, workers, .. } = self;
        let mut slots = JoinSet::new();
        let worker_cancel = cancel.child_token();
        for (task, slot, transport) in workers {
            let worker_id = worker_id(&pipeline, task, slot);
            let worker = WorkerSlot {
                pipeline: pipeline.clone(),
                task,
                worker_id,
                processor: factory(&pipeline, task, slot),
                transport,
            };
            slots.spawn(worker.run(worker_cancel.clone()));
        }
        info!(slots = slots.len(), "worker slots started");
        let result = scheduler.run(cancel.clone()).await;
        // The scheduler closed every task's channel; slots end after their
        // current batch (or at once when cancelled).
        if result.is_err() {
            worker_cancel.cancel();
        }
        while let Some(joined) = slots.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => error!(error = %err, "worker slot stopped with an error"),
                Err(err) => error!(error = %err, "worker slot panicked"),
            }
        }
        Ok(result?)
    }
}
