//! Which block each worker slot runs right now, for the scheduler's `processing` count and
//! its straggler detection.
//!
//! # Ownership
//! A [`RunningBlocks`] registry belongs to one worker process (or one in-process run); each
//! slot holds a [`RunningSlot`] of it and marks a block as started on the blocking thread
//! that runs it. Readers (the NATS worker's reporter, the in-process transport) take
//! [`RunningBlocks::snapshot`]s; nothing else writes.
//!
//! # Why a mutex per slot, not a message per block
//! A no-op run starts hundreds of thousands of blocks a second. Marking a start is one
//! uncontended lock of the slot's own mutex and one relaxed increment; readers look a few
//! times a second and send what they see in one message ([`daisy_proto::RunningReport`]),
//! so a block start never waits for the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use daisy_proto::{RunningBlock, WorkerId};

/// The block a slot runs: index, attempt, since when.
type Current = Option<(u64, u32, Instant)>;

struct SlotState {
    slot: WorkerId,
    task: Arc<str>,
    current: Mutex<Current>,
}

#[derive(Default)]
struct Registry {
    slots: Mutex<Vec<Arc<SlotState>>>,
    /// Bumped at every start and stop, so a reporter sees whether anything changed.
    changes: AtomicU64,
}

/// What the slots of one process run now. Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct RunningBlocks(Arc<Registry>);

impl RunningBlocks {
    /// Registers a slot of `task` named `slot`.
    pub fn slot(&self, slot: WorkerId, task: &str) -> RunningSlot {
        let state = Arc::new(SlotState { slot, task: Arc::from(task), current: Mutex::new(None) });
        self.0.slots.lock().unwrap_or_else(PoisonError::into_inner).push(state.clone());
        RunningSlot { state, registry: self.0.clone() }
    }

    /// How many starts and stops happened so far (compare two readings to see a change).
    pub fn changes(&self) -> u64 {
        self.0.changes.load(Ordering::Relaxed)
    }

    /// Every block running now, with how long it has run.
    pub fn snapshot(&self) -> Vec<RunningBlock> {
        let now = Instant::now();
        let slots = self.0.slots.lock().unwrap_or_else(PoisonError::into_inner).clone();
        slots
            .iter()
            .filter_map(|state| {
                let (index, attempt, since) =
                    (*state.current.lock().unwrap_or_else(PoisonError::into_inner))?;
                Some(RunningBlock {
                    task: state.task.to_string(),
                    index,
                    attempt,
                    slot: state.slot.clone(),
                    running_ms: millis(now.saturating_duration_since(since)),
                })
            })
            .collect()
    }
}

/// One slot's entry in a [`RunningBlocks`] registry.
#[derive(Clone)]
pub struct RunningSlot {
    state: Arc<SlotState>,
    registry: Arc<Registry>,
}

impl RunningSlot {
    /// The slot starts `index` at `attempt` now.
    pub fn started(&self, index: u64, attempt: u32) {
        *self.state.current.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((index, attempt, Instant::now()));
        self.registry.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// The slot runs nothing (its batch ended).
    pub fn idle(&self) {
        *self.state.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.registry.changes.fetch_add(1, Ordering::Relaxed);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_lists_what_each_slot_runs_and_nothing_after_it_stopped() {
        let running = RunningBlocks::default();
        let first = running.slot(WorkerId::from("w-t-0"), "t");
        let second = running.slot(WorkerId::from("w-t-1"), "t");
        assert!(running.snapshot().is_empty());
        let before = running.changes();
        first.started(7, 2);
        second.started(9, 1);
        assert_ne!(running.changes(), before);
        let mut now: Vec<(u64, u32, String)> = running
            .snapshot()
            .into_iter()
            .map(|block| (block.index, block.attempt, block.slot.0))
            .collect();
        now.sort();
        assert_eq!(now, vec![(7, 2, "w-t-0".into()), (9, 1, "w-t-1".into())]);
        first.idle();
        let now = running.snapshot();
        assert_eq!(now.len(), 1);
        assert_eq!((now[0].index, now[0].task.as_str()), (9, "t"));
    }
}
