//! The worker over NATS JetStream: learns the pipeline from the run's KV
//! bucket, pulls batches of blocks from one durable consumer per task, and
//! records every outcome in the event stream before acking the batch.
//!
//! ```text
//!  KV spec ──► pipeline ──► per task: BlockConsumer (AckWait = min(timeout, 30 s),
//!                                       MaxDeliver = max(max_retries, 1) + 1,
//!                                       MaxAckPending = max_workers)
//!  slot: permit (--slots) ─► fetch 1 batch
//!        (a redelivery: drop the blocks the record already holds for this message)
//!        ─► process (heartbeat +WPI) ─► publish Outcomes event(s) on
//!           event.task.<task>.<message sequence> (Nats-Msg-Id) ─► ack
//!           (stopped early: the unstarted blocks are handed back in the report)
//!  liveness: a key in the workers bucket, refreshed every TTL/3
//!  running: the blocks the slots run now, on core NATS (daisy.v1.<run>.running), on change
//!           (at most 4/s) and every second — the leader's `processing` and stragglers
//!  exit: when the run's status says finished or cancelled (unless --forever)
//! ```
//!
//! # Why a permit before the fetch
//! A worker holds a block only while a slot is free to run it. A block that
//! waited in a killed worker for a slot would be charged a delivery it never
//! ran; three such deaths (say, next to a poison block that kills its
//! workers) would fail an innocent block as poison. The slots of the tasks a
//! worker serves share its `--slots` permits: a slot long-polls for work
//! while no other slot waits for a permit, and only peeks (JetStream's
//! `no_wait` pull), then backs off without the permit, while one does.
//!
//! # Why record, then ack, and filter redeliveries
//! The event stream is the run's record. Acking first and crashing before
//! the record would lose an outcome; recording first and crashing before
//! the ack redelivers a batch whose outcomes are recorded — and the leader
//! may already have started the neighbours those blocks conflict with. So a
//! worker handed a redelivery reads what was recorded for that message (one
//! subject per dispatch message, read by subject from the stream leader)
//! and runs only the rest: a block whose success is recorded never starts
//! again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use daisy_core::{TaskIndex, parse_pipeline};
use daisy_nats::{BlockAcker, BlockConsumer, ConsumerSettings, Nats, RunStreams, WorkerInfo};
use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{Dispatch, Event, OutcomeReport, RunId, RunningReport, WorkerId};
use daisy_telemetry::metrics::{labels, names};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::runner::{HEARTBEAT_INTERVAL, WorkerSlot, WorkerTransport, WorkerTransportError};
use crate::running::{RunningBlocks, RunningSlot};
use crate::traces::BatchTrace;
use daisy_proto::subjects::TRACEPARENT_HEADER;

/// Builds the processor of one slot (the one factory type of both runtimes).
pub use crate::factory::ProcessorFactory as NatsProcessorFactory;

/// How a NATS worker runs.
#[derive(Debug, Clone)]
pub struct NatsWorkerOptions {
    /// The run to serve.
    pub run: RunId,
    /// Only these tasks (empty: every task).
    pub tasks: Vec<String>,
    /// How many blocks this process works on at once.
    pub slots: u32,
    /// Keep serving after the run finished.
    pub forever: bool,
    /// Prefix of this process's worker ids (e.g. `<host>-<pid>`).
    pub name: String,
    /// This host's name.
    pub host: String,
    /// How long a worker's liveness key lives without a refresh.
    pub liveness_ttl: Duration,
}

impl NatsWorkerOptions {
    /// Serving every task of `run` with `slots` slots until the run finishes, named after
    /// this process ([`daisy_nats::process_identity`]), with a 30 s liveness TTL.
    pub fn new(run: RunId, slots: u32) -> Self {
        let (host, name) = daisy_nats::process_identity();
        NatsWorkerOptions {
            run,
            tasks: Vec::new(),
            slots,
            forever: false,
            name,
            host,
            liveness_ttl: Duration::from_secs(30),
        }
    }
}

/// Why a NATS worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum NatsWorkerError {
    /// Talking to NATS failed.
    #[error("{what}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The run's pipeline, as published, is not valid.
    #[error("the pipeline of run '{run}' is not valid: {reason}")]
    BadSpec {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// A `--task` names no task of the pipeline.
    #[error("run '{run}' has no task '{task}' (its tasks: {known})")]
    UnknownTask {
        /// The run.
        run: RunId,
        /// The task asked for.
        task: String,
        /// The run's tasks.
        known: String,
    },
}

fn nats_error(
    what: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> NatsWorkerError {
    NatsWorkerError::Nats { what, source: source.into() }
}

/// Waits for the run to be published, then serves it until it finishes
/// (or forever, or until cancelled).
///
/// # Errors
/// [`NatsWorkerError`].
pub async fn run_nats_worker(
    nats: Nats,
    options: NatsWorkerOptions,
    factory: Arc<NatsProcessorFactory>,
    cancel: CancellationToken,
) -> Result<(), NatsWorkerError> {
    let Some((streams, spec)) = wait_for_run(&nats, &options.run, &cancel).await? else {
        return Ok(());
    };
    let specs = parse_pipeline(&spec).map_err(|e| NatsWorkerError::BadSpec {
        run: options.run.clone(),
        reason: e.to_string(),
    })?;
    let pipeline = Arc::new(daisy_core::Pipeline::new(specs).map_err(|e| {
        NatsWorkerError::BadSpec { run: options.run.clone(), reason: e.to_string() }
    })?);
    let tasks: Vec<TaskIndex> = if options.tasks.is_empty() {
        (0..pipeline.len()).map(|t| TaskIndex(t as u32)).collect()
    } else {
        options
            .tasks
            .iter()
            .map(|name| {
                pipeline.task_index(name).ok_or_else(|| NatsWorkerError::UnknownTask {
                    run: options.run.clone(),
                    task: name.clone(),
                    known: pipeline
                        .tasks()
                        .iter()
                        .map(|t| t.spec.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            })
            .collect::<Result<_, _>>()?
    };

    let finished = Arc::new(AtomicBool::new(false));
    let stop = cancel.child_token();
    let mut background = JoinSet::new();
    background.spawn(watch_finished(
        streams.clone(),
        finished.clone(),
        options.forever,
        stop.clone(),
    ));
    background.spawn(keep_alive(streams.clone(), options.clone(), stop.clone()));
    let running = RunningBlocks::default();
    background.spawn(report_running(
        nats.clone(),
        options.run.clone(),
        WorkerId(options.name.clone()),
        running.clone(),
        stop.clone(),
    ));

    let permits = Arc::new(SlotPermits::new(options.slots.max(1) as usize));
    let mut slots = JoinSet::new();
    for &task in &tasks {
        let spec = &pipeline.task(task).spec;
        let ack_wait = spec.timeout.min(MAX_ACK_WAIT);
        let settings = ConsumerSettings {
            ack_wait,
            // A batch is redelivered at least once after its worker
            // vanished, even with max_retries = 0.
            max_deliver: i64::from(spec.max_retries.max(1)) + 1,
            max_ack_pending: i64::from(spec.max_workers),
        };
        let consumer = BlockConsumer::ensure(&streams, &spec.id, settings)
            .await
            .map_err(|e| nats_error("creating a block consumer", e))?;
        let heartbeat = (ack_wait / 3).clamp(Duration::from_millis(200), HEARTBEAT_INTERVAL);
        let unsettled = Arc::new(Unsettled::default());
        // More slots than the task may use at once would only sit idle.
        for slot in 0..options.slots.max(1).min(spec.max_workers) {
            let worker_id = WorkerId(format!("{}-{}-{slot}", options.name, spec.id));
            let transport = NatsWorkerTransport {
                nats: nats.clone(),
                streams: streams.clone(),
                run: options.run.clone(),
                task_id: spec.id.clone(),
                consumer: consumer.clone(),
                permits: permits.clone(),
                finished: finished.clone(),
                current: None,
                heartbeat,
                ack_wait,
                worker: worker_id.clone(),
                unsettled: unsettled.clone(),
                running: running.slot(worker_id.clone(), spec.id.as_str()),
            };
            let worker = WorkerSlot {
                pipeline: pipeline.clone(),
                task,
                worker_id,
                processor: factory(&pipeline, task, slot),
                transport,
            };
            slots.spawn(worker.run(stop.clone()));
        }
    }
    info!(run = %options.run, tasks = tasks.len(), slots = options.slots, "worker serving the run");
    let mut result = Ok(());
    while let Some(joined) = slots.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let cause =
                    std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
                error!(error = %err, %cause, "worker slot stopped");
                result = Err(nats_error("worker slot", err));
                stop.cancel();
            }
            Err(err) => error!(error = %err, "worker slot panicked"),
        }
    }
    stop.cancel();
    while background.join_next().await.is_some() {}
    let worker = WorkerId(options.name.clone());
    if let Err(err) = streams.unregister_worker(&worker).await {
        debug!(error = %err, "could not remove the liveness key");
    }
    info!(run = %options.run, "worker done");
    result
}

/// [`run_nats_worker`], started only once `start` is cancelled (nothing if `stop` comes
/// first). Workers that share a process with a scheduler replica start when it leads (see
/// `daisy_scheduler::nats::signal_leading`): blocks an earlier session left queued must be
/// read by the replica's replay as in flight, not run and recorded before it, which would
/// count them as done in that earlier session.
///
/// # Errors
/// As [`run_nats_worker`].
pub async fn run_nats_worker_from(
    start: CancellationToken,
    nats: Nats,
    options: NatsWorkerOptions,
    factory: Arc<NatsProcessorFactory>,
    stop: CancellationToken,
) -> Result<(), NatsWorkerError> {
    tokio::select! {
        () = start.cancelled() => {}
        () = stop.cancelled() => return Ok(()),
    }
    run_nats_worker(nats, options, factory, stop).await
}

/// Waits until the run's streams and spec exist (a worker may start before
/// the scheduler).
async fn wait_for_run(
    nats: &Nats,
    run: &RunId,
    cancel: &CancellationToken,
) -> Result<Option<(RunStreams, String)>, NatsWorkerError> {
    let mut announced = false;
    loop {
        if let Ok(streams) = nats.open_run(run).await {
            match streams.get_spec().await {
                Ok(Some(spec)) => return Ok(Some((streams, spec))),
                Ok(None) => {}
                Err(err) => warn!(run = %run, error = %err, "could not read the run's spec"),
            }
        }
        if !announced {
            info!(run = %run, "waiting for a scheduler to publish the run");
            announced = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn watch_finished(
    streams: RunStreams,
    finished: Arc<AtomicBool>,
    forever: bool,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Ok(Some(status)) = streams.get_status().await
            && (status.finished || status.cancelled)
            && !forever
        {
            finished.store(true, Ordering::Relaxed);
        }
    }
}

async fn keep_alive(streams: RunStreams, options: NatsWorkerOptions, stop: CancellationToken) {
    let worker = WorkerId(options.name.clone());
    let info = WorkerInfo {
        host: options.host.clone(),
        pid: std::process::id(),
        tasks: options.tasks.clone(),
        slots: options.slots,
    };
    loop {
        if let Err(err) = streams.register_worker(&worker, &info).await {
            debug!(error = %err, "could not refresh the liveness key");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(options.liveness_ttl / 3) => {}
        }
    }
}

/// How often the running reporter looks for a change: changes are coalesced to at most
/// this many reports a second per process, whatever the block rate.
const RUNNING_CHECK: Duration = Duration::from_millis(250);

/// A running report goes out at least this often, changed or not: the leader forgets a
/// worker whose reports stop (`daisy_scheduler::nats` keeps them for a few of these).
pub const RUNNING_HEARTBEAT: Duration = Duration::from_secs(1);

/// Tells the leader which blocks this process's slots run now ([`RunningReport`], core
/// NATS): on change, checked every [`RUNNING_CHECK`], and every [`RUNNING_HEARTBEAT`]. A
/// failed send is retried by the next one.
async fn report_running(
    nats: Nats,
    run: RunId,
    worker: WorkerId,
    running: RunningBlocks,
    stop: CancellationToken,
) {
    let mut check = tokio::time::interval(RUNNING_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_changes = None;
    let mut last_sent = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = check.tick() => {}
        }
        let changes = running.changes();
        if last_changes == Some(changes) && last_sent.elapsed() < RUNNING_HEARTBEAT {
            continue;
        }
        let report = RunningReport { worker: worker.clone(), blocks: running.snapshot() };
        match nats.publish_running(&run, &report).await {
            Ok(()) => {
                last_changes = Some(changes);
                last_sent = tokio::time::Instant::now();
            }
            Err(err) => debug!(error = %err, "could not report the running blocks"),
        }
    }
}

/// How long a worker keeps trying to record outcomes while NATS is
/// unreachable before it gives up (the batch is then redelivered and the
/// slot goes on).
const RECORD_PATIENCE: Duration = Duration::from_secs(60);

/// The longest AckWait: a worker that vanished has its batch redelivered
/// after this long at most, however long the task's timeout is. Workers
/// heartbeat much more often, and the processor itself enforces the
/// timeout, so a slow block is never redelivered while it runs.
const MAX_ACK_WAIT: Duration = Duration::from_secs(30);

/// How long a slot waits for work while no other slot wants its permit.
const LONG_POLL: Duration = Duration::from_millis(500);

/// The longest pause of a slot whose task had no work while others wanted
/// the permits.
const MAX_IDLE_BACKOFF: Duration = Duration::from_millis(500);

/// The worker's `--slots`, shared by the slots of every task it serves.
struct SlotPermits {
    semaphore: Arc<Semaphore>,
    /// Task slots waiting for a permit right now.
    waiting: AtomicUsize,
}

/// Counts a slot as waiting for as long as it exists (also when the wait is
/// cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SlotPermits {
    fn new(slots: usize) -> Self {
        SlotPermits { semaphore: Arc::new(Semaphore::new(slots)), waiting: AtomicUsize::new(0) }
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        self.semaphore.clone().acquire_owned().await.ok()
    }

    /// Whether another slot is waiting for a permit.
    fn contended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

struct CurrentBatch {
    /// The dispatch's trace context (its `traceparent` header), sent again with the outcome
    /// events so that they join the batch's trace.
    trace_headers: Option<daisy_nats::HeaderMap>,
    /// What the block spans of the batch need.
    trace: BatchTrace,
    acker: BlockAcker,
    /// The dispatch message's sequence in the block stream.
    sequence: u64,
    /// Which delivery of it this is.
    delivery: u64,
    /// Until when the delivery is surely this worker's: the last confirmed heartbeat (or the
    /// fetch) plus AckWait, less a margin. After it, JetStream may have handed the batch to
    /// another worker.
    held_until: tokio::time::Instant,
    /// The event-stream sequence of the last event this worker stored on the batch's
    /// subject (its claim, then its outcome parts): the next part expects it, so nothing is
    /// recorded once another worker claimed the batch.
    last_subject_sequence: u64,
    _permit: OwnedSemaphorePermit,
}

/// What became of one outcome part.
enum Recorded {
    /// Stored.
    Stored,
    /// Not stored, maybe: kept to be settled before a redelivery is read.
    Unconfirmed,
    /// Refused: another worker claimed the batch since (or a retried copy was stored).
    Refused,
}

struct NatsWorkerTransport {
    nats: Nats,
    streams: RunStreams,
    run: RunId,
    task_id: daisy_core::TaskId,
    consumer: BlockConsumer,
    permits: Arc<SlotPermits>,
    finished: Arc<AtomicBool>,
    current: Option<CurrentBatch>,
    heartbeat: Duration,
    /// The consumer's AckWait.
    ack_wait: Duration,
    /// The slot's worker id (claims name it).
    worker: WorkerId,
    /// Outcomes this worker's slots of the task published without a confirmation.
    unsettled: Arc<Unsettled>,
    /// Where the slot marks the block it runs (see [`report_running`]).
    running: RunningSlot,
}

/// Outcome events a worker published without a confirmation, per dispatch message: they may
/// be stored or not. Before the worker reads the record of a redelivery it publishes them
/// again (same message ids, so a stored one is not stored twice): then the record holds
/// them for sure, and the blocks they name do not run again.
#[derive(Default)]
struct Unsettled {
    events: std::sync::Mutex<std::collections::HashMap<u64, Vec<Event>>>,
}

impl Unsettled {
    /// The most dispatch messages remembered (an old entry is dropped past it).
    const CAPACITY: usize = 1024;

    fn remember(&self, sequence: u64, events: Vec<Event>) {
        let mut map = self.events.lock().expect("never poisoned: no panics inside");
        if map.len() >= Self::CAPACITY
            && let Some(&oldest) = map.keys().min()
        {
            map.remove(&oldest);
        }
        map.entry(sequence).or_default().extend(events);
    }

    fn take(&self, sequence: u64) -> Vec<Event> {
        let mut map = self.events.lock().expect("never poisoned: no panics inside");
        map.remove(&sequence).unwrap_or_default()
    }
}

impl NatsWorkerTransport {
    /// How long a delivery is surely held from a confirmed fetch or heartbeat at `now`.
    fn held_from(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        now + self.ack_wait - self.ack_wait / 5
    }

    /// Drops from a dispatch the blocks whose outcome an earlier delivery recorded (or
    /// handed back): their effect happened, or the scheduler dispatched them again. Then
    /// claims the delivery in the record, so that of two workers handed the same delivery
    /// (a nats-server that restarted may hand a message out twice) only one runs it.
    /// Returns `None` if the batch is not this worker's to run now (another worker holds
    /// it, or the record cannot be read): it is left to be redelivered, not run blind.
    async fn filter_recorded(
        &self,
        mut dispatch: Dispatch,
        sequence: u64,
        delivery: u64,
        acker: &BlockAcker,
    ) -> Option<(Dispatch, u64)> {
        let mut delay = Duration::from_millis(100);
        let mut failures = 0;
        // An outcome this worker published while the server was away may still sit in the
        // client's buffer (its acknowledgement failed, the bytes go out on reconnect): send
        // it before reading the record, which would miss it otherwise.
        if let Err(err) = self.nats.flush().await {
            debug!(task = %self.task_id, error = %err, "could not flush before reading the record");
        }
        loop {
            let record = match self.streams.batch_record(&self.task_id, sequence).await {
                Ok(record) => record,
                Err(err) if failures < 5 => {
                    debug!(task = %self.task_id, sequence, error = %err, "could not read the record of a batch, retrying");
                    failures += 1;
                    let _ = acker.progress().await;
                    tokio::time::sleep(delay.min(self.heartbeat)).await;
                    delay *= 2;
                    continue;
                }
                Err(err) => {
                    warn!(task = %self.task_id, sequence, error = %err, "could not read the record of a batch: leaving it for a redelivery");
                    return None;
                }
            };
            let done: HashSet<u64> = record
                .reports
                .iter()
                .flat_map(|report| {
                    report
                        .results
                        .iter()
                        .map(|result| result.index)
                        .chain(report.returned.iter().copied())
                })
                .collect();
            let before = dispatch.blocks.len();
            dispatch.blocks.retain(|block| !done.contains(&block.index));
            if delivery > 1 || dispatch.blocks.len() < before {
                info!(task = %self.task_id, sequence, recorded = before - dispatch.blocks.len(), to_run = dispatch.blocks.len(), "redelivered batch filtered against the record");
            }
            if dispatch.blocks.is_empty() {
                return Some((dispatch, record.last_sequence));
            }
            // A claim of this delivery (or a later one) by another worker: it runs the rest.
            if let Some((claimed, holder)) =
                record.claims.iter().max_by_key(|(claimed, _)| *claimed)
                && *claimed >= delivery
                && *holder != self.worker
            {
                info!(task = %self.task_id, sequence, delivery, %holder, "batch held by another worker: leaving it to it");
                return None;
            }
            let claim = Event::BatchClaimed {
                task: self.task_id.to_string(),
                dispatch_sequence: sequence,
                delivery,
                worker: self.worker.clone(),
            };
            match self
                .nats
                .publish_claim(&self.run, &self.task_id, sequence, &claim, record.last_sequence)
                .await
            {
                // A duplicate is this worker's own claim, stored by an earlier try.
                Ok(claimed) => {
                    return self
                        .settle_unconfirmed(dispatch, sequence, claimed.stream_sequence)
                        .await;
                }
                // Someone recorded or claimed in between: read again.
                Err(err) if err.is_wrong_last_sequence() => continue,
                Err(err) if failures < 5 => {
                    debug!(task = %self.task_id, sequence, error = %err, "could not claim a batch, retrying");
                    failures += 1;
                    let _ = acker.progress().await;
                    tokio::time::sleep(delay.min(self.heartbeat)).await;
                    delay *= 2;
                }
                Err(err) => {
                    warn!(task = %self.task_id, sequence, error = %err, "could not claim a batch: leaving it for a redelivery");
                    return None;
                }
            }
        }
    }

    /// Publishes again, once this worker holds the claim of `sequence`, the outcomes it
    /// published for it without a confirmation (same message ids: a stored one is not
    /// stored twice), and drops their blocks from `dispatch`: they ran, and their outcomes
    /// are recorded now. Returns `None` (leave the batch) if they cannot be stored now.
    async fn settle_unconfirmed(
        &self,
        mut dispatch: Dispatch,
        sequence: u64,
        claimed_at: u64,
    ) -> Option<(Dispatch, u64)> {
        let unsettled = self.unsettled.take(sequence);
        if unsettled.is_empty() {
            return Some((dispatch, claimed_at));
        }
        let mut last_subject_sequence = claimed_at;
        let mut settled = HashSet::new();
        for event in &unsettled {
            let msg_id = MsgId::for_event(&self.run, event);
            let scope = EventScope::Batch(&self.task_id, sequence);
            match self.nats.publish_event(&self.run, scope, event, &msg_id, None).await {
                Ok(published) => {
                    last_subject_sequence = last_subject_sequence.max(published.stream_sequence);
                }
                Err(err) => {
                    warn!(task = %self.task_id, sequence, error = %err, "could not settle unconfirmed outcomes: leaving the batch for a redelivery");
                    self.unsettled.remember(sequence, unsettled);
                    return None;
                }
            }
            if let Event::Outcomes(report) = event {
                settled.extend(report.results.iter().map(|result| result.index));
                settled.extend(report.returned.iter().copied());
            }
        }
        dispatch.blocks.retain(|block| !settled.contains(&block.index));
        info!(task = %self.task_id, sequence, events = unsettled.len(), to_run = dispatch.blocks.len(), "unconfirmed outcomes of this worker settled before running a redelivery");
        Some((dispatch, last_subject_sequence))
    }

    /// Publishes one part of a report until it is stored, for up to [`RECORD_PATIENCE`].
    async fn record(
        &self,
        event: &Event,
        headers: Option<daisy_nats::HeaderMap>,
        current: &mut CurrentBatch,
    ) -> Recorded {
        let sequence = current.sequence;
        let msg_id = MsgId::for_event(&self.run, event);
        let scope = EventScope::Batch(&self.task_id, sequence);
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + RECORD_PATIENCE;
        loop {
            if tokio::time::Instant::now() >= current.held_until {
                warn!(task = %self.task_id, sequence, "the batch's delivery lapsed while recording: the rest is not recorded");
                return Recorded::Unconfirmed;
            }
            let expected = current.last_subject_sequence;
            let published = self
                .nats
                .publish_event_fenced(&self.run, scope, event, &msg_id, headers.clone(), expected)
                .await;
            match published {
                Ok(published) => {
                    current.last_subject_sequence = published.stream_sequence;
                    return Recorded::Stored;
                }
                Err(err) if err.is_wrong_last_sequence() => {
                    // Another worker claimed the batch since, or an earlier try of this part
                    // was stored after all: either way the record speaks for it now.
                    warn!(task = %self.task_id, sequence, "the batch's record moved on: the rest of its outcomes is not recorded");
                    return Recorded::Refused;
                }
                Err(err) if tokio::time::Instant::now() < deadline && !err.is_too_large() => {
                    warn!(task = %self.task_id, error = %err, "recording outcomes failed, retrying");
                    // Keep the delivery: a worker that lost it must not record.
                    let _ = current.acker.progress().await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(err) => {
                    error!(task = %self.task_id, error = %err, "could not record outcomes: the batch will be redelivered");
                    return Recorded::Unconfirmed;
                }
            }
        }
    }
}

/// Splits a report into parts whose events fit in `max_bytes` each (halving the results
/// until they do); the blocks handed back ride with the last part.
fn split_report(report: OutcomeReport, max_bytes: usize) -> Vec<OutcomeReport> {
    let size = |report: &OutcomeReport| daisy_proto::encode(&Event::Outcomes(report.clone())).len();
    let mut parts = Vec::new();
    let mut pending = vec![report];
    while let Some(report) = pending.pop() {
        if report.results.len() <= 1 || size(&report) <= max_bytes {
            parts.push(report);
            continue;
        }
        let mut second = report.clone();
        let mut first = report;
        second.results = first.results.split_off(first.results.len() / 2);
        first.returned = Vec::new();
        // Counted once, with the first part.
        second.worker_restarts = 0;
        // Popped last-in-first-out: keep the order of the results.
        pending.push(second);
        pending.push(first);
    }
    for (number, part) in parts.iter_mut().enumerate() {
        part.part = u32::try_from(number).unwrap_or(u32::MAX);
    }
    parts
}

impl WorkerTransport for NatsWorkerTransport {
    async fn next_dispatch(&mut self) -> Option<Dispatch> {
        let mut backoff = Duration::ZERO;
        loop {
            if self.finished.load(Ordering::Relaxed) {
                return None;
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            // The permit first: see "Why a permit before the fetch".
            let permit = self.permits.acquire().await?;
            let contended = self.permits.contended();
            let fetched = if contended {
                self.consumer.fetch_now(1).await
            } else {
                self.consumer.fetch(1, LONG_POLL).await
            };
            let mut received = match fetched {
                Ok(received) => received,
                Err(err) => {
                    warn!(task = %self.task_id, error = %err, "fetching blocks failed");
                    drop(permit);
                    backoff = Duration::from_millis(500);
                    continue;
                }
            };
            let Some(message) = received.pop() else {
                backoff = if contended {
                    (backoff * 2).clamp(Duration::from_millis(10), MAX_IDLE_BACKOFF)
                } else {
                    Duration::ZERO
                };
                continue;
            };
            backoff = Duration::ZERO;
            match message.dispatch {
                Ok(dispatch) if dispatch.task != self.task_id.as_str() => {
                    // Only a forged message can name another task on this task's subject.
                    warn!(task = %self.task_id, named = %dispatch.task, sequence = message.stream_sequence, "dispatch naming another task terminated");
                    metrics::counter!(names::BAD_MESSAGES_TOTAL, labels::STREAM => "block")
                        .increment(1);
                    let _ = message.acker.term().await;
                    let _ = self.streams.delete_block_message(message.stream_sequence).await;
                }
                Ok(mut dispatch) => {
                    let sequence = message.stream_sequence;
                    let fetched_at = tokio::time::Instant::now();
                    if message.delivered > 1 {
                        warn!(task = %self.task_id, delivery = message.delivered, blocks = dispatch.blocks.len(), "batch redelivered: its last worker vanished");
                    }
                    // Every delivery, not only redeliveries: a server killed hard may count
                    // a redelivery as the first.
                    let Some((rest, last_subject_sequence)) = self
                        .filter_recorded(dispatch, sequence, message.delivered, &message.acker)
                        .await
                    else {
                        continue;
                    };
                    if rest.blocks.is_empty() {
                        if let Err(err) = message.acker.ack().await {
                            debug!(task = %self.task_id, error = %err, "could not ack a recorded batch");
                        }
                        continue;
                    }
                    if tokio::time::Instant::now() >= self.held_from(fetched_at) {
                        // Reading and claiming took longer than the delivery is surely ours.
                        warn!(task = %self.task_id, sequence, "the batch's delivery lapsed before it started: leaving it for a redelivery");
                        continue;
                    }
                    dispatch = rest;
                    let link = daisy_nats::trace::context_of(message.headers.as_ref());
                    debug!(task = %self.task_id, sequence, delivery = message.delivered, blocks = ?dispatch.blocks.iter().map(|b| b.index).collect::<Vec<_>>(), trace = ?link.as_ref().map(|cx| cx.trace_id()), "batch received");
                    let trace_headers = link.as_ref().and_then(|_| {
                        let value = message.headers.as_ref()?.get(TRACEPARENT_HEADER)?;
                        let mut headers = daisy_nats::HeaderMap::new();
                        headers.insert(TRACEPARENT_HEADER, value.as_str());
                        Some(headers)
                    });
                    self.current = Some(CurrentBatch {
                        trace_headers,
                        trace: BatchTrace {
                            run: self.run.to_string(),
                            batch: sequence,
                            delivery: message.delivered,
                            published: message.published,
                            link,
                        },
                        acker: message.acker,
                        sequence,
                        delivery: message.delivered,
                        held_until: self.held_from(fetched_at),
                        last_subject_sequence,
                        _permit: permit,
                    });
                    return Some(dispatch);
                }
                Err(err) => {
                    warn!(task = %self.task_id, sequence = message.stream_sequence, error = %err, "undecodable block message terminated");
                    metrics::counter!(names::BAD_MESSAGES_TOTAL, labels::STREAM => "block")
                        .increment(1);
                    let _ = message.acker.term().await;
                    let _ = self.streams.delete_block_message(message.stream_sequence).await;
                }
            }
        }
    }

    /// Records the outcomes (split into parts that fit in a message), then acks the batch:
    /// blocks not started were handed back in the report, so the batch is done with either
    /// way and never nak'ed (a nak would charge a delivery for a graceful stop).
    async fn report(&mut self, mut report: OutcomeReport) -> Result<(), WorkerTransportError> {
        let Some(mut current) = self.current.take() else { return Ok(()) };
        if tokio::time::Instant::now() >= current.held_until {
            // Another worker may be running these blocks now: recording them (or handing
            // some back) could let the leader move on while that worker still runs them.
            warn!(task = %self.task_id, sequence = current.sequence, "the batch's delivery lapsed: its outcomes are not recorded, the batch is redelivered");
            return Ok(());
        }
        report.dispatch_sequence = current.sequence;
        report.delivery = current.delivery;
        let headers = current.trace_headers.clone();
        // Room for the headers and the subject.
        let max_bytes = self.nats.max_payload().saturating_sub(4096).max(1024);
        let parts: Vec<Event> =
            split_report(report, max_bytes).into_iter().map(Event::Outcomes).collect();
        for (number, event) in parts.iter().enumerate() {
            match self.record(event, headers.clone(), &mut current).await {
                Recorded::Stored => {}
                // Not acked: the batch is redelivered. The parts not confirmed may still be
                // stored (an acknowledgement lost, a publish sent on reconnect): kept, to be
                // settled before this worker reads the record of the redelivery.
                Recorded::Unconfirmed => {
                    self.unsettled.remember(current.sequence, parts[number..].to_vec());
                    return Ok(());
                }
                Recorded::Refused => return Ok(()),
            }
        }
        daisy_nats::fault::STOP_AFTER_RECORD.pass();
        if let Err(err) = current.acker.ack().await {
            // The outcomes are recorded; a redelivery runs none of them again.
            warn!(task = %self.task_id, error = %err, "could not ack a batch");
        }
        Ok(())
    }

    async fn heartbeat(&mut self) {
        let now = tokio::time::Instant::now();
        let held_from = self.held_from(now);
        if let Some(current) = &mut self.current {
            let sent = current.acker.progress().await;
            if sent.is_ok() {
                metrics::counter!(names::HEARTBEATS_TOTAL, labels::TASK => self.task_id.to_string()).increment(1);
            }
            match sent {
                // Confirmed by the server: the delivery is ours for another AckWait.
                // A hold that lapsed is never revived: the server may have handed the
                // batch to another worker, and a confirmed heartbeat does not say whose
                // delivery it renewed.
                Ok(()) if now < current.held_until => {
                    current.held_until = current.held_until.max(held_from);
                }
                Ok(()) => {}
                Err(err) => debug!(task = %self.task_id, error = %err, "heartbeat failed"),
            }
        }
    }

    fn batch_trace(&self) -> Option<BatchTrace> {
        self.current.as_ref().map(|current| current.trace.clone())
    }

    fn still_held(&self) -> bool {
        self.current.as_ref().is_none_or(|current| tokio::time::Instant::now() < current.held_until)
    }

    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    fn running_slot(&self) -> Option<RunningSlot> {
        Some(self.running.clone())
    }
}

#[cfg(test)]
mod tests {
    use daisy_proto::{BlockResult, FailureKind, OutcomeKind};

    use super::*;

    fn failed(index: u64, error_bytes: usize) -> BlockResult {
        BlockResult {
            index,
            attempt: 1,
            outcome: OutcomeKind::Failed { kind: FailureKind::Failed },
            error: Some("e".repeat(error_bytes)),
            seconds: 0.0,
        }
    }

    #[test]
    fn a_report_too_large_for_one_message_is_split_in_order_and_every_part_fits() {
        // 1,024 fast-failing blocks with 8 KiB error tails: 8 MiB, far over a 1 MiB payload.
        let report = OutcomeReport {
            task: "t".into(),
            results: (0..1024).map(|index| failed(index, 8 * 1024)).collect(),
            returned: vec![2000, 2001],
            worker_restarts: 3,
            dispatch_sequence: 9,
            delivery: 1,
            ..OutcomeReport::default()
        };
        let max_bytes = 1024 * 1024 - 4096;
        let parts = split_report(report, max_bytes);
        assert!(parts.len() >= 8, "{} parts", parts.len());
        for (number, part) in parts.iter().enumerate() {
            assert!(daisy_proto::encode(&Event::Outcomes(part.clone())).len() <= max_bytes);
            assert_eq!(part.part as usize, number);
        }
        let indices: Vec<u64> =
            parts.iter().flat_map(|p| p.results.iter().map(|r| r.index)).collect();
        assert_eq!(indices, (0..1024).collect::<Vec<_>>(), "every result once, in order");
        let returned: Vec<u64> = parts.iter().flat_map(|p| p.returned.clone()).collect();
        assert_eq!(returned, vec![2000, 2001], "handed back once");
        let restarts: u32 = parts.iter().map(|p| p.worker_restarts).sum();
        assert_eq!(restarts, 3, "restarts counted once");
        let ids: HashSet<String> = parts
            .iter()
            .map(|p| {
                MsgId::for_event(&RunId::new("r").unwrap(), &Event::Outcomes(p.clone())).to_string()
            })
            .collect();
        assert_eq!(ids.len(), parts.len(), "each part is its own event");
    }

    #[test]
    fn a_small_report_is_one_part() {
        let report = OutcomeReport { results: vec![failed(1, 10)], ..OutcomeReport::default() };
        assert_eq!(split_report(report.clone(), 1 << 20), vec![report]);
    }
}
