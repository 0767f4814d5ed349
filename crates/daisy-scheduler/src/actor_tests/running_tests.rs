//! What runs now: the `processing` / `dispatched` split and straggler detection, from what
//! the transport says workers run.

use super::*;
use crate::TaskReport;

/// 1-D, 20 independent blocks, two workers.
const TWENTY: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0], shape = [20] }
read_roi = { offset = [0], shape = [1] }
write_roi = { offset = [0], shape = [1] }
max_workers = 2
command = ["true"]
"#;

fn running(index: u64, attempt: u32, slot: &str, running_ms: u64) -> RunningBlock {
    RunningBlock { task: "a".into(), index, attempt, slot: WorkerId::from(slot), running_ms }
}

fn success_in(index: u64, attempt: u32, seconds: f32) -> BlockResult {
    BlockResult { seconds, ..success(index, attempt) }
}

impl Harness {
    /// Says what workers run now (the transport's view).
    fn workers_run(&mut self, blocks: Vec<RunningBlock>) {
        *self.running.lock().expect("the running list is never poisoned") = blocks;
    }

    /// Waits (in paused time) for a snapshot of task `a` that satisfies `pred`.
    async fn snapshot_where(&mut self, pred: impl Fn(&TaskReport) -> bool) -> TaskReport {
        let snapshot = tokio::time::timeout(
            PATIENCE,
            self.snapshots.wait_for(|s| s.task("a").is_some_and(&pred)),
        )
        .await
        .expect("a snapshot with the expected counts comes")
        .expect("the actor runs");
        snapshot.task("a").expect("task a").clone()
    }

    /// Completes `count` blocks that each took `seconds`, one batch at a time.
    async fn complete_blocks(&mut self, count: usize, seconds: f32) {
        let mut completed = 0;
        while completed < count {
            let dispatched = self.dispatched().await;
            assert!(!dispatched.is_empty(), "blocks keep coming");
            for batch in dispatched {
                let results =
                    batch.dispatch.blocks.iter().map(|b| success_in(b.index, b.attempt, seconds));
                completed += batch.dispatch.blocks.len();
                self.send(report("a", batch.batch, results.collect()));
            }
        }
    }
}

/// Issue 14: `processing` showed every block handed out in a batch; Daisy users read it as
/// "running now". Only blocks a worker reports running and that are in flight at the
/// reported attempt count, each once; the rest of the blocks in flight are `dispatched`.
#[tokio::test(start_paused = true)]
async fn regression_14_processing_counts_only_blocks_a_worker_runs() {
    let mut h = Harness::start(pipeline(TWENTY), Setup { capacity: 2, ..Setup::default() });
    let dispatched = h.dispatched().await;
    let in_flight: Vec<u64> = dispatched.iter().flat_map(Dispatched::indices).collect();
    assert_eq!(in_flight.len(), 2, "two batches of one block: {dispatched:?}");
    let a = h.snapshot_where(|t| t.counters.dispatched == 2).await;
    assert_eq!(a.counters.processing, 0, "nothing is known to run yet");

    let not_in_flight = (0..20).find(|i| !in_flight.contains(i)).expect("a ready block");
    h.workers_run(vec![
        running(in_flight[0], 1, "w-a-0", 10),
        // The same block from a worker whose batch was redelivered elsewhere: counted once.
        running(in_flight[0], 1, "w-a-1", 10),
        // A block this leader has not handed out (a report older than an outcome).
        running(not_in_flight, 1, "w-a-1", 10),
        // Another attempt than the one in flight.
        running(in_flight[1], 7, "w-a-1", 10),
    ]);
    let a = h.snapshot_where(|t| t.counters.processing == 1).await;
    assert_eq!((a.counters.dispatched, a.counters.ready), (1, 18));
    assert_eq!(a.counters.pending(), 0);

    h.workers_run(vec![
        running(in_flight[0], 1, "w-a-0", 10),
        running(in_flight[1], 1, "w-a-1", 10),
    ]);
    let a = h.snapshot_where(|t| t.counters.processing == 2).await;
    assert_eq!(a.counters.dispatched, 0);
    h.workers_run(Vec::new());
    h.snapshot_where(|t| t.counters.processing == 0 && t.counters.dispatched == 2).await;
}

/// Issue 9: a block running more than the factor times its task's median (and at least
/// the floor of a second) is listed with its worker and trace id while it runs, and no
/// longer once its outcome is in, even if a stale report still says it runs.
#[tokio::test(start_paused = true)]
async fn regression_9_a_block_running_far_longer_than_the_median_is_a_straggler() {
    let mut h = Harness::start(pipeline(TWENTY), Setup::default());
    h.complete_blocks(crate::straggler::MIN_SAMPLES, 0.1).await;
    let slow = h.one_batch().await;
    let [index] = slow.indices()[..] else { panic!("one block: {slow:?}") };

    // 0.9 s: more than 5 × 0.1 s, but under the one-second floor.
    h.workers_run(vec![running(index, 1, "host-7-a-0", 900)]);
    let a = h.snapshot_where(|t| t.counters.processing == 1).await;
    assert!(a.stragglers.is_empty(), "under the floor: {:?}", a.stragglers);

    h.workers_run(vec![running(index, 1, "host-7-a-0", 1500)]);
    let a = h.snapshot_where(|t| !t.stragglers.is_empty()).await;
    let grid = &h.pipeline.task(h.task("a")).grid;
    let block_id = grid.block_id(&grid.grid_index(BlockIndex(index))).0;
    let [straggler] = &a.stragglers[..] else { panic!("one straggler: {:?}", a.stragglers) };
    assert_eq!((straggler.block_id, straggler.attempt), (block_id, 1));
    assert_eq!(straggler.worker, "host-7-a-0");
    assert_eq!(
        straggler.trace_id,
        daisy_telemetry::block_trace_id(RUN_ID, "a", block_id).to_string()
    );
    assert!((straggler.median_seconds - 0.1).abs() < 1e-6, "{}", straggler.median_seconds);
    assert!(straggler.running_seconds >= 1.5, "{}", straggler.running_seconds);

    h.send(report("a", slow.batch, vec![success_in(index, 1, 2.0)]));
    let a = h.snapshot_where(|t| t.stragglers.is_empty()).await;
    assert_eq!(a.counters.processing, 0, "a stale report of a finished block counts for nothing");
}

/// `--straggler-factor 0` turns detection off.
#[tokio::test(start_paused = true)]
async fn no_straggler_is_listed_when_detection_is_off() {
    let config = SchedulerConfig { straggler_factor: None, ..Setup::default().config };
    let mut h = Harness::start(pipeline(TWENTY), Setup { config, ..Setup::default() });
    h.complete_blocks(crate::straggler::MIN_SAMPLES, 0.1).await;
    let slow = h.one_batch().await;
    h.workers_run(vec![running(slow.indices()[0], 1, "w-a-0", 3_600_000)]);
    let a = h.snapshot_where(|t| t.counters.processing == 1).await;
    assert!(a.stragglers.is_empty(), "{:?}", a.stragglers);
}

/// Right after a failover the status showed `"tasks": []` until the new leader's first
/// tick: the first snapshot exists before the actor runs, with the replayed counters.
#[tokio::test(start_paused = true)]
async fn the_first_snapshot_holds_the_replayed_counters_before_the_actor_runs() {
    let replayed = ReplayedOutcomes {
        events: vec![
            started(1),
            Event::Outcomes(report("a", BatchId(5), vec![success(3, 1), success(4, 1)])),
        ],
        mode: ReplayMode::Continue,
        in_flight: Vec::new(),
    };
    let h = Harness::start(pipeline(TWENTY), Setup { replayed, epoch: 2, ..Setup::default() });
    let first = h.snapshots.borrow().clone();
    let a = first.task("a").expect("the first snapshot lists the task");
    assert_eq!((a.counters.total, a.counters.completed), (20, 2));
}
