//! What a run's blocks did, from the workers' side, and the checker that proves the promises
//! of issue 8 from it: conflicting blocks never overlap, no block starts before what it
//! depends on finished, and a block whose success is recorded never starts again.
//!
//! Every block of a conflict test runs [`TIMELINE_SH`], which appends one line when the block
//! starts and one when it ends (or fails) to the run's timeline file, with the wall clock in
//! nanoseconds. [`Timeline`] pairs them into [`BlockRun`]s. [`check`] reads dependencies and
//! conflicts from the real plan (daisy-core's grid and pipeline, the functions the scheduler
//! uses), never from a copy of their geometry, and the record from the run's event stream
//! ([`Record`], with the time the server stored each outcome).
//!
//! A start without an end is a block whose process died without finishing (or is still
//! running when the file is read): [`check`] treats it as running forever, the conservative
//! choice, so that nothing which started after it and conflicts with it can pass unnoticed.
//! The fault tests only kill daisy processes, never block processes (they run in their own
//! process group and finish on their own), so a test that reads the timeline after its run
//! has ended sees no open run unless something really vanished.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;

use daisy_core::{BlockId, BlockIndex, BlockKey, Pipeline};
use daisy_proto::{Event, OutcomeKind};

use crate::util::StoredEvent;

/// One attempt of a block: `start <task> <block id> <attempt> <worker pid> <pid> <t_ns>`
/// before its work, `end ...` after it, `fail ...` instead when `$FAIL_ONCE` (`task:id,..`)
/// names it and no marker file says it failed before. The work is `sleep $SLEEP`. `<worker
/// pid>` is the daisy-worker that ran it (the script's parent), `<pid>` the script's own,
/// which tells two runs of one attempt by one worker apart. Each line is one `>>` write,
/// short enough to be appended atomically. Reads `$DAISY_BLOCK` without a `sed` process:
/// block time is mostly process starts.
pub const TIMELINE_SH: &str = r#"#!/bin/sh
rest=${DAISY_BLOCK#*\"attempt\":}
run="$DAISY_TASK_ID $DAISY_BLOCK_ID ${rest%%[!0-9]*} $PPID $$"
echo "start $run $(date +%s%N)" >> "$TIMELINE"
case ",$FAIL_ONCE," in *",$DAISY_TASK_ID:$DAISY_BLOCK_ID,"*)
  marker="$TIMELINE.failed-$DAISY_TASK_ID-$DAISY_BLOCK_ID"
  if [ ! -e "$marker" ]; then
    : > "$marker"
    echo "fail $run $(date +%s%N)" >> "$TIMELINE"
    echo "boom in $DAISY_BLOCK_ID" >&2
    exit 3
  fi;;
esac
sleep "$SLEEP"
echo "end $run $(date +%s%N)" >> "$TIMELINE"
"#;

/// How a [`BlockRun`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It wrote `end` at this time: the block succeeded.
    Succeeded(u64),
    /// It wrote `fail` at this time.
    Failed(u64),
    /// No end line (yet): it died mid-block, or is still running.
    Open,
}

/// One run of a block's command, as the timeline records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRun {
    pub task: String,
    /// Daisy's block id (`$DAISY_BLOCK_ID`).
    pub block_id: u64,
    pub attempt: u32,
    /// The daisy-worker that ran it.
    pub worker: u32,
    /// The block script's own pid.
    pub pid: u32,
    /// Wall clock, nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: End,
}

impl BlockRun {
    /// When it stopped running; `u64::MAX` if it never ended (see the module docs).
    pub fn until(&self) -> u64 {
        match self.end {
            End::Succeeded(at) | End::Failed(at) => at,
            End::Open => u64::MAX,
        }
    }

    pub fn succeeded_at(&self) -> Option<u64> {
        match self.end {
            End::Succeeded(at) => Some(at),
            End::Failed(_) | End::Open => None,
        }
    }

    fn overlaps(&self, other: &BlockRun) -> bool {
        self.start < other.until() && other.start < self.until()
    }
}

impl fmt::Display for BlockRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.end {
            End::Succeeded(at) => format!("ok at {at}"),
            End::Failed(at) => format!("failed at {at}"),
            End::Open => "never ended".to_owned(),
        };
        write!(
            f,
            "{} block {} attempt {} (worker {}, pid {}) from {} {end}",
            self.task, self.block_id, self.attempt, self.worker, self.pid, self.start
        )
    }
}

/// Every block run of a test run, in the order they started.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub runs: Vec<BlockRun>,
}

impl Timeline {
    /// The timeline in `file`; empty if there is no file yet.
    pub fn read(file: &Path) -> Timeline {
        Timeline::parse(&std::fs::read_to_string(file).unwrap_or_default())
    }

    /// Pairs each `end`/`fail` line with the `start` line of the same run (task, block id,
    /// attempt, worker pid and pid).
    ///
    /// # Panics
    /// On a malformed line, or an end without a start.
    pub fn parse(text: &str) -> Timeline {
        let mut runs: Vec<BlockRun> = Vec::new();
        let mut open: BTreeMap<(String, u64, u32, u32, u32), usize> = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 7, "timeline line {line:?}");
            let number = |field: usize| -> u64 {
                fields[field].parse().unwrap_or_else(|e| panic!("timeline line {line:?}: {e}"))
            };
            let run = BlockRun {
                task: fields[1].to_owned(),
                block_id: number(2),
                attempt: number(3) as u32,
                worker: number(4) as u32,
                pid: number(5) as u32,
                start: number(6),
                end: End::Open,
            };
            let key = (run.task.clone(), run.block_id, run.attempt, run.worker, run.pid);
            match fields[0] {
                "start" => {
                    open.insert(key, runs.len());
                    runs.push(run);
                }
                "end" | "fail" => {
                    let index = open.remove(&key).unwrap_or_else(|| {
                        panic!("timeline line {line:?} ends a run that never started")
                    });
                    runs[index].end = if fields[0] == "end" {
                        End::Succeeded(run.start)
                    } else {
                        End::Failed(run.start)
                    };
                }
                other => panic!("timeline line {line:?}: unknown kind {other:?}"),
            }
        }
        Timeline { runs }
    }

    /// How many runs ended (successfully or not) so far.
    pub fn ended(&self) -> usize {
        self.runs.iter().filter(|run| run.end != End::Open).count()
    }

    /// The runs of daisy-worker `worker`.
    pub fn of_worker(&self, worker: u32) -> impl Iterator<Item = &BlockRun> {
        self.runs.iter().filter(move |run| run.worker == worker)
    }
}

/// One success a run's event stream records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedSuccess {
    /// The daisy-worker that reported it (from its worker id, `<host>-<pid>-<task>-<slot>`);
    /// `None` for an id of another shape.
    pub worker: Option<u32>,
    pub attempt: u32,
    /// When the server stored the event, nanoseconds since the Unix epoch.
    pub stored: u64,
}

/// The successes a run's event stream records, per block (skips, which no block command ran
/// for, are not successes here).
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub successes: BTreeMap<BlockKey, Vec<RecordedSuccess>>,
}

impl Record {
    /// The successes in `events`. Blocks of tasks the pipeline does not have are ignored.
    pub fn from_events(pipeline: &Pipeline, events: &[StoredEvent]) -> Record {
        let mut successes: BTreeMap<BlockKey, Vec<RecordedSuccess>> = BTreeMap::new();
        for stored in events {
            let Some(Event::Outcomes(report)) = &stored.event else { continue };
            let Some(task) = pipeline.task_index(&report.task) else { continue };
            let worker = worker_pid(&report.worker.0, &report.task);
            for result in &report.results {
                if result.outcome == OutcomeKind::Success {
                    let key = BlockKey { task, index: BlockIndex(result.index) };
                    successes.entry(key).or_default().push(RecordedSuccess {
                        worker,
                        attempt: result.attempt,
                        stored: stored.stored,
                    });
                }
            }
        }
        Record { successes }
    }

    /// When the block's success was first recorded.
    pub fn first_success(&self, key: BlockKey) -> Option<u64> {
        self.successes.get(&key)?.iter().map(|success| success.stored).min()
    }

    /// The blocks whose success was recorded by daisy-worker `worker`.
    pub fn recorded_by(&self, worker: u32) -> BTreeSet<BlockKey> {
        let mut blocks = BTreeSet::new();
        for (key, successes) in &self.successes {
            if successes.iter().any(|success| success.worker == Some(worker)) {
                blocks.insert(*key);
            }
        }
        blocks
    }
}

/// The pid in a NATS worker id `<host>-<pid>-<task>-<slot>`.
fn worker_pid(worker_id: &str, task: &str) -> Option<u32> {
    let (rest, _slot) = worker_id.rsplit_once('-')?;
    let rest = rest.strip_suffix(task)?.strip_suffix('-')?;
    rest.rsplit_once('-')?.1.parse().ok()
}

/// A broken promise, found by [`check`] or [`check_ran_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two runs of conflicting blocks (the same block, blocks of one task of which one reads
    /// what the other writes, or a block and one of its upstream blocks) overlapped in time.
    Overlap { first: BlockRun, second: BlockRun },
    /// A block started before one of the blocks it depends on had succeeded.
    StartedBeforeUpstream { run: BlockRun, upstream: String },
    /// A block started after its success was recorded.
    StartedAfterRecordedSuccess { run: BlockRun, recorded: u64 },
    /// A block has no recorded success, or no successful run behind it.
    Lost { block: String, runs: usize, recorded: usize },
    /// A block whose success was recorded succeeded more often than allowed.
    SucceededAgain { block: String, runs: Vec<BlockRun> },
    /// The timeline names a block the plan does not have.
    UnknownBlock { run: BlockRun },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap { first, second } => {
                write!(f, "conflicting runs overlap: [{first}] and [{second}]")
            }
            Violation::StartedBeforeUpstream { run, upstream } => {
                write!(f, "[{run}] started before its upstream {upstream} succeeded")
            }
            Violation::StartedAfterRecordedSuccess { run, recorded } => {
                write!(f, "[{run}] started after its success was recorded at {recorded}")
            }
            Violation::Lost { block, runs, recorded } => {
                write!(f, "{block} is lost: {runs} successful runs, {recorded} recorded successes")
            }
            Violation::SucceededAgain { block, runs } => {
                let runs: Vec<String> = runs.iter().map(|run| format!("[{run}]")).collect();
                write!(f, "{block} succeeded {} times: {}", runs.len(), runs.join(", "))
            }
            Violation::UnknownBlock { run } => write!(f, "[{run}] is not a block of the plan"),
        }
    }
}

/// `task block <id> at <grid index>`, for messages.
fn describe_block(pipeline: &Pipeline, key: BlockKey) -> String {
    let block = pipeline.block(key);
    format!("{} block {} at {}", pipeline.task(key.task).spec.id, block.block_id, block.grid_index)
}

/// The runs of each block, as indices into `timeline.runs`.
fn runs_by_block(
    pipeline: &Pipeline,
    timeline: &Timeline,
    violations: &mut Vec<Violation>,
) -> BTreeMap<BlockKey, Vec<usize>> {
    let mut by_block: BTreeMap<BlockKey, Vec<usize>> = BTreeMap::new();
    for (index, run) in timeline.runs.iter().enumerate() {
        let key = pipeline
            .task_index(&run.task)
            .and_then(|task| pipeline.key_of_id(task, BlockId(run.block_id)));
        match key {
            Some(key) => by_block.entry(key).or_default().push(index),
            None => violations.push(Violation::UnknownBlock { run: run.clone() }),
        }
    }
    by_block
}

/// The blocks `key` must not overlap with: itself; within a task with
/// `read_write_conflict`, every block that writes into its read ROI (the other direction,
/// blocks reading what it writes, is found from their side); and every block it depends on
/// (daisy-core's upstream: previous-level neighbours and upstream tasks' blocks).
fn conflicting(pipeline: &Pipeline, key: BlockKey) -> BTreeSet<BlockKey> {
    let mut blocks = BTreeSet::from([key]);
    let grid = &pipeline.task(key.task).grid;
    if grid.read_write_conflict() {
        let read_roi = pipeline.block(key).read_roi;
        grid.blocks_writing_into(&read_roi).for_each(|k| {
            blocks.insert(BlockKey { task: key.task, index: grid.dense_index(&k) });
        });
    }
    blocks.extend(upstream(pipeline, key));
    blocks
}

/// What `key` waits for, as daisy-core computes it.
fn upstream(pipeline: &Pipeline, key: BlockKey) -> Vec<BlockKey> {
    let mut blocks = Vec::new();
    let _ = pipeline.try_for_each_upstream(key, |up| {
        blocks.push(up);
        ControlFlow::Continue(())
    });
    blocks
}

/// Checks the timeline of a run against its plan and its record:
/// (a) no two runs of conflicting blocks overlap (counting every run, failed or never
/// ended); (b) no run starts before each block it depends on has a successful run that ended
/// before it; (c) no run of a block starts after the block's success was first recorded.
pub fn check(pipeline: &Pipeline, timeline: &Timeline, record: &Record) -> Vec<Violation> {
    let mut violations = Vec::new();
    let by_block = runs_by_block(pipeline, timeline, &mut violations);
    let runs = &timeline.runs;
    let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
    for (&key, mine) in &by_block {
        for other in conflicting(pipeline, key) {
            let Some(theirs) = by_block.get(&other) else { continue };
            for &a in mine {
                for &b in theirs {
                    let pair = (a.min(b), a.max(b));
                    if a != b && runs[a].overlaps(&runs[b]) && reported.insert(pair) {
                        let (first, second) = (runs[pair.0].clone(), runs[pair.1].clone());
                        violations.push(Violation::Overlap { first, second });
                    }
                }
            }
        }
        let upstream = upstream(pipeline, key);
        for &index in mine {
            let run = &runs[index];
            for &up in &upstream {
                let finished_before = by_block.get(&up).is_some_and(|ups| {
                    ups.iter().any(|&u| runs[u].succeeded_at().is_some_and(|end| end < run.start))
                });
                if !finished_before {
                    let upstream = describe_block(pipeline, up);
                    violations
                        .push(Violation::StartedBeforeUpstream { run: run.clone(), upstream });
                }
            }
            if let Some(recorded) = record.first_success(key)
                && run.start > recorded
            {
                violations
                    .push(Violation::StartedAfterRecordedSuccess { run: run.clone(), recorded });
            }
        }
    }
    violations
}

/// Checks that every block of the plan succeeded once: it has a recorded success, exactly
/// one of its successful runs is a recorded one (same worker and attempt), and, unless
/// `allow_unrecorded`, no other run succeeded (one whose outcome never got recorded, e.g.
/// because its worker was killed before recording it, may be run again).
pub fn check_ran_once(
    pipeline: &Pipeline,
    timeline: &Timeline,
    record: &Record,
    allow_unrecorded: bool,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let by_block = runs_by_block(pipeline, timeline, &mut violations);
    for &task in pipeline.topological_order() {
        for index in 0..pipeline.task(task).grid.num_blocks() {
            let key = BlockKey { task, index: BlockIndex(index) };
            let succeeded: Vec<&BlockRun> = by_block
                .get(&key)
                .into_iter()
                .flatten()
                .map(|&run| &timeline.runs[run])
                .filter(|run| run.succeeded_at().is_some())
                .collect();
            let recorded = record.successes.get(&key).map_or(&[][..], Vec::as_slice);
            // Each recorded success stands for one run: the latest run of its worker and
            // attempt that ended before the server stored it. One worker may run a block
            // twice (a delivery that lapsed before it recorded, then its redelivery), and
            // only a run some recorded success stands for counts as recorded.
            let mut stood_for = vec![false; succeeded.len()];
            let mut by_time: Vec<&RecordedSuccess> = recorded.iter().collect();
            by_time.sort_by_key(|r| r.stored);
            for success in by_time {
                let candidate = succeeded
                    .iter()
                    .enumerate()
                    .filter(|(position, run)| {
                        !stood_for[*position]
                            && success.worker == Some(run.worker)
                            && success.attempt == run.attempt
                            && run.succeeded_at().is_some_and(|end| end <= success.stored)
                    })
                    .max_by_key(|(_, run)| run.succeeded_at())
                    .map(|(position, _)| position);
                if let Some(position) = candidate {
                    stood_for[position] = true;
                }
            }
            let recorded_runs = stood_for.iter().filter(|&&recorded| recorded).count();
            let block = describe_block(pipeline, key);
            if recorded.is_empty() || recorded_runs == 0 {
                let (runs, recorded) = (succeeded.len(), recorded.len());
                violations.push(Violation::Lost { block, runs, recorded });
            } else if recorded_runs > 1 || (!allow_unrecorded && succeeded.len() > 1) {
                let runs = succeeded.into_iter().cloned().collect();
                violations.push(Violation::SucceededAgain { block, runs });
            }
        }
    }
    violations
}

/// Panics listing `violations` (the first 30), if there are any.
pub fn assert_no_violations(what: &str, violations: &[Violation]) {
    if violations.is_empty() {
        return;
    }
    let listed: Vec<String> = violations.iter().take(30).map(|v| format!("  {v}")).collect();
    panic!("{what}: {} violations:\n{}", violations.len(), listed.join("\n"));
}

/// The checker must be able to fail: hand-made timelines of a small 1-D conflict task.
#[cfg(test)]
mod tests {
    use super::*;

    /// Four blocks of 10 reading 2 on each side: neighbours conflict, and the odd blocks (the
    /// first level) go before the even ones.
    fn plan() -> Pipeline {
        let tasks = daisy_core::parse_pipeline(
            r#"
            [[task]]
            id = "t"
            total_roi = { offset = [0], shape = [44] }
            read_roi = { offset = [0], shape = [14] }
            write_roi = { offset = [2], shape = [10] }
            read_write_conflict = true
            command = ["true"]
            "#,
        )
        .unwrap();
        Pipeline::new(tasks).unwrap()
    }

    fn recorded(pipeline: &Pipeline, blocks: &[(u64, u64)]) -> Record {
        let task = pipeline.task_index("t").unwrap();
        let mut record = Record::default();
        for &(index, stored) in blocks {
            let key = BlockKey { task, index: BlockIndex(index) };
            let success = RecordedSuccess { worker: Some(7), attempt: 1, stored };
            record.successes.entry(key).or_default().push(success);
        }
        record
    }

    #[test]
    fn the_checker_passes_a_correct_timeline_and_reports_overlaps_early_starts_and_reruns() {
        let pipeline = plan();
        let t = pipeline.task_index("t").unwrap();
        let grid = &pipeline.task(t).grid;
        let level = |id: u64| grid.level(&grid.grid_index_of_id(BlockId(id)).unwrap());
        assert_eq!((level(1), level(3), level(0), level(2)), (0, 0, 1, 1), "odd blocks first");

        // Odd blocks 100-200, then even blocks 300-400, each recorded 50 ns after its end.
        let good = "start t 1 1 7 11 100\nstart t 3 1 7 13 100\nend t 1 1 7 11 200\n\
                    end t 3 1 7 13 200\nstart t 0 1 7 10 300\nstart t 2 1 7 12 300\n\
                    end t 0 1 7 10 400\nend t 2 1 7 12 400\n";
        let record = recorded(&pipeline, &[(1, 250), (3, 250), (0, 450), (2, 450)]);
        let timeline = Timeline::parse(good);
        assert_eq!(check(&pipeline, &timeline, &record), []);
        assert_eq!(check_ran_once(&pipeline, &timeline, &record, false), []);

        // Block 2 starts at 150, while block 1 (its upstream neighbour) runs until 200.
        let early = good.replace("start t 2 1 7 12 300", "start t 2 1 7 12 150");
        let violations = check(&pipeline, &Timeline::parse(&early), &record);
        assert!(
            violations.iter().any(|v| matches!(v, Violation::Overlap { first, second }
                if (first.block_id, second.block_id) == (1, 2))),
            "{violations:#?}"
        );
        assert!(
            violations.iter().any(|v| matches!(v, Violation::StartedBeforeUpstream { run, .. }
                if run.block_id == 2)),
            "{violations:#?}"
        );

        // Block 1 runs again from 500, after its success was recorded at 250 (and while
        // nothing conflicts with it): a re-run of a recorded block.
        let rerun = format!("{good}start t 1 1 8 21 500\nend t 1 1 8 21 600\n");
        let timeline = Timeline::parse(&rerun);
        let violations = check(&pipeline, &timeline, &record);
        assert!(
            matches!(violations.as_slice(), [Violation::StartedAfterRecordedSuccess { run, recorded: 250 }]
                if run.block_id == 1 && run.worker == 8),
            "{violations:#?}"
        );
        // Unrecorded (worker 8 reported nothing): allowed only when asked.
        assert_eq!(check_ran_once(&pipeline, &timeline, &record, true), []);
        let violations = check_ran_once(&pipeline, &timeline, &record, false);
        assert!(
            matches!(violations.as_slice(), [Violation::SucceededAgain { .. }]),
            "{violations:#?}"
        );

        // A run that never ended overlaps everything after it; a block without a recorded
        // success is lost.
        let open = good.replace("end t 1 1 7 11 200\n", "");
        let violations = check(&pipeline, &Timeline::parse(&open), &record);
        assert!(
            violations.iter().any(|v| matches!(v, Violation::Overlap { .. })),
            "{violations:#?}"
        );
        let partial = recorded(&pipeline, &[(1, 250), (3, 250), (0, 450)]);
        let violations = check_ran_once(&pipeline, &Timeline::parse(good), &partial, false);
        assert!(matches!(violations.as_slice(), [Violation::Lost { .. }]), "{violations:#?}");
    }

    #[test]
    fn a_worker_pid_is_read_from_its_worker_id() {
        assert_eq!(worker_pid("host-a.b-1234-up-0", "up"), Some(1234));
        assert_eq!(worker_pid("my-host-99-some-task-3", "some-task"), Some(99));
        assert_eq!(worker_pid("dead-letters", "up"), None);
    }
}
