//! The scheduling state machine: which blocks are ready, what an outcome
//! means, when a block is failed or orphaned. No I/O and no clock: the
//! caller passes the time in and acts on what comes back.
//!
//! ```text
//!              acquire                 release(Success | Skipped)
//!  pending ──► ready ──────► processing ──────────────────────────► completed
//!   (all upstream   ▲            │ release(Failed), attempts <= max_retries
//!    succeeded)     └────────────┘ (back of the task's queue)
//!                                │ release(Failed), attempts exhausted
//!                                ▼
//!                              failed ──► its whole downstream cone: orphaned
//! ```
//!
//! # Ownership
//! One [`Scheduler`] owns the state of every block of one run. Whoever
//! drives it (the scheduler actor, `daisy plan --simulate`, a test) owns
//! the scheduler; nothing else mutates it.
//!
//! # Memory
//! Per task, four bitsets over the dense block index (ok, terminal, queued,
//! processing: half a byte per block) plus the frontier: the queue of ready
//! blocks, the deadlines of processing blocks and the attempt counts of
//! blocks that failed at least once. Root blocks come from a cursor over
//! level 0, never materialised. 10^8 blocks cost ≈ 50 MB.
//!
//! # Invariants (checked by the property tests)
//! * Every block reaches exactly one terminal state.
//! * A block is acquired only after every upstream block succeeded, so two
//!   conflicting blocks are never processing at once.
//! * For every task `ready + dispatched + completed + failed + orphaned <=
//!   total`, and the rest is `pending`.
//!
//! # Dispatched, not processing
//! The core knows when a block is handed out, not when it starts: a worker may hold a
//! batch of blocks and run them one at a time. So it counts handed-out blocks as
//! `dispatched`; its `processing` counter stays 0. Daisy users read `processing` as
//! "running now", so the scheduler actor moves the blocks workers report as running over
//! ([`TaskCounters::mark_running`]) before it shows the counters.
//!
//! # Why
//! Daisy keeps a "ready surface" of succeeded blocks with unfinished
//! downstream. With a bitset of succeeded blocks the surface is not needed:
//! checking a neighbour is one bit test, and memory is bounded by the block
//! count / 8 instead of by the shape of the frontier.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Serialize};

use crate::{BlockIndex, BlockKey, Coordinate, Pipeline, TaskIndex};

/// Daisy's per-task counters. `completed` includes `skipped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounters {
    /// Blocks in the task.
    pub total: u64,
    /// Blocks whose upstream all succeeded, waiting for a worker.
    pub ready: u64,
    /// Blocks handed to a worker that are not known to have started: queued in a batch,
    /// or waiting in a worker for its slot. The core counts every block it handed out
    /// here; whoever learns that blocks run moves them to `processing`
    /// ([`TaskCounters::mark_running`]).
    #[serde(default)]
    pub dispatched: u64,
    /// Blocks running now (Daisy's meaning: at most the task's `max_workers`).
    pub processing: u64,
    /// Blocks that succeeded or were skipped.
    pub completed: u64,
    /// Blocks a check (or an earlier run) said were already done.
    pub skipped: u64,
    /// Blocks that failed `max_retries + 1` times.
    pub failed: u64,
    /// Blocks never run because an upstream block failed.
    pub orphaned: u64,
}

impl TaskCounters {
    /// Blocks still waiting for an upstream block.
    pub fn pending(&self) -> u64 {
        self.total - self.ready - self.in_flight() - self.completed - self.failed - self.orphaned
    }

    /// Blocks handed to a worker and not yet released: dispatched or processing.
    pub fn in_flight(&self) -> u64 {
        self.dispatched + self.processing
    }

    /// Counts `running` of the dispatched blocks as processing (a worker said they run);
    /// never more than are dispatched, so a report that lags behind cannot make the
    /// counts add up to more than the task's blocks.
    #[must_use]
    pub fn mark_running(mut self, running: u64) -> Self {
        let running = running.min(self.dispatched);
        self.dispatched -= running;
        self.processing += running;
        self
    }

    /// Whether every block reached a terminal state.
    pub fn is_done(&self) -> bool {
        self.completed + self.failed + self.orphaned == self.total
    }

    /// Whether every block succeeded or was skipped.
    pub fn all_succeeded(&self) -> bool {
        self.completed == self.total
    }
}

/// What a worker says about an attempt at a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The block was processed.
    Success,
    /// The block was already done (a check said so): counts as completed
    /// and skipped.
    Skipped,
    /// The attempt failed; the block is retried while attempts remain.
    Failed,
    /// The attempt failed and no other may follow (the transport gave up
    /// redelivering the block): the block fails for good.
    Exhausted,
}

/// A block handed out by [`Scheduler::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The block.
    pub key: BlockKey,
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The block succeeded (or was skipped); `newly_ready` downstream blocks
    /// became ready.
    Completed {
        /// Downstream blocks that became ready.
        newly_ready: u64,
    },
    /// The attempt failed and the block went to the back of its queue.
    WillRetry {
        /// Failed attempts so far.
        failed_attempts: u32,
    },
    /// The block failed for good; `orphaned` downstream blocks will never run.
    Failed {
        /// Blocks orphaned by this failure, over all tasks.
        orphaned: u64,
    },
}

/// A release that does not match the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The block is not being processed (never acquired, already released,
    /// reclaimed after a timeout, or its task was abandoned): the release is
    /// stale and was ignored.
    #[error("block {key:?} is not being processed: stale release ignored")]
    NotProcessing {
        /// The block.
        key: BlockKey,
    },
    /// The block is being processed, but by a later attempt than the one released (a late
    /// report of a worker that was given up on): the release was ignored.
    #[error("block {key:?} is at attempt {current}, not {released}: stale release ignored")]
    StaleAttempt {
        /// The block.
        key: BlockKey,
        /// The attempt the release was for.
        released: u32,
        /// The attempt being processed.
        current: u32,
    },
}

struct TaskState {
    counters: TaskCounters,
    max_retries: u32,
    timeout: Duration,
    /// Succeeded or skipped.
    ok: FixedBitSet,
    /// Succeeded, skipped, failed or orphaned.
    terminal: FixedBitSet,
    /// Has a live entry in `queue` (entries whose bit is clear are stale
    /// and skipped when popped).
    queued: FixedBitSet,
    processing: FixedBitSet,
    /// Blocks an earlier run recorded as done: skipped when acquired.
    known_done: Option<FixedBitSet>,
    /// Blocks whose upstream all succeeded, and retries, in FIFO order.
    queue: VecDeque<BlockIndex>,
    /// The next level-0 block to hand out (root tasks only).
    root_cursor: u64,
    /// How many level-0 blocks the cursor walks (0 for non-root tasks).
    root_count: u64,
    /// Failed attempts of blocks that failed at least once.
    failed_attempts: HashMap<BlockIndex, u32>,
    /// (deadline, block, attempt) of processing blocks, in acquire order.
    deadlines: VecDeque<(Duration, BlockIndex, u32)>,
}

impl TaskState {
    fn attempt_of(&self, index: BlockIndex) -> u32 {
        self.failed_attempts.get(&index).copied().unwrap_or(0) + 1
    }
}

/// The scheduling state of one run. See the module docs.
pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    tasks: Vec<TaskState>,
    /// Reused buffer for downstream blocks (no allocation per release).
    scratch: Vec<(BlockKey, Coordinate)>,
}

impl Scheduler {
    /// A scheduler with every block pending and the level-0 blocks of root
    /// tasks ready.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        let tasks = pipeline
            .tasks()
            .iter()
            .map(|task| {
                let total = task.grid.num_blocks();
                let bits = usize::try_from(total).expect("a task's block count fits in memory");
                let root_count = if task.upstream.is_empty() { task.grid.level_size(0) } else { 0 };
                TaskState {
                    counters: TaskCounters { total, ready: root_count, ..TaskCounters::default() },
                    max_retries: task.spec.max_retries,
                    timeout: task.spec.timeout,
                    ok: FixedBitSet::with_capacity(bits),
                    terminal: FixedBitSet::with_capacity(bits),
                    queued: FixedBitSet::with_capacity(bits),
                    processing: FixedBitSet::with_capacity(bits),
                    known_done: None,
                    queue: VecDeque::new(),
                    root_cursor: 0,
                    root_count,
                    failed_attempts: HashMap::new(),
                    deadlines: VecDeque::new(),
                }
            })
            .collect();
        Self { pipeline, tasks, scratch: Vec::new() }
    }

    /// The pipeline being scheduled.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Records that an earlier run completed `key`: when the block becomes
    /// ready it is skipped (counted as completed and skipped) instead of
    /// being handed out. Call before the run starts.
    pub fn mark_known_done(&mut self, key: BlockKey) {
        let state = &mut self.tasks[key.task.get()];
        let total = state.counters.total as usize;
        state
            .known_done
            .get_or_insert_with(|| FixedBitSet::with_capacity(total))
            .insert(key.index.0 as usize);
    }

    /// The counters of one task.
    pub fn counters(&self, task: TaskIndex) -> TaskCounters {
        self.tasks[task.get()].counters
    }

    /// Whether every block of every task reached a terminal state.
    pub fn is_done(&self) -> bool {
        self.tasks.iter().all(|t| t.counters.is_done())
    }

    /// Whether every block of every task succeeded or was skipped.
    pub fn all_succeeded(&self) -> bool {
        self.tasks.iter().all(|t| t.counters.all_succeeded())
    }

    /// Whether `key` succeeded or was skipped.
    pub fn is_completed(&self, key: BlockKey) -> bool {
        self.tasks[key.task.get()].ok.contains(key.index.0 as usize)
    }

    /// Whether `key` is being processed.
    pub fn is_processing(&self, key: BlockKey) -> bool {
        self.tasks[key.task.get()].processing.contains(key.index.0 as usize)
    }

    /// Hands out the next ready block of `task`, if any, and records it as
    /// processing until `now + timeout`.
    ///
    /// Blocks an earlier run completed ([`Scheduler::mark_known_done`]) are
    /// skipped on the way, which may ready their downstream blocks.
    pub fn acquire(&mut self, task: TaskIndex, now: Duration) -> Option<Acquired> {
        loop {
            let index = self.pop_ready(task)?;
            let key = BlockKey { task, index };
            let state = &mut self.tasks[task.get()];
            state.counters.ready -= 1;
            state.counters.dispatched += 1;
            state.processing.insert(index.0 as usize);
            if state.known_done.as_ref().is_some_and(|done| done.contains(index.0 as usize)) {
                self.complete(key, Outcome::Skipped);
                continue;
            }
            let attempt = state.attempt_of(index);
            // Drop deadlines of attempts already released, so the queue
            // stays as long as the blocks in flight.
            while let Some(&(_, front, front_attempt)) = state.deadlines.front() {
                let live = state.processing.contains(front.0 as usize)
                    && state.attempt_of(front) == front_attempt;
                if live {
                    break;
                }
                state.deadlines.pop_front();
            }
            state.deadlines.push_back((now + state.timeout, index, attempt));
            return Some(Acquired { key, attempt });
        }
    }

    /// Pops the next ready block, skipping stale queue entries and root
    /// blocks that a recorded outcome already settled.
    fn pop_ready(&mut self, task: TaskIndex) -> Option<BlockIndex> {
        let state = &mut self.tasks[task.get()];
        while let Some(index) = state.queue.pop_front() {
            let position = index.0 as usize;
            if state.queued.contains(position) {
                state.queued.set(position, false);
                return Some(index);
            }
        }
        let grid = &self.pipeline.task(task).grid;
        while state.root_cursor < state.root_count {
            let k = grid.nth_block_of_level(0, state.root_cursor);
            state.root_cursor += 1;
            let index = grid.dense_index(&k);
            let position = index.0 as usize;
            if !state.terminal.contains(position) && !state.processing.contains(position) {
                return Some(index);
            }
        }
        None
    }

    /// Whether `key` is ready: queued, or a root block behind the cursor
    /// that nothing settled yet.
    fn is_ready(&self, key: BlockKey) -> bool {
        let state = &self.tasks[key.task.get()];
        let position = key.index.0 as usize;
        if state.queued.contains(position) {
            return true;
        }
        if state.root_count == 0
            || state.terminal.contains(position)
            || state.processing.contains(position)
        {
            return false;
        }
        let grid = &self.pipeline.task(key.task).grid;
        let k = grid.grid_index(key.index);
        grid.level(&k) == 0 && grid.enumeration_index(&k) >= state.root_cursor
    }

    /// Makes a block that is pending or ready count as processing, without
    /// handing it out: it is held by a worker from an earlier session (a
    /// block message still in the stream). Returns false if the block is
    /// already processing or finished.
    pub fn mark_in_flight(&mut self, key: BlockKey) -> bool {
        let position = key.index.0 as usize;
        let ready = self.is_ready(key);
        let state = &mut self.tasks[key.task.get()];
        if state.terminal.contains(position) || state.processing.contains(position) {
            return false;
        }
        if ready {
            state.counters.ready -= 1;
            state.queued.set(position, false);
        }
        state.processing.insert(position);
        state.counters.dispatched += 1;
        true
    }

    /// Applies an outcome read from the durable record (a failover
    /// replaying the event stream): like [`Scheduler::release`], but the
    /// block need not have been handed out by this scheduler — it may be
    /// pending or ready here, since an earlier leader dispatched it.
    ///
    /// # Errors
    /// [`ReleaseError::NotProcessing`] if the block already finished
    /// (a duplicate record).
    pub fn apply_recorded(
        &mut self,
        key: BlockKey,
        outcome: Outcome,
    ) -> Result<Released, ReleaseError> {
        let position = key.index.0 as usize;
        if !self.tasks[key.task.get()].processing.contains(position) && !self.mark_in_flight(key) {
            return Err(ReleaseError::NotProcessing { key });
        }
        self.release(key, outcome)
    }

    /// Records the outcome of `attempt` at a processing block; a release for another
    /// attempt than the current one is stale and ignored, so a late failure of an attempt
    /// given up on never fails the attempt running now.
    ///
    /// # Errors
    /// [`ReleaseError::NotProcessing`] if the block is not being processed,
    /// [`ReleaseError::StaleAttempt`] if it is at another attempt; nothing changes then.
    pub fn release_attempt(
        &mut self,
        key: BlockKey,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<Released, ReleaseError> {
        let state = &self.tasks[key.task.get()];
        if !state.processing.contains(key.index.0 as usize) {
            return Err(ReleaseError::NotProcessing { key });
        }
        let current = state.attempt_of(key.index);
        if attempt != current {
            return Err(ReleaseError::StaleAttempt { key, released: attempt, current });
        }
        self.release(key, outcome)
    }

    /// Hands a processing block back unstarted (its worker stopped before it began, or its
    /// dispatch was lost): the block is ready again, first in its task's queue, and no
    /// attempt is counted. Returns false (and changes nothing) if it is not processing.
    pub fn return_unstarted(&mut self, key: BlockKey) -> bool {
        let position = key.index.0 as usize;
        let state = &mut self.tasks[key.task.get()];
        if !state.processing.contains(position) {
            return false;
        }
        state.processing.set(position, false);
        state.counters.dispatched -= 1;
        state.queued.insert(position);
        state.queue.push_front(key.index);
        state.counters.ready += 1;
        true
    }

    /// The attempt `key` is at (or would start at), from 1.
    pub fn attempt(&self, key: BlockKey) -> u32 {
        self.tasks[key.task.get()].attempt_of(key.index)
    }

    /// Records the outcome of an attempt at a processing block.
    ///
    /// # Errors
    /// [`ReleaseError::NotProcessing`] if the block is not being processed;
    /// nothing changes then.
    pub fn release(&mut self, key: BlockKey, outcome: Outcome) -> Result<Released, ReleaseError> {
        let state = &mut self.tasks[key.task.get()];
        if !state.processing.contains(key.index.0 as usize) {
            return Err(ReleaseError::NotProcessing { key });
        }
        match outcome {
            Outcome::Success | Outcome::Skipped => {
                Ok(Released::Completed { newly_ready: self.complete(key, outcome) })
            }
            Outcome::Failed | Outcome::Exhausted => {
                state.processing.set(key.index.0 as usize, false);
                state.counters.dispatched -= 1;
                let failed_attempts = state.failed_attempts.entry(key.index).or_insert(0);
                *failed_attempts += 1;
                let failed_attempts = *failed_attempts;
                if outcome == Outcome::Failed && failed_attempts <= state.max_retries {
                    state.queued.insert(key.index.0 as usize);
                    state.queue.push_back(key.index);
                    state.counters.ready += 1;
                    return Ok(Released::WillRetry { failed_attempts });
                }
                state.failed_attempts.remove(&key.index);
                state.queued.set(key.index.0 as usize, false);
                state.terminal.insert(key.index.0 as usize);
                state.counters.failed += 1;
                Ok(Released::Failed { orphaned: self.orphan_downstream(key) })
            }
        }
    }

    /// Marks a processing block completed and readies the downstream blocks
    /// whose upstream all succeeded. Returns how many became ready.
    fn complete(&mut self, key: BlockKey, outcome: Outcome) -> u64 {
        let position = key.index.0 as usize;
        let state = &mut self.tasks[key.task.get()];
        debug_assert!(state.processing.contains(position));
        state.processing.set(position, false);
        state.ok.insert(position);
        state.terminal.insert(position);
        state.counters.dispatched -= 1;
        state.counters.completed += 1;
        if outcome == Outcome::Skipped {
            state.counters.skipped += 1;
        }
        if !state.failed_attempts.is_empty() {
            state.failed_attempts.remove(&key.index);
        }

        // Candidates: downstream blocks not yet ready or finished.
        let mut downstream = std::mem::take(&mut self.scratch);
        downstream.clear();
        let k = self.pipeline.task(key.task).grid.grid_index(key.index);
        let tasks = &self.tasks;
        self.pipeline.for_each_downstream_at(key.task, &k, |down, down_k| {
            let down_state = &tasks[down.task.get()];
            let down_position = down.index.0 as usize;
            if !down_state.terminal.contains(down_position)
                && !down_state.queued.contains(down_position)
                && !down_state.processing.contains(down_position)
            {
                downstream.push((down, down_k));
            }
        });
        let mut newly_ready = 0;
        for &(down, down_k) in &downstream {
            let tasks = &self.tasks;
            let all_upstream_ok = self
                .pipeline
                .try_for_each_upstream_at(down.task, &down_k, |up, _| {
                    if tasks[up.task.get()].ok.contains(up.index.0 as usize) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                })
                .is_continue();
            if all_upstream_ok {
                let down_state = &mut self.tasks[down.task.get()];
                down_state.queued.insert(down.index.0 as usize);
                down_state.queue.push_back(down.index);
                down_state.counters.ready += 1;
                newly_ready += 1;
            }
        }
        self.scratch = downstream;
        newly_ready
    }

    /// Orphans the whole downstream cone of a failed block; returns how
    /// many blocks were orphaned.
    fn orphan_downstream(&mut self, failed: BlockKey) -> u64 {
        let mut orphaned = 0;
        let mut stack = vec![failed];
        while let Some(key) = stack.pop() {
            let tasks = &mut self.tasks;
            self.pipeline.for_each_downstream(key, |down| {
                let state = &mut tasks[down.task.get()];
                let position = down.index.0 as usize;
                if state.terminal.contains(position) {
                    return;
                }
                if state.queued.contains(position) || state.processing.contains(position) {
                    // Only possible when recorded outcomes arrive out of
                    // order after a failover; such a block is not orphaned.
                    return;
                }
                state.terminal.insert(position);
                state.counters.orphaned += 1;
                orphaned += 1;
                stack.push(down);
            });
        }
        orphaned
    }

    /// Gives up on `task` (e.g. its workers kept dying): every block of it
    /// and of its downstream tasks that has not finished is orphaned,
    /// including blocks being processed (their late releases are stale).
    /// Returns how many blocks were orphaned.
    pub fn abandon(&mut self, task: TaskIndex) -> u64 {
        let mut tasks_to_abandon = vec![task];
        let mut seen = vec![false; self.tasks.len()];
        let mut orphaned = 0;
        while let Some(current) = tasks_to_abandon.pop() {
            if std::mem::replace(&mut seen[current.get()], true) {
                continue;
            }
            tasks_to_abandon.extend(self.pipeline.task(current).downstream.iter().copied());
            let state = &mut self.tasks[current.get()];
            let before = state.terminal.count_ones(..) as u64;
            state.terminal.insert_range(..);
            state.queued.clear();
            state.processing.clear();
            state.queue.clear();
            state.deadlines.clear();
            state.root_cursor = state.root_count;
            let newly = state.counters.total - before;
            state.counters.orphaned += newly;
            state.counters.ready = 0;
            state.counters.dispatched = 0;
            orphaned += newly;
        }
        orphaned
    }

    /// Pops a processing block whose deadline passed (`now` is past its
    /// acquire time plus its task's timeout). The caller releases it as
    /// failed. Returns `None` when no deadline has passed.
    pub fn next_expired(&mut self, now: Duration) -> Option<Acquired> {
        for (position, state) in self.tasks.iter_mut().enumerate() {
            while let Some(&(deadline, index, attempt)) = state.deadlines.front() {
                let still_this_attempt = state.processing.contains(index.0 as usize)
                    && state.attempt_of(index) == attempt;
                if still_this_attempt && deadline > now {
                    break;
                }
                state.deadlines.pop_front();
                if still_this_attempt {
                    let key = BlockKey { task: TaskIndex(position as u32), index };
                    return Some(Acquired { key, attempt });
                }
            }
        }
        None
    }
}

/// The result of [`simulate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulation {
    /// Blocks processed (all of them, when the pipeline is sound).
    pub blocks: u64,
    /// Rounds of "acquire up to max_workers per task, then release all".
    pub rounds: u64,
    /// The greatest number of blocks processing at once.
    pub peak_in_flight: u64,
}

/// Blocks that never became ready during a simulation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unreached} blocks of task {task:?} never became ready (their upstream never completed)")]
pub struct Unreachable {
    /// The first task with unreached blocks.
    pub task: String,
    /// How many of its blocks were never reached.
    pub unreached: u64,
}

/// Drives the scheduler through the whole pipeline with instant successes:
/// each round acquires up to `max_workers` blocks per task, then releases
/// them all. Proves that every block becomes reachable.
///
/// # Errors
/// [`Unreachable`] if blocks remain that can never become ready.
pub fn simulate(pipeline: Arc<Pipeline>) -> Result<Simulation, Unreachable> {
    simulate_with_progress(pipeline, |_| {})
}

/// [`simulate`], calling `progress` with the number of blocks done after
/// every round that crosses a multiple of 65,536 blocks.
///
/// # Errors
/// [`Unreachable`] if blocks remain that can never become ready.
pub fn simulate_with_progress(
    pipeline: Arc<Pipeline>,
    mut progress: impl FnMut(u64),
) -> Result<Simulation, Unreachable> {
    const PROGRESS_EVERY: u64 = 1 << 16;
    let mut scheduler = Scheduler::new(pipeline.clone());
    let mut in_flight: Vec<Acquired> = Vec::new();
    let mut simulation = Simulation { blocks: 0, rounds: 0, peak_in_flight: 0 };
    let now = Duration::ZERO;
    loop {
        for (position, task) in pipeline.tasks().iter().enumerate() {
            let task_index = TaskIndex(position as u32);
            for _ in 0..task.spec.max_workers {
                match scheduler.acquire(task_index, now) {
                    Some(acquired) => in_flight.push(acquired),
                    None => break,
                }
            }
        }
        if in_flight.is_empty() {
            break;
        }
        simulation.rounds += 1;
        simulation.peak_in_flight = simulation.peak_in_flight.max(in_flight.len() as u64);
        let before = simulation.blocks;
        for acquired in in_flight.drain(..) {
            let _ = scheduler.release(acquired.key, Outcome::Success);
            simulation.blocks += 1;
        }
        if before / PROGRESS_EVERY != simulation.blocks / PROGRESS_EVERY {
            progress(simulation.blocks);
        }
    }
    for (position, task) in pipeline.tasks().iter().enumerate() {
        let counters = scheduler.counters(TaskIndex(position as u32));
        if !counters.is_done() {
            return Err(Unreachable {
                task: task.spec.id.to_string(),
                unreached: counters.total - counters.completed,
            });
        }
    }
    Ok(simulation)
}
