//! Tests of the scheduling state machine: Daisy's worked examples and
//! property tests on random pipelines.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::{
    Block, BlockKey, Coordinate, Fit, Outcome, Pipeline, Released, Roi, Scheduler, TaskId,
    TaskIndex, TaskSpec, simulate,
};

fn roi(offset: &[i64], shape: &[i64]) -> Roi {
    Roi::new(Coordinate::new(offset).unwrap(), Coordinate::new(shape).unwrap())
}

fn task(id: &str, total: Roi, read: Roi, write: Roi) -> TaskSpec {
    TaskSpec::new(TaskId::new(id).unwrap(), total, read, write)
}

fn one_d(conflict: bool) -> Arc<Pipeline> {
    let mut spec = task("a", roi(&[0], &[4]), roi(&[0], &[3]), roi(&[1], &[1]));
    spec.read_write_conflict = conflict;
    Arc::new(Pipeline::new(vec![spec]).unwrap())
}

const A: TaskIndex = TaskIndex(0);
const T0: Duration = Duration::ZERO;

fn id_of(pipeline: &Pipeline, key: BlockKey) -> u64 {
    pipeline.block(key).block_id.0
}

#[test]
fn failing_the_root_three_times_fails_it_and_orphans_its_neighbour() {
    let pipeline = one_d(true);
    let mut scheduler = Scheduler::new(pipeline.clone());
    for attempt in 1..=3 {
        let acquired = scheduler.acquire(A, T0).expect("block 2 is ready");
        assert_eq!((id_of(&pipeline, acquired.key), acquired.attempt), (2, attempt));
        assert!(scheduler.acquire(A, T0).is_none(), "block 1 waits for block 2");
        let released = scheduler.release(acquired.key, Outcome::Failed).unwrap();
        if attempt < 3 {
            assert_eq!(released, Released::WillRetry { failed_attempts: attempt });
        } else {
            assert_eq!(released, Released::Failed { orphaned: 1 });
        }
    }
    let counters = scheduler.counters(A);
    assert_eq!((counters.completed, counters.failed, counters.orphaned), (0, 1, 1));
    assert!(scheduler.is_done());
    assert!(!scheduler.all_succeeded());
}

#[test]
fn a_retry_that_succeeds_completes_while_another_block_fails() {
    let pipeline = one_d(false);
    let mut scheduler = Scheduler::new(pipeline.clone());
    let mut failures: HashMap<u64, u32> = HashMap::new();
    while let Some(acquired) = scheduler.acquire(A, T0) {
        let id = id_of(&pipeline, acquired.key);
        let failed = failures.entry(id).or_default();
        let outcome = if id == 2 || *failed == 0 { Outcome::Failed } else { Outcome::Success };
        if outcome == Outcome::Failed {
            *failed += 1;
        }
        scheduler.release(acquired.key, outcome).unwrap();
    }
    let counters = scheduler.counters(A);
    assert_eq!((counters.completed, counters.failed, counters.orphaned), (1, 1, 0));
    assert_eq!(failures[&2], 3, "max_retries + 1 attempts");
    assert_eq!(failures[&1], 1);
}

fn chained() -> Arc<Pipeline> {
    let first = task("first", roi(&[0, 0], &[6, 6]), roi(&[0, 0], &[3, 3]), roi(&[1, 1], &[1, 1]));
    let mut second =
        task("second", roi(&[1, 1], &[4, 4]), roi(&[0, 0], &[3, 3]), roi(&[1, 1], &[1, 1]));
    second.upstream = vec![first.id.clone()];
    Arc::new(Pipeline::new(vec![first, second]).unwrap())
}

fn ids_in(blocks: &[Block], task: TaskIndex) -> Vec<u64> {
    let mut ids: Vec<u64> =
        blocks.iter().filter(|b| b.key.task == task).map(|b| b.block_id.0).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn chained_tasks_upstream_and_downstream_sets() {
    let pipeline = chained();
    let second = TaskIndex(1);
    let reader = (0..pipeline.task(second).grid.num_blocks())
        .map(|n| pipeline.block_at(second, pipeline.task(second).grid.nth_block(n)))
        .find(|b| b.read_roi == roi(&[2, 2], &[3, 3]))
        .unwrap();
    assert_eq!(
        ids_in(&pipeline.upstream_blocks(reader.key), TaskIndex(0)),
        vec![12, 17, 18, 23, 24, 25, 31, 32, 40]
    );
    let first = TaskIndex(0);
    let writer = (0..pipeline.task(first).grid.num_blocks())
        .map(|n| pipeline.block_at(first, pipeline.task(first).grid.nth_block(n)))
        .find(|b| b.write_roi == roi(&[3, 3], &[1, 1]))
        .unwrap();
    assert_eq!(ids_in(&pipeline.downstream_blocks(writer.key), second), vec![4, 7, 8, 12]);
}

#[test]
fn a_failure_orphans_blocks_in_downstream_tasks_counted_against_them() {
    let pipeline = chained();
    let mut scheduler = Scheduler::new(pipeline.clone());
    let mut failed_one = false;
    loop {
        let mut progressed = false;
        for task in [TaskIndex(0), TaskIndex(1)] {
            while let Some(acquired) = scheduler.acquire(task, T0) {
                progressed = true;
                let fail =
                    !failed_one && task == TaskIndex(0) && id_of(&pipeline, acquired.key) == 40;
                let outcome = if fail { Outcome::Failed } else { Outcome::Success };
                match scheduler.release(acquired.key, outcome).unwrap() {
                    Released::Failed { .. } => failed_one = true,
                    Released::WillRetry { .. } => {}
                    Released::Completed { .. } => {}
                }
            }
        }
        if !progressed {
            break;
        }
    }
    assert!(failed_one);
    assert!(scheduler.is_done());
    let first = scheduler.counters(TaskIndex(0));
    let second = scheduler.counters(TaskIndex(1));
    assert_eq!(first.failed, 1);
    assert!(first.orphaned > 0, "same-task conflict neighbours are orphaned");
    assert!(second.orphaned > 0, "blocks of the downstream task are orphaned");
    assert_eq!(second.failed, 0);
    assert_eq!(first.completed + first.failed + first.orphaned, first.total);
    assert_eq!(second.completed + second.orphaned, second.total);
}

#[test]
fn known_done_blocks_are_skipped_and_ready_their_downstream() {
    let pipeline = one_d(true);
    let mut scheduler = Scheduler::new(pipeline.clone());
    let root = pipeline.key_of_id(A, crate::BlockId(2)).unwrap();
    scheduler.mark_known_done(root);
    let acquired = scheduler.acquire(A, T0).unwrap();
    assert_eq!(id_of(&pipeline, acquired.key), 1, "block 2 was skipped, block 1 is ready");
    scheduler.release(acquired.key, Outcome::Success).unwrap();
    let counters = scheduler.counters(A);
    assert_eq!((counters.completed, counters.skipped), (2, 1));
}

#[test]
fn stale_releases_are_refused_and_change_nothing() {
    let pipeline = one_d(true);
    let mut scheduler = Scheduler::new(pipeline.clone());
    let acquired = scheduler.acquire(A, T0).unwrap();
    scheduler.release(acquired.key, Outcome::Success).unwrap();
    let before = scheduler.counters(A);
    assert!(scheduler.release(acquired.key, Outcome::Failed).is_err());
    assert_eq!(scheduler.counters(A), before);
}

#[test]
fn expired_blocks_are_reported_once_per_attempt() {
    let mut spec = task("a", roi(&[0], &[4]), roi(&[0], &[3]), roi(&[1], &[1]));
    spec.timeout = Duration::from_secs(10);
    let pipeline = Arc::new(Pipeline::new(vec![spec]).unwrap());
    let mut scheduler = Scheduler::new(pipeline);
    let acquired = scheduler.acquire(A, Duration::from_secs(1)).unwrap();
    assert_eq!(scheduler.next_expired(Duration::from_secs(10)), None);
    assert_eq!(scheduler.next_expired(Duration::from_secs(11)), Some(acquired));
    assert_eq!(scheduler.next_expired(Duration::from_secs(12)), None);
    scheduler.release(acquired.key, Outcome::Failed).unwrap();
    let retry = scheduler.acquire(A, Duration::from_secs(20)).unwrap();
    assert_eq!(retry.attempt, 2);
    assert_eq!(scheduler.next_expired(Duration::from_secs(29)), None);
    assert_eq!(scheduler.next_expired(Duration::from_secs(31)), Some(retry));
}

#[test]
fn abandoning_a_task_orphans_it_and_its_downstream_tasks() {
    let pipeline = chained();
    let mut scheduler = Scheduler::new(pipeline.clone());
    let acquired = scheduler.acquire(TaskIndex(0), T0).unwrap();
    scheduler.release(acquired.key, Outcome::Success).unwrap();
    let _processing = scheduler.acquire(TaskIndex(0), T0).unwrap();
    let orphaned = scheduler.abandon(TaskIndex(0));
    assert_eq!(orphaned, 15 + 4);
    assert!(scheduler.is_done());
    assert_eq!(scheduler.counters(TaskIndex(0)).completed, 1);
    assert_eq!(scheduler.counters(TaskIndex(1)).orphaned, 4);
}

#[test]
fn simulation_reaches_every_block_of_the_chained_example() {
    let simulation = simulate(chained()).unwrap();
    assert_eq!(simulation.blocks, 16 + 4);
}

// ---- property tests -------------------------------------------------------

#[derive(Debug, Clone)]
struct RandomTask {
    write: Vec<i64>,
    context_lo: Vec<i64>,
    context_hi: Vec<i64>,
    blocks: Vec<i64>,
    extra: Vec<i64>,
    offset: Vec<i64>,
    fit: Fit,
    conflict: bool,
    max_workers: u32,
    max_retries: u32,
}

fn random_task(dims: usize) -> impl Strategy<Value = RandomTask> {
    let axis = prop::collection::vec;
    (
        axis(1i64..4, dims),
        axis(0i64..3, dims),
        axis(0i64..3, dims),
        axis(1i64..5, dims),
        axis(0i64..3, dims),
        axis(-4i64..5, dims),
        prop_oneof![Just(Fit::Valid), Just(Fit::Overhang), Just(Fit::Shrink)],
        any::<bool>(),
        1u32..4,
        0u32..3,
    )
        .prop_map(
            |(
                write,
                context_lo,
                context_hi,
                blocks,
                extra,
                offset,
                fit,
                conflict,
                max_workers,
                max_retries,
            )| {
                RandomTask {
                    write,
                    context_lo,
                    context_hi,
                    blocks,
                    extra,
                    offset,
                    fit,
                    conflict,
                    max_workers,
                    max_retries,
                }
            },
        )
}

fn random_pipeline() -> impl Strategy<Value = Vec<RandomTask>> {
    (1usize..=4).prop_flat_map(|dims| {
        let tasks = if dims >= 3 { 1usize..=2 } else { 1usize..=3 };
        prop::collection::vec(random_task(dims), tasks)
    })
}

/// Builds a chain: each task after the first reads what the previous writes.
fn build(random: &[RandomTask]) -> Arc<Pipeline> {
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut previous: Option<Pipeline> = None;
    for (position, t) in random.iter().enumerate() {
        let dims = t.write.len();
        let c = |v: &[i64]| Coordinate::new(v).unwrap();
        let (mut write, lo, hi) = (c(&t.write), c(&t.context_lo), c(&t.context_hi));
        let total = match &previous {
            None => {
                let shape = lo + hi + write * c(&t.blocks) + c(&t.extra);
                Roi::new(c(&t.offset), shape)
            }
            Some(prev) => {
                // Read what the previous task writes, with blocks that fit.
                let grid = &prev.tasks().last().unwrap().grid;
                let written = crate::pipeline::written_region(grid);
                write = write.min(&written.shape());
                written.grow(lo, hi)
            }
        };
        let read_template = Roi::new(Coordinate::zeros(dims), lo + write + hi);
        let write_template = Roi::new(lo, write);
        let mut spec = task(&format!("t{position}"), total, read_template, write_template);
        spec.fit = t.fit;
        spec.read_write_conflict = t.conflict;
        spec.max_workers = t.max_workers;
        spec.max_retries = t.max_retries;
        if position > 0 {
            spec.upstream = vec![specs[position - 1].id.clone()];
        }
        specs.push(spec);
        previous = Some(Pipeline::new(specs.clone()).expect("a chained random pipeline is valid"));
    }
    Arc::new(previous.unwrap())
}

fn all_blocks(pipeline: &Pipeline) -> Vec<Block> {
    let mut blocks = Vec::new();
    for (position, task) in pipeline.tasks().iter().enumerate() {
        for n in 0..task.grid.num_blocks() {
            blocks.push(pipeline.block_at(TaskIndex(position as u32), task.grid.nth_block(n)));
        }
    }
    blocks
}

fn conflicts(a: &Block, b: &Block) -> bool {
    a.read_roi.intersects(&b.write_roi) || b.read_roi.intersects(&a.write_roi)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Drives random pipelines with random failures and checks, at every
    /// step, what users depend on.
    #[test]
    fn random_runs_keep_every_promise(random in random_pipeline(), seed in any::<u64>(), fail_percent in 0u64..40) {
        let pipeline = build(&random);
        let blocks = all_blocks(&pipeline);
        let by_key: HashMap<BlockKey, Block> = blocks.iter().map(|b| (b.key, *b)).collect();
        let mut scheduler = Scheduler::new(pipeline.clone());
        let mut rng = seed;
        let mut next_random = move || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); rng >> 33 };
        let mut processing: Vec<BlockKey> = Vec::new();
        let mut succeeded: HashMap<BlockKey, u32> = HashMap::new();
        let mut failed_for_good: HashMap<BlockKey, u32> = HashMap::new();
        let mut attempts: HashMap<BlockKey, u32> = HashMap::new();

        loop {
            // Acquire a random number of blocks per task, up to max_workers in flight.
            for (position, task) in pipeline.tasks().iter().enumerate() {
                let task_index = TaskIndex(position as u32);
                let in_flight = processing.iter().filter(|k| k.task == task_index).count() as u32;
                let wanted = (next_random() % (task.spec.max_workers as u64 + 1)) as u32;
                for _ in in_flight..wanted.max(in_flight) {
                    let Some(acquired) = scheduler.acquire(task_index, T0) else { break };
                    let block = by_key[&acquired.key];
                    let tries = attempts.entry(acquired.key).or_default();
                    *tries += 1;
                    prop_assert_eq!(acquired.attempt, *tries);
                    prop_assert!(!succeeded.contains_key(&acquired.key), "a succeeded block ran again");
                    // Every upstream block succeeded.
                    let all_ok = pipeline.try_for_each_upstream(acquired.key, |up| {
                        if succeeded.contains_key(&up) { ControlFlow::Continue(()) } else { ControlFlow::Break(()) }
                    });
                    prop_assert!(all_ok.is_continue(), "block {:?} started before its upstream succeeded", block.block_id);
                    // ...including, by brute force, every block of an upstream task it reads.
                    for other in &blocks {
                        if pipeline.task(acquired.key.task).upstream.contains(&other.key.task)
                            && other.write_roi.intersects(&block.read_roi) {
                            prop_assert!(succeeded.contains_key(&other.key));
                        }
                    }
                    // No conflicting block of the same task is processing.
                    if pipeline.task(task_index).spec.read_write_conflict {
                        for key in &processing {
                            if key.task == task_index {
                                prop_assert!(!conflicts(&by_key[key], &block), "conflicting blocks processing at once");
                            }
                        }
                    }
                    processing.push(acquired.key);
                }
            }
            if processing.is_empty() {
                // Nothing in flight and nothing could be acquired: the run must be over.
                let any_ready = (0..pipeline.len()).any(|t| scheduler.counters(TaskIndex(t as u32)).ready > 0);
                if !any_ready { break; }
                continue;
            }
            // Release a random subset, with random failures.
            let release_count = 1 + (next_random() as usize % processing.len());
            for _ in 0..release_count {
                let position = next_random() as usize % processing.len();
                let key = processing.swap_remove(position);
                let attempt = attempts[&key];
                // A late report of an earlier attempt is ignored and changes nothing.
                if attempt > 1 {
                    let stale = scheduler.release_attempt(key, attempt - 1, Outcome::Failed);
                    prop_assert!(stale.is_err(), "a stale failure was applied");
                }
                // A worker stopped before it started the block hands it back: no attempt is
                // counted, and it is handed out again at the same attempt.
                if next_random() % 100 < 10 {
                    prop_assert!(scheduler.return_unstarted(key));
                    *attempts.get_mut(&key).expect("acquired") -= 1;
                    continue;
                }
                let outcome = if next_random() % 100 < fail_percent { Outcome::Failed } else { Outcome::Success };
                match scheduler.release_attempt(key, attempt, outcome).unwrap() {
                    Released::Completed { .. } => { *succeeded.entry(key).or_default() += 1; }
                    Released::WillRetry { failed_attempts } => {
                        prop_assert!(failed_attempts <= pipeline.task(key.task).spec.max_retries);
                    }
                    Released::Failed { .. } => {
                        *failed_for_good.entry(key).or_default() += 1;
                        prop_assert_eq!(attempts[&key], pipeline.task(key.task).spec.max_retries + 1);
                    }
                }
            }
            for position in 0..pipeline.len() {
                let c = scheduler.counters(TaskIndex(position as u32));
                prop_assert!(c.ready + c.in_flight() + c.completed + c.failed + c.orphaned <= c.total);
                prop_assert!(c.skipped <= c.completed);
            }
        }

        // Every block reached exactly one terminal state.
        prop_assert!(scheduler.is_done());
        prop_assert!(succeeded.values().all(|&n| n == 1));
        prop_assert!(failed_for_good.values().all(|&n| n == 1));
        for (position, _) in pipeline.tasks().iter().enumerate() {
            let task_index = TaskIndex(position as u32);
            let c = scheduler.counters(task_index);
            let ok = succeeded.keys().filter(|k| k.task == task_index).count() as u64;
            let failed = failed_for_good.keys().filter(|k| k.task == task_index).count() as u64;
            prop_assert_eq!(c.completed, ok);
            prop_assert_eq!(c.failed, failed);
            prop_assert_eq!(c.completed + c.failed + c.orphaned, c.total);
            prop_assert_eq!((c.ready, c.in_flight(), c.pending()), (0, 0, 0));
        }
        if fail_percent == 0 {
            prop_assert!(scheduler.all_succeeded());
        }
    }

    /// Without failures, the simulation reaches every block.
    #[test]
    fn every_block_of_a_valid_pipeline_is_reachable(random in random_pipeline()) {
        let pipeline = build(&random);
        let simulation = simulate(pipeline.clone()).unwrap();
        prop_assert_eq!(simulation.blocks, pipeline.num_blocks());
    }

    /// Ids, dense indices and enumeration order convert both ways, and
    /// downstream is exactly the reverse of upstream.
    #[test]
    fn block_names_round_trip_and_dependencies_are_symmetric(random in random_pipeline()) {
        let pipeline = build(&random);
        let blocks = all_blocks(&pipeline);
        let mut seen_ids = std::collections::HashSet::new();
        for block in &blocks {
            let grid = &pipeline.task(block.key.task).grid;
            prop_assert!(seen_ids.insert((block.key.task, block.block_id)), "ids are unique");
            prop_assert_eq!(grid.grid_index_of_id(block.block_id), Some(block.grid_index));
            prop_assert_eq!(grid.grid_index(block.key.index), block.grid_index);
            prop_assert_eq!(grid.nth_block(grid.enumeration_index(&block.grid_index)), block.grid_index);
            let upstream = pipeline.upstream_blocks(block.key);
            for up in &upstream {
                let downstream = pipeline.downstream_blocks(up.key);
                prop_assert!(downstream.iter().any(|d| d.key == block.key), "downstream is the reverse of upstream");
            }
            for down in pipeline.downstream_blocks(block.key) {
                prop_assert!(pipeline.upstream_blocks(down.key).iter().any(|u| u.key == block.key));
            }
        }
        // Write ROIs of one task never overlap.
        for a in &blocks {
            for b in &blocks {
                if a.key.task == b.key.task && a.key != b.key {
                    prop_assert!(!a.write_roi.intersects(&b.write_roi));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A scheduler that takes over by replaying the recorded outcomes (and
    /// marking the blocks still held by workers as in flight) has the same
    /// counters as the one it replaces, and finishes the run without
    /// running any succeeded block again.
    #[test]
    fn replaying_the_record_rebuilds_the_same_state(random in random_pipeline(), seed in any::<u64>(), cut in 0usize..200) {
        let pipeline = build(&random);
        let mut original = Scheduler::new(pipeline.clone());
        let mut rng = seed;
        let mut next_random = move || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); rng >> 33 };
        let mut record: Vec<(BlockKey, Outcome)> = Vec::new();
        let mut processing: Vec<BlockKey> = Vec::new();
        let mut steps = 0;
        while steps < cut {
            steps += 1;
            for position in 0..pipeline.len() {
                if let Some(acquired) = original.acquire(TaskIndex(position as u32), T0) {
                    processing.push(acquired.key);
                }
            }
            if processing.is_empty() { break; }
            let key = processing.swap_remove(next_random() as usize % processing.len());
            let outcome = if next_random() % 5 == 0 { Outcome::Failed } else { Outcome::Success };
            original.release(key, outcome).unwrap();
            record.push((key, outcome));
        }
        let mut replayed = Scheduler::new(pipeline.clone());
        for &(key, outcome) in &record {
            replayed.apply_recorded(key, outcome).unwrap();
        }
        for &key in &processing {
            prop_assert!(replayed.mark_in_flight(key));
        }
        for position in 0..pipeline.len() {
            let task = TaskIndex(position as u32);
            prop_assert_eq!(replayed.counters(task), original.counters(task));
        }
        // Finish the run on the replayed scheduler: the in-flight blocks
        // report, then everything else runs; nothing succeeded runs again.
        let succeeded: std::collections::HashSet<BlockKey> =
            record.iter().filter(|(_, o)| *o == Outcome::Success).map(|(k, _)| *k).collect();
        for key in processing.drain(..) {
            replayed.release(key, Outcome::Success).unwrap();
        }
        loop {
            let mut any = false;
            for position in 0..pipeline.len() {
                while let Some(acquired) = replayed.acquire(TaskIndex(position as u32), T0) {
                    prop_assert!(!succeeded.contains(&acquired.key), "a succeeded block ran again");
                    replayed.release(acquired.key, Outcome::Success).unwrap();
                    any = true;
                }
            }
            if !any { break; }
        }
        prop_assert!(replayed.is_done());
    }
}
