//! Fast tests of [`RunScheduler`] against a fake transport, under paused tokio time.
//!
//! ```text
//!            Step::Input / Step::Barrier              Dispatched (with its BatchId)
//!   test ────────────────────────────► FakeTransport ──────────────────────────► test
//!     ▲                                   │    ▲                                  │
//!     │      Effect (recorded events,     │    │ lost: batches the test declared  │
//!     └──── removals, purges, closes, ◄───┘    └──── gone from the block stream ◄─┘
//!            reclaim checks)
//! ```
//!
//! The test feeds the actor its inputs and sees everything it does on the wire. A barrier
//! step tells the test when the actor has applied every input sent before it and dispatched
//! what became ready, so no test waits on the clock; time moves only when a test advances it
//! (reclaim checks, drain deadlines).
//!
//! Beside the transport, [`World`] models the workers and the record, and checks on every
//! dispatch what a user of `read_write_conflict` relies on:
//! * a block whose success is recorded is never dispatched again;
//! * a block is never dispatched while a worker holds it;
//! * a block is dispatched only after every block it waits for (its task's conflicting
//!   neighbours of the previous level, the upstream tasks' blocks it reads) succeeded;
//! * every dispatch carries the actor's epoch.
//!
//! Tests named `bug_..` reproduce a bug of the actor found while writing these; they are
//! kept as regression tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daisy_core::{BlockIndex, BlockKey, Pipeline, TaskIndex, parse_pipeline};
use daisy_proto::{
    BlockResult, BlockWork, Dispatch, Event, FailureKind, OutcomeKind, OutcomeReport, RunningBlock,
    WorkerId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    BatchId, Input, QueuedBatch, ReplayMode, ReplayedOutcomes, RunReport, RunScheduler,
    RunSnapshot, SchedulerConfig, SchedulerError, SchedulerTransport, TransportError,
};

mod running_tests;

/// The longest any wait may take, in paused time: a test that would hang fails instead.
const PATIENCE: Duration = Duration::from_secs(3600);

/// The fixed clock of recorded events.
const UNIX_MS: u64 = 1_700_000_000_000;

/// The run id the actor derives trace ids from.
const RUN_ID: &str = "run-x";

/// How long a batch must be missing before it is reclaimed: two checks this far apart.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);

/// 1-D, two conflicting blocks: the level-1 block waits for the level-0 one.
const TWO_BLOCKS: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [4] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
read_write_conflict = true
command = ["true"]
"#;

/// 1-D, eight conflicting blocks in two levels of four.
const ROW: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [10] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
read_write_conflict = true
command = ["true"]
"#;

/// 2-D, 10 × 10 conflicting blocks in four levels of 25; one worker.
const GRID: &str = r#"
[[task]]
id = "c"
total_roi = { offset = [0, 0], shape = [12, 12] }
read_roi = { offset = [0, 0], shape = [3, 3] }
write_roi = { offset = [1, 1], shape = [1, 1] }
read_write_conflict = true
command = ["true"]
"#;

/// `a` (1-D) feeds `b` (1-D); `c` (2-D, 6 × 6 blocks) stands alone.
const THREE_TASKS: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [8] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
read_write_conflict = true
max_worker_restarts = 2
command = ["true"]

[[task]]
id = "b"
total_roi = { offset = [0], shape = [8] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
read_write_conflict = true
upstream = ["a"]
command = ["true"]

[[task]]
id = "c"
total_roi = { offset = [0, 0], shape = [8, 8] }
read_roi = { offset = [0, 0], shape = [3, 3] }
write_roi = { offset = [1, 1], shape = [1, 1] }
read_write_conflict = true
max_workers = 2
command = ["true"]
"#;

fn pipeline(toml: &str) -> Arc<Pipeline> {
    let specs = parse_pipeline(toml).expect("the test pipeline parses");
    Arc::new(Pipeline::new(specs).expect("the test pipeline is valid"))
}

fn task(pipeline: &Pipeline, id: &str) -> TaskIndex {
    pipeline.task_index(id).expect("the task exists")
}

/// The dense indices of the blocks of one level of a task, in the order the core hands
/// them out.
fn level(pipeline: &Pipeline, task: TaskIndex, level: usize) -> Vec<u64> {
    let grid = &pipeline.task(task).grid;
    (0..grid.level_size(level))
        .map(|n| grid.dense_index(&grid.nth_block_of_level(level, n)).0)
        .collect()
}

fn fixed_clock() -> u64 {
    UNIX_MS
}

fn success(index: u64, attempt: u32) -> BlockResult {
    BlockResult { index, attempt, outcome: OutcomeKind::Success, error: None, seconds: 0.001 }
}

fn failure(index: u64, attempt: u32, kind: FailureKind) -> BlockResult {
    BlockResult {
        index,
        attempt,
        outcome: OutcomeKind::Failed { kind },
        error: Some(format!("block {index} attempt {attempt}: {kind}")),
        seconds: 0.001,
    }
}

/// A worker's report of the first delivery of `batch`, in one part.
fn report(task: &str, batch: BatchId, results: Vec<BlockResult>) -> OutcomeReport {
    OutcomeReport {
        task: task.to_owned(),
        worker: WorkerId::from("fake-worker"),
        results,
        dispatch_sequence: batch.0,
        delivery: 1,
        ..OutcomeReport::default()
    }
}

fn started(epoch: u64) -> Event {
    Event::RunStarted { layout_hash: "recorded".into(), unix_ms: UNIX_MS, epoch }
}

fn abandoned(task: &str, epoch: u64) -> Event {
    Event::TaskAbandoned {
        task: task.to_owned(),
        reason: format!("abandoned by the leader of epoch {epoch}"),
        epoch,
    }
}

/// One dispatch the actor made.
#[derive(Debug, Clone)]
struct Dispatched {
    task: TaskIndex,
    batch: BatchId,
    dispatch: Dispatch,
}

impl Dispatched {
    fn indices(&self) -> Vec<u64> {
        self.dispatch.blocks.iter().map(|block| block.index).collect()
    }
}

/// Everything else the actor asks of its transport.
#[derive(Debug, Clone, PartialEq)]
enum Effect {
    Recorded(Event),
    Removed(TaskIndex, BatchId),
    Purged(TaskIndex),
    Closed(TaskIndex),
    /// A reclaim check asked about these batches (sorted).
    LostChecked(Vec<BatchId>),
}

/// What the test sends down the input channel.
enum Step {
    Input(Input),
    /// Answered when the actor reads it: everything sent before is applied, and what
    /// became ready is dispatched.
    Barrier(oneshot::Sender<()>),
}

/// An in-memory transport driven by the test.
///
/// Its channels are unbounded: the actor and the test share one thread, and the test drains
/// them only at barriers, so a bounded channel could block the actor forever; a test sends
/// and receives a few hundred messages at most.
struct FakeTransport {
    steps: mpsc::UnboundedReceiver<Step>,
    dispatches: mpsc::UnboundedSender<Dispatched>,
    effects: mpsc::UnboundedSender<Effect>,
    /// Batches gone from the block stream without an outcome, as the test declared.
    lost: Arc<Mutex<HashSet<BatchId>>>,
    /// The id of the last batch dispatched; ids start at 101, clear of replayed ones.
    last_batch: u64,
    capacity: usize,
    /// What workers report running, as the test sets it.
    running: Arc<Mutex<Vec<RunningBlock>>>,
}

impl SchedulerTransport for FakeTransport {
    async fn dispatch(
        &mut self,
        task: TaskIndex,
        dispatch: Dispatch,
    ) -> Result<BatchId, TransportError> {
        self.last_batch += 1;
        let batch = BatchId(self.last_batch);
        let _ = self.dispatches.send(Dispatched { task, batch, dispatch });
        Ok(batch)
    }

    async fn next_input(&mut self) -> Result<Input, TransportError> {
        loop {
            match self.steps.recv().await {
                Some(Step::Input(input)) => return Ok(input),
                Some(Step::Barrier(reached)) => {
                    let _ = reached.send(());
                }
                None => return Ok(Input::Closed),
            }
        }
    }

    async fn record(&mut self, event: &Event) -> Result<(), TransportError> {
        let _ = self.effects.send(Effect::Recorded(event.clone()));
        Ok(())
    }

    async fn remove_batch(&mut self, task: TaskIndex, batch: BatchId) {
        let _ = self.effects.send(Effect::Removed(task, batch));
    }

    async fn purge_task(&mut self, task: TaskIndex) {
        let _ = self.effects.send(Effect::Purged(task));
    }

    async fn lost_batches(&mut self, batches: &[BatchId]) -> Result<Vec<BatchId>, TransportError> {
        let mut asked = batches.to_vec();
        asked.sort();
        let _ = self.effects.send(Effect::LostChecked(asked));
        let lost = self.lost.lock().expect("the lost set is never poisoned");
        Ok(batches.iter().copied().filter(|batch| lost.contains(batch)).collect())
    }

    fn running_blocks(&mut self) -> Vec<RunningBlock> {
        self.running.lock().expect("the running list is never poisoned").clone()
    }

    fn batch_capacity(&self, _task: TaskIndex) -> usize {
        self.capacity
    }

    fn close_task(&mut self, task: TaskIndex) {
        let _ = self.effects.send(Effect::Closed(task));
    }
}

/// The workers and the record, as far as the tests need them; checks every dispatch.
#[derive(Default)]
struct World {
    /// Blocks whose success (or skip) is recorded.
    succeeded: HashSet<BlockKey>,
    /// Blocks a worker holds: by which batch, at which attempt.
    held: HashMap<BlockKey, (BatchId, u32)>,
    /// Every attempt each block was dispatched at, in order.
    attempts: HashMap<BlockKey, Vec<u32>>,
}

impl World {
    /// Starts from what a replay hands the actor.
    fn from_record(pipeline: &Pipeline, replayed: &ReplayedOutcomes) -> Self {
        let mut world = World::default();
        for event in &replayed.events {
            if let Event::Outcomes(report) = event {
                let task = task(pipeline, &report.task);
                for result in &report.results {
                    if matches!(result.outcome, OutcomeKind::Success | OutcomeKind::Skipped) {
                        world.succeeded.insert(BlockKey { task, index: BlockIndex(result.index) });
                    }
                }
            }
        }
        // A queued batch's worker runs only the blocks its message has no record of.
        let settled = |batch: BatchId, index: u64| {
            replayed.events.iter().any(|event| match event {
                Event::Outcomes(report) if report.dispatch_sequence == batch.0 => {
                    report.results.iter().any(|r| r.index == index)
                        || report.returned.contains(&index)
                }
                _ => false,
            })
        };
        for queued in &replayed.in_flight {
            let task = task(pipeline, &queued.dispatch.task);
            for block in &queued.dispatch.blocks {
                let key = BlockKey { task, index: BlockIndex(block.index) };
                if !world.succeeded.contains(&key) && !settled(queued.batch, block.index) {
                    world.held.insert(key, (queued.batch, block.attempt));
                }
            }
        }
        world
    }

    fn dispatched(&mut self, pipeline: &Pipeline, epoch: u64, dispatched: &Dispatched) {
        let id = &pipeline.task(dispatched.task).spec.id;
        assert_eq!(dispatched.dispatch.task, id.as_str(), "a dispatch names its task");
        assert_eq!(dispatched.dispatch.epoch, epoch, "a dispatch carries the actor's epoch");
        assert!(!dispatched.dispatch.blocks.is_empty(), "a dispatch holds blocks");
        for block in &dispatched.dispatch.blocks {
            let key = BlockKey { task: dispatched.task, index: BlockIndex(block.index) };
            assert!(
                !self.succeeded.contains(&key),
                "block {} of {id} dispatched again (batch {}) after its success was recorded",
                block.index,
                dispatched.batch,
            );
            if let Some((holder, attempt)) = self.held.get(&key) {
                panic!(
                    "block {} of {id} dispatched (batch {}, attempt {}) while batch {holder} \
                     holds it at attempt {attempt}",
                    block.index, dispatched.batch, block.attempt,
                );
            }
            let waits = pipeline.try_for_each_upstream(key, |up| {
                if self.succeeded.contains(&up) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            });
            assert!(
                waits.is_continue(),
                "block {} of {id} dispatched before every block it waits for succeeded",
                block.index,
            );
            self.held.insert(key, (dispatched.batch, block.attempt));
            self.attempts.entry(key).or_default().push(block.attempt);
        }
    }

    /// A report of `batch` is recorded: its worker lets go of the blocks it names.
    fn reported(&mut self, task: TaskIndex, report: &OutcomeReport) {
        let batch = BatchId(report.dispatch_sequence);
        let indices = report.results.iter().map(|r| r.index).chain(report.returned.iter().copied());
        for index in indices {
            let key = BlockKey { task, index: BlockIndex(index) };
            if self.held.get(&key).is_some_and(|(holder, _)| *holder == batch) {
                self.held.remove(&key);
            }
        }
        for result in &report.results {
            if matches!(result.outcome, OutcomeKind::Success | OutcomeKind::Skipped) {
                self.succeeded.insert(BlockKey { task, index: BlockIndex(result.index) });
            }
        }
    }

    /// No worker holds `batch` any more (it was filtered to nothing, or lost).
    fn let_go(&mut self, batch: BatchId) {
        self.held.retain(|_, (holder, _)| *holder != batch);
    }

    /// The batches workers hold, with their blocks.
    fn held_batches(&self) -> BTreeMap<BatchId, (TaskIndex, Vec<BlockWork>)> {
        let mut batches: BTreeMap<BatchId, (TaskIndex, Vec<BlockWork>)> = BTreeMap::new();
        for (key, (batch, attempt)) in &self.held {
            let entry = batches.entry(*batch).or_insert_with(|| (key.task, Vec::new()));
            entry.1.push(BlockWork { index: key.index.0, attempt: *attempt });
        }
        for (_, blocks) in batches.values_mut() {
            blocks.sort_by_key(|block| block.index);
        }
        batches
    }

    fn attempts_of(&self, task: TaskIndex, index: u64) -> &[u32] {
        self.attempts.get(&BlockKey { task, index: BlockIndex(index) }).map_or(&[], Vec::as_slice)
    }
}

/// How a test starts the actor.
struct Setup {
    replayed: ReplayedOutcomes,
    epoch: u64,
    /// Batches in flight per task.
    capacity: usize,
    config: SchedulerConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            replayed: ReplayedOutcomes::default(),
            epoch: 0,
            capacity: 1,
            config: SchedulerConfig {
                unix_ms: fixed_clock,
                reclaim_interval: RECLAIM_INTERVAL,
                ..SchedulerConfig::default()
            },
        }
    }
}

/// A running actor wired to a fake transport, and the test's side of it.
struct Harness {
    pipeline: Arc<Pipeline>,
    epoch: u64,
    steps: mpsc::UnboundedSender<Step>,
    dispatches: mpsc::UnboundedReceiver<Dispatched>,
    effects_rx: mpsc::UnboundedReceiver<Effect>,
    lost: Arc<Mutex<HashSet<BatchId>>>,
    /// What the transport says workers run.
    running: Arc<Mutex<Vec<RunningBlock>>>,
    /// The actor's live snapshots.
    snapshots: watch::Receiver<RunSnapshot>,
    cancel: CancellationToken,
    actor: JoinHandle<Result<RunReport, SchedulerError>>,
    world: World,
    /// Dispatches seen since the test last took them.
    new_dispatches: Vec<Dispatched>,
    /// Effects seen since the test last took them.
    effects: Vec<Effect>,
}

impl Harness {
    fn start(pipeline: Arc<Pipeline>, setup: Setup) -> Self {
        let (steps, steps_rx) = mpsc::unbounded_channel();
        let (dispatches_tx, dispatches) = mpsc::unbounded_channel();
        let (effects_tx, effects_rx) = mpsc::unbounded_channel();
        let lost = Arc::new(Mutex::new(HashSet::new()));
        let running = Arc::new(Mutex::new(Vec::new()));
        let transport = FakeTransport {
            steps: steps_rx,
            dispatches: dispatches_tx,
            effects: effects_tx,
            lost: lost.clone(),
            last_batch: 100,
            capacity: setup.capacity,
            running: running.clone(),
        };
        let world = World::from_record(&pipeline, &setup.replayed);
        let actor = RunScheduler::new(pipeline.clone(), transport, setup.config, setup.replayed)
            .with_epoch(setup.epoch)
            .with_run_id(RUN_ID);
        let snapshots = actor.subscribe();
        let cancel = CancellationToken::new();
        let actor = tokio::spawn(actor.run(cancel.clone()));
        Self {
            pipeline,
            epoch: setup.epoch,
            steps,
            dispatches,
            effects_rx,
            lost,
            running,
            snapshots,
            cancel,
            actor,
            world,
            new_dispatches: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn task(&self, id: &str) -> TaskIndex {
        task(&self.pipeline, id)
    }

    /// Sends a report, as recorded by its worker.
    fn send(&mut self, report: OutcomeReport) {
        let task = self.task(&report.task);
        self.world.reported(task, &report);
        self.input(Input::Outcomes(report));
    }

    fn input(&mut self, input: Input) {
        // A stopped actor drops inputs; `finish` tells whether it stopped as it should.
        let _ = self.steps.send(Step::Input(input));
    }

    /// Waits until the actor has applied every input sent so far and dispatched what became
    /// ready; collects (and checks) what it did. Returns whether the actor still runs.
    async fn settle(&mut self) -> bool {
        let (reached, wait) = oneshot::channel();
        let running = self.steps.send(Step::Barrier(reached)).is_ok()
            && tokio::time::timeout(PATIENCE, wait)
                .await
                .expect("the actor reads its inputs")
                .is_ok();
        self.collect();
        running
    }

    fn collect(&mut self) {
        while let Ok(dispatched) = self.dispatches.try_recv() {
            self.world.dispatched(&self.pipeline, self.epoch, &dispatched);
            self.new_dispatches.push(dispatched);
        }
        while let Ok(effect) = self.effects_rx.try_recv() {
            self.effects.push(effect);
        }
    }

    /// What was dispatched since the last call, once the actor settled.
    async fn dispatched(&mut self) -> Vec<Dispatched> {
        self.settle().await;
        std::mem::take(&mut self.new_dispatches)
    }

    /// The one batch dispatched since the last call.
    async fn one_batch(&mut self) -> Dispatched {
        let mut dispatched = self.dispatched().await;
        assert_eq!(dispatched.len(), 1, "one batch dispatched: {dispatched:?}");
        dispatched.remove(0)
    }

    fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Waits (in paused time) for the actor's next reclaim check.
    async fn next_lost_check(&mut self) -> Vec<BatchId> {
        loop {
            let effect = tokio::time::timeout(PATIENCE, self.effects_rx.recv())
                .await
                .expect("a reclaim check comes")
                .expect("the actor runs");
            self.effects.push(effect.clone());
            if let Effect::LostChecked(batches) = effect {
                return batches;
            }
        }
    }

    /// Declares `batch` gone from the block stream without an outcome: no worker holds it.
    fn lose(&mut self, batch: BatchId) {
        self.lost.lock().expect("the lost set is never poisoned").insert(batch);
        self.world.let_go(batch);
    }

    /// Reports success for every batch workers hold but `except`, until only those are
    /// left (or the actor stopped).
    async fn succeed_all_except(&mut self, except: &[BatchId]) {
        while self.settle().await {
            self.new_dispatches.clear();
            let batches: Vec<_> = self
                .world
                .held_batches()
                .into_iter()
                .filter(|(batch, _)| !except.contains(batch))
                .collect();
            if batches.is_empty() {
                return;
            }
            for (batch, (task, blocks)) in batches {
                let id = self.pipeline.task(task).spec.id.to_string();
                let results = blocks.iter().map(|b| success(b.index, b.attempt)).collect();
                self.send(report(&id, batch, results));
            }
        }
    }

    /// Reports success for everything dispatched until the actor stops; returns its report.
    async fn succeed_until_done(&mut self) -> RunReport {
        self.succeed_all_except(&[]).await;
        self.finish().await
    }

    /// Waits for the actor to stop; returns its report.
    async fn finish(&mut self) -> RunReport {
        let report = tokio::time::timeout(PATIENCE, &mut self.actor)
            .await
            .expect("the actor stops")
            .expect("the actor does not panic")
            .expect("the run ends without error");
        self.collect();
        report
    }
}

/// Stale reports, part 1: after attempt 1 of a block failed and attempt 2 went out, a
/// redelivery of attempt 1's failure (its worker recorded it again) must neither retry nor
/// fail the block: attempt 2 stays the only one running, and its success completes it.
#[tokio::test(start_paused = true)]
async fn a_late_failure_of_an_attempt_given_up_on_is_ignored() {
    let mut h = Harness::start(pipeline(TWO_BLOCKS), Setup::default());
    let a = h.task("a");
    let [first] = level(&h.pipeline, a, 0)[..] else { panic!("one level-0 block") };
    let [second] = level(&h.pipeline, a, 1)[..] else { panic!("one level-1 block") };

    let attempt_1 = h.one_batch().await;
    assert_eq!(attempt_1.dispatch.blocks, vec![BlockWork { index: first, attempt: 1 }]);
    h.send(report("a", attempt_1.batch, vec![failure(first, 1, FailureKind::Failed)]));
    let attempt_2 = h.one_batch().await;
    assert_eq!(attempt_2.dispatch.blocks, vec![BlockWork { index: first, attempt: 2 }]);
    assert!(h.take_effects().contains(&Effect::Removed(a, attempt_1.batch)));

    let mut late = report("a", attempt_1.batch, vec![failure(first, 1, FailureKind::Failed)]);
    late.delivery = 2;
    h.send(late);
    assert!(h.dispatched().await.is_empty(), "the late failure retries nothing");
    assert_eq!(h.take_effects(), vec![], "the late failure changes nothing on the wire");

    h.send(report("a", attempt_2.batch, vec![success(first, 2)]));
    let next = h.one_batch().await;
    assert_eq!(next.indices(), vec![second], "attempt 2's success released the next level");

    let report = h.succeed_until_done().await;
    assert_eq!(h.world.attempts_of(a, first), [1, 2], "once per attempt, no third attempt");
    let task = report.task("a").expect("task a");
    assert_eq!((task.counters.completed, task.counters.failed), (2, 0));
    assert!(report.all_succeeded());
}

/// Stale reports, part 1 (the counters): the summary's failed attempts are attempts that
/// failed, so a redelivered report of one failure counts once.
#[tokio::test(start_paused = true)]
async fn regression_8_a_late_failure_is_not_counted_as_another_failed_attempt() {
    let mut h = Harness::start(pipeline(TWO_BLOCKS), Setup::default());
    let a = h.task("a");
    let first = level(&h.pipeline, a, 0)[0];
    let attempt_1 = h.one_batch().await;
    h.send(report("a", attempt_1.batch, vec![failure(first, 1, FailureKind::Timeout)]));
    let attempt_2 = h.one_batch().await;
    let mut late = report("a", attempt_1.batch, vec![failure(first, 1, FailureKind::Timeout)]);
    late.delivery = 2;
    h.send(late);
    h.settle().await;
    h.send(report("a", attempt_2.batch, vec![success(first, 2)]));

    let report = h.succeed_until_done().await;
    let task = report.task("a").expect("task a");
    assert_eq!(task.failed_attempts, 1, "one attempt failed, reported twice");
    assert_eq!(task.timeouts, 1, "one attempt timed out, reported twice");
}

/// Stale reports, part 2: a redelivered batch whose success is already applied (its worker
/// died before acking, the next one recorded it again) changes nothing: no block is
/// released twice, no batch removed twice, nothing dispatched.
#[tokio::test(start_paused = true)]
async fn a_redelivered_success_changes_nothing() {
    let mut h = Harness::start(pipeline(TWO_BLOCKS), Setup::default());
    let a = h.task("a");
    let first = level(&h.pipeline, a, 0)[0];
    let second = level(&h.pipeline, a, 1)[0];

    let batch = h.one_batch().await;
    h.send(report("a", batch.batch, vec![success(first, 1)]));
    let next = h.one_batch().await;
    assert_eq!(next.indices(), vec![second]);
    assert!(h.take_effects().contains(&Effect::Removed(a, batch.batch)));

    let mut redelivered = report("a", batch.batch, vec![success(first, 1)]);
    redelivered.delivery = 2;
    h.send(redelivered);
    assert!(h.dispatched().await.is_empty(), "nothing dispatched");
    assert_eq!(h.take_effects(), vec![], "nothing removed again");

    let report = h.succeed_until_done().await;
    let task = report.task("a").expect("task a");
    assert_eq!((task.counters.completed, task.counters.skipped), (2, 0));
    assert_eq!(task.failed_attempts, 0);
    assert!(report.all_succeeded());
}

/// Partial batches: a worker stopped mid-batch reports what it ran (in two parts, as a
/// report too large for one message is split) and hands the rest back. Only the handed
/// back blocks run again, at the attempt they had; the batch's message is removed once
/// every block of it is accounted for, and not before.
#[tokio::test(start_paused = true)]
async fn a_partial_batch_dispatches_only_its_returned_blocks_again() {
    let mut h = Harness::start(pipeline(GRID), Setup::default());
    let c = h.task("c");

    // The first batch is one block (block time unknown); its quick success makes the next
    // batch a fair share of the ready blocks.
    let first = h.one_batch().await;
    let results = first.indices().into_iter().map(|index| success(index, 1)).collect();
    h.send(report("c", first.batch, results));
    let batch = h.one_batch().await;
    let blocks = batch.indices();
    assert!(blocks.len() >= 4, "a batch of several blocks: {blocks:?}");
    assert!(batch.dispatch.blocks.iter().all(|block| block.attempt == 1));
    let (ran, failed, returned) = (blocks[0], blocks[1], blocks[2..].to_vec());

    h.send(report("c", batch.batch, vec![success(ran, 1)]));
    assert!(h.dispatched().await.is_empty(), "the batch is still in flight (capacity 1)");
    assert!(
        !h.take_effects().contains(&Effect::Removed(c, batch.batch)),
        "not removed while blocks of it are unaccounted for"
    );

    let mut rest = report("c", batch.batch, vec![failure(failed, 1, FailureKind::Failed)]);
    rest.part = 1;
    rest.returned = returned.clone();
    h.send(rest);
    let again = h.dispatched().await;
    assert!(!again.is_empty(), "the batch's room is free again");
    assert!(h.take_effects().contains(&Effect::Removed(c, batch.batch)));

    let report = h.succeed_until_done().await;
    for index in 0..h.pipeline.task(c).grid.num_blocks() {
        let expected: &[u32] = if index == failed {
            &[1, 2]
        } else if returned.contains(&index) {
            &[1, 1]
        } else {
            &[1]
        };
        assert_eq!(h.world.attempts_of(c, index), expected, "attempts of block {index}");
    }
    let task = report.task("c").expect("task c");
    assert_eq!(task.counters.completed, task.counters.total);
    assert_eq!(task.failed_attempts, 1, "only the failure is charged");
    assert!(report.all_succeeded());
}

/// Failover: a new leader (epoch 4) continues from the record of three earlier ones. The
/// record holds successes, failures before and after a `daisy retry`, a task abandoned
/// before the retry (it comes back) and one abandoned after it (it stays abandoned), and
/// writes of a deposed leader; one batch of an earlier leader is still queued, part of it
/// recorded.
#[tokio::test(start_paused = true)]
async fn a_new_leader_continues_from_the_record() {
    let p = pipeline(THREE_TASKS);
    let (a, c) = (task(&p, "a"), task(&p, "c"));
    let a0 = level(&p, a, 0);
    let c0 = level(&p, c, 0);
    let (recorded_early, failed_before_retry, recorded_late, failed_after_retry) =
        (c0[0], c0[1], c0[2], c0[3]);
    let (queued, dead_lettered) = (c0[4], c0[5]);
    let queued_batch = BatchId(24);
    let with_restarts = |mut report: OutcomeReport, restarts| {
        report.worker_restarts = restarts;
        report
    };
    let mut recorded_part = report("c", queued_batch, vec![success(recorded_late, 1)]);
    recorded_part.epoch = 2;
    let stale_dead_letter = OutcomeReport {
        worker: WorkerId::from("scheduler-dead-letters"),
        leader_epoch: Some(2),
        ..report(
            "c",
            BatchId(25),
            vec![failure(dead_lettered, 1, FailureKind::DeliveriesExhausted)],
        )
    };
    let abandoned_for_good = abandoned("a", 2);
    let events = vec![
        started(1),
        Event::Outcomes(report("c", BatchId(11), vec![success(recorded_early, 1)])),
        Event::Outcomes(report(
            "c",
            BatchId(12),
            vec![failure(failed_before_retry, 1, FailureKind::Failed)],
        )),
        Event::Outcomes(with_restarts(report("a", BatchId(13), vec![success(a0[0], 1)]), 2)),
        abandoned("a", 1),
        Event::RetryRequested { unix_ms: UNIX_MS },
        started(2),
        Event::Outcomes(with_restarts(
            report("a", BatchId(21), vec![failure(a0[1], 1, FailureKind::ProcessDied)]),
            3,
        )),
        abandoned_for_good.clone(),
        Event::Outcomes(recorded_part),
        Event::Outcomes(report(
            "c",
            BatchId(23),
            vec![failure(failed_after_retry, 1, FailureKind::Failed)],
        )),
        started(3),
        // Leader 2, deposed by leader 3, wakes up and writes.
        abandoned("c", 2),
        Event::Outcomes(stale_dead_letter),
    ];
    let in_flight = vec![QueuedBatch {
        batch: queued_batch,
        dispatch: Dispatch {
            task: "c".into(),
            epoch: 2,
            blocks: vec![
                BlockWork { index: recorded_late, attempt: 1 },
                BlockWork { index: queued, attempt: 1 },
            ],
        },
    }];
    let replayed = ReplayedOutcomes { events, mode: ReplayMode::Continue, in_flight };
    let mut h =
        Harness::start(p.clone(), Setup { replayed, epoch: 4, capacity: 2, ..Setup::default() });

    // Everything but the queued batch runs to the end; nothing recorded as done is
    // dispatched again (checked by the world on every dispatch).
    h.succeed_all_except(&[queued_batch]).await;
    let effects = h.take_effects();
    assert!(
        matches!(effects.first(), Some(Effect::Recorded(Event::RunStarted { epoch: 4, .. }))),
        "the new leader records its start first: {effects:?}"
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Recorded(Event::TaskAbandoned { .. }))));
    assert!(!effects.contains(&Effect::Removed(c, queued_batch)));
    assert!(h.world.attempts_of(c, queued).is_empty(), "the queued block waits for its batch");
    assert!(h.world.attempts.keys().all(|key| key.task == c), "a and b never run again");
    assert_eq!(h.world.attempts_of(c, failed_before_retry), [1], "a retry forgets failures");
    assert_eq!(h.world.attempts_of(c, failed_after_retry), [2], "a failure after it counts");
    assert_eq!(
        h.world.attempts_of(c, dead_lettered),
        [1],
        "a deposed leader's dead letter is ignored"
    );

    let mut redelivered = report("c", queued_batch, vec![success(queued, 1)]);
    redelivered.delivery = 2;
    redelivered.epoch = 2;
    h.send(redelivered);
    h.settle().await;
    assert!(h.take_effects().contains(&Effect::Removed(c, queued_batch)));

    let report = h.succeed_until_done().await;
    let Event::TaskAbandoned { reason, .. } = abandoned_for_good else { unreachable!() };
    let a_report = report.task("a").expect("task a");
    assert_eq!(a_report.abandoned.as_deref(), Some(reason.as_str()), "a stays abandoned");
    assert_eq!(a_report.worker_restarts, 3, "restarts since the retry are restored");
    assert_eq!(a_report.counters.completed, 1);
    assert_eq!(a_report.counters.orphaned, a_report.counters.total - 1);
    let b_report = report.task("b").expect("task b");
    assert_eq!(b_report.counters.orphaned, b_report.counters.total, "a's downstream is orphaned");
    let c_report = report.task("c").expect("task c");
    assert_eq!(c_report.abandoned, None, "a deposed leader's abandonment is ignored");
    assert_eq!(c_report.counters.completed, c_report.counters.total);
    assert_eq!(c_report.counters.failed, 0);
}

/// Failover in the window the issue is about: a worker recorded the failure of attempt 1,
/// then died before acking, and the leader died too. The batch is still queued, so the new
/// leader adopts it; its redelivery is filtered against the record to nothing and acked
/// (the block is not run, not reported). The block must still get its attempt 2.
#[tokio::test(start_paused = true)]
async fn regression_8_a_queued_batch_whose_failure_is_recorded_does_not_hang_the_next_leader() {
    let p = pipeline(TWO_BLOCKS);
    let a = task(&p, "a");
    let first = level(&p, a, 0)[0];
    let batch = BatchId(7);
    let events = vec![
        started(1),
        Event::Outcomes(report("a", batch, vec![failure(first, 1, FailureKind::Failed)])),
    ];
    let in_flight = vec![QueuedBatch {
        batch,
        dispatch: Dispatch {
            task: "a".into(),
            epoch: 1,
            blocks: vec![BlockWork { index: first, attempt: 1 }],
        },
    }];
    let replayed = ReplayedOutcomes { events, mode: ReplayMode::Continue, in_flight };
    let mut h = Harness::start(p, Setup { replayed, epoch: 2, ..Setup::default() });
    h.settle().await;
    // The redelivery is filtered to nothing and acked: the message is gone.
    h.lose(batch);

    for _ in 0..2 {
        if h.world.attempts_of(a, first).is_empty() {
            tokio::time::advance(RECLAIM_INTERVAL).await;
            h.next_lost_check().await;
            h.settle().await;
        }
    }
    assert_eq!(h.world.attempts_of(a, first), [2], "attempt 2 is dispatched");
    let report = h.succeed_until_done().await;
    assert!(report.all_succeeded());
}

/// Failover after a partial batch: an earlier leader dispatched a block again after its
/// worker handed it back, then died. Both batches are queued; the first one's redelivery is
/// filtered to nothing and acked, so it leaves the block stream. Reclaiming it must not hand
/// the block out a third time while the second batch's worker runs it.
#[tokio::test(start_paused = true)]
async fn regression_8_reclaiming_an_adopted_batch_leaves_a_block_another_batch_holds() {
    let p = pipeline(ROW);
    let a = task(&p, "a");
    let l0 = level(&p, a, 0);
    let (handed_back, ran) = (l0[0], l0[1]);
    let (partial, again) = (BatchId(50), BatchId(60));
    let mut stopped = report("a", partial, vec![success(ran, 1)]);
    stopped.returned = vec![handed_back];
    let events = vec![started(1), Event::Outcomes(stopped)];
    let dispatch = |blocks: &[u64]| Dispatch {
        task: "a".into(),
        epoch: 1,
        blocks: blocks.iter().map(|&index| BlockWork { index, attempt: 1 }).collect(),
    };
    let in_flight = vec![
        QueuedBatch { batch: partial, dispatch: dispatch(&[handed_back, ran]) },
        QueuedBatch { batch: again, dispatch: dispatch(&[handed_back]) },
    ];
    let replayed = ReplayedOutcomes { events, mode: ReplayMode::Continue, in_flight };
    let mut h = Harness::start(p, Setup { replayed, epoch: 2, capacity: 2, ..Setup::default() });
    assert_eq!(
        h.world.held.get(&BlockKey { task: a, index: BlockIndex(handed_back) }),
        Some(&(again, 1))
    );
    h.settle().await;
    h.lose(partial);

    for _ in 0..2 {
        tokio::time::advance(RECLAIM_INTERVAL).await;
        h.next_lost_check().await;
        // The world fails the test if the block goes out while `again` holds it.
        h.settle().await;
    }
    let report = h.succeed_until_done().await;
    assert!(h.world.attempts_of(a, handed_back).is_empty(), "only `again` ran it");
    assert!(report.all_succeeded());
}

/// Lost batches: a batch that leaves the block stream without an outcome (removed by a
/// deposed leader's purge, say) is dispatched again once two reclaim checks in a row found
/// it missing, at the same attempt; one check is not enough, and batches still there stay.
#[tokio::test(start_paused = true)]
async fn a_batch_missing_at_two_reclaim_checks_is_dispatched_again() {
    let mut h = Harness::start(pipeline(ROW), Setup { capacity: 2, ..Setup::default() });
    let a = h.task("a");
    let dispatched = h.dispatched().await;
    let [lost, kept] = &dispatched[..] else { panic!("two batches: {dispatched:?}") };
    h.lose(lost.batch);

    tokio::time::advance(RECLAIM_INTERVAL).await;
    assert_eq!(h.next_lost_check().await, vec![lost.batch, kept.batch]);
    assert!(h.dispatched().await.is_empty(), "missing at one check is not lost yet");

    tokio::time::advance(RECLAIM_INTERVAL).await;
    assert_eq!(h.next_lost_check().await, vec![lost.batch, kept.batch]);
    let again = h.one_batch().await;
    assert_eq!(again.dispatch.blocks, lost.dispatch.blocks, "same blocks, same attempts");

    let report = h.succeed_until_done().await;
    assert_eq!(h.world.attempts_of(a, lost.indices()[0]), [1, 1], "no attempt charged");
    assert_eq!(h.world.attempts_of(a, kept.indices()[0]), [1]);
    let task = report.task("a").expect("task a");
    assert_eq!(task.failed_attempts, 0);
    assert!(report.all_succeeded());
}

/// Lost batches, the zombie: the worker of a batch reclaimed as lost was still running it
/// and reports its failure late. The block's attempt in its new batch runs fine; the stale
/// failure must not fail it, nor send out a second attempt next to the running one.
#[tokio::test(start_paused = true)]
async fn regression_8_a_late_failure_from_a_reclaimed_batch_is_ignored() {
    let mut h = Harness::start(pipeline(TWO_BLOCKS), Setup::default());
    let a = h.task("a");
    let first = level(&h.pipeline, a, 0)[0];
    let zombie = h.one_batch().await;
    h.lose(zombie.batch);
    for _ in 0..2 {
        tokio::time::advance(RECLAIM_INTERVAL).await;
        h.next_lost_check().await;
    }
    let live = h.one_batch().await;
    assert_eq!(live.dispatch.blocks, zombie.dispatch.blocks);

    h.send(report("a", zombie.batch, vec![failure(first, 1, FailureKind::Failed)]));
    assert!(h.dispatched().await.is_empty(), "the zombie's failure retries nothing");
    let report = h.succeed_until_done().await;
    assert_eq!(h.world.attempts_of(a, first), [1, 1]);
    assert!(report.all_succeeded());
}

/// `daisy cancel`: the actor stops at once (workers record what they hold themselves), says
/// the run was interrupted, closes every task and dispatches nothing more.
#[tokio::test(start_paused = true)]
async fn a_cancel_request_stops_the_run_at_once() {
    let mut h = Harness::start(pipeline(THREE_TASKS), Setup { capacity: 2, ..Setup::default() });
    assert!(!h.dispatched().await.is_empty());
    h.take_effects();
    let asked = Instant::now();
    h.input(Input::CancelRequested);
    let report = h.finish().await;
    assert_eq!(asked.elapsed(), Duration::ZERO, "no wait for blocks in flight");
    assert!(report.finished && report.interrupted);
    assert!(!report.all_succeeded());
    for id in ["a", "b", "c"] {
        let task = h.task(id);
        assert!(h.effects.contains(&Effect::Closed(task)), "{id} closed: {:?}", h.effects);
    }
}

/// Ctrl-C: the actor stops dispatching and waits for the blocks in flight, but no longer
/// than the drain timeout.
#[tokio::test(start_paused = true)]
async fn an_interrupt_waits_for_blocks_in_flight_up_to_the_drain_timeout() {
    let mut h = Harness::start(pipeline(ROW), Setup { capacity: 2, ..Setup::default() });
    let a = h.task("a");
    let dispatched = h.dispatched().await;
    let [reported, silent] = &dispatched[..] else { panic!("two batches: {dispatched:?}") };
    let interrupted = Instant::now();
    h.cancel.cancel();
    h.settle().await;
    assert!(h.take_effects().contains(&Effect::Closed(a)));

    let results = reported.indices().into_iter().map(|index| success(index, 1)).collect();
    h.send(report("a", reported.batch, results));
    assert!(h.dispatched().await.is_empty(), "nothing new goes out");
    assert!(h.world.held_batches().contains_key(&silent.batch));

    let report = h.finish().await;
    assert_eq!(interrupted.elapsed(), SchedulerConfig::default().drain_timeout);
    assert!(report.interrupted);
    assert_eq!(report.task("a").expect("task a").counters.completed, 1);
}

/// Fencing: the events a leader writes carry its epoch (so a replay can ignore a deposed
/// leader's), and so does every dispatch (checked by the world). A task whose workers keep
/// dying is abandoned: recorded, its queued batches purged, it and its downstream closed.
#[tokio::test(start_paused = true)]
async fn the_leaders_events_carry_its_epoch() {
    const RESTARTS: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [10] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
max_worker_restarts = 1
command = ["true"]

[[task]]
id = "b"
total_roi = { offset = [0], shape = [10] }
read_roi = { offset = [0], shape = [3] }
write_roi = { offset = [1], shape = [1] }
upstream = ["a"]
command = ["true"]
"#;
    let p = pipeline(RESTARTS);
    let mut h = Harness::start(p.clone(), Setup { epoch: 7, capacity: 2, ..Setup::default() });
    let (a, b) = (h.task("a"), h.task("b"));
    let dispatched = h.dispatched().await;
    assert_eq!(
        h.take_effects(),
        vec![Effect::Recorded(Event::RunStarted {
            layout_hash: daisy_proto::layout_hash(&p),
            unix_ms: UNIX_MS,
            epoch: 7,
        })]
    );

    let first = &dispatched[0];
    let mut restarted = report("a", first.batch, vec![success(first.indices()[0], 1)]);
    restarted.worker_restarts = 2;
    h.send(restarted);
    let report = h.finish().await;
    let reason = report.task("a").and_then(|t| t.abandoned.clone()).expect("a is abandoned");
    assert!(reason.contains("max_worker_restarts = 1"), "{reason}");
    let recorded = Effect::Recorded(Event::TaskAbandoned { task: "a".into(), reason, epoch: 7 });
    let effects = h.take_effects();
    let position = |effect: &Effect| effects.iter().position(|e| e == effect);
    let (recorded_at, purged_at) = (position(&recorded), position(&Effect::Purged(a)));
    assert!(recorded_at.is_some() && recorded_at < purged_at, "recorded, then purged: {effects:?}");
    assert!(effects.contains(&Effect::Closed(a)) && effects.contains(&Effect::Closed(b)));
    let b_report = report.task("b").expect("task b");
    assert_eq!(b_report.counters.orphaned, b_report.counters.total);
}
