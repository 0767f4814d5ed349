//! What runs now, as `daisy status --json` shows it (issue 14 item 5, issue 9 item 4):
//! `processing` counts running blocks only, never more than the task's slots, while blocks
//! handed out in batches but not started are `dispatched`; a block running far longer than
//! its task's median is listed as a straggler with its worker and trace id; and a new
//! leader's status keeps the last known counters.
//!
//! Blocks run [`GATE_SH`], which holds each block until the test opens its gate: the test
//! decides when blocks end and waits on what status says, never on the clock.

use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

use crate::util::{POLL, Proc, RUN_DEADLINE, Setup, describe, task};

/// One attempt of a block (one process per block): notes the block id in `$GATES/started`,
/// then waits until `$GATES/open-all` or `$GATES/open-<id>` exists, unless
/// `$GATES/hold-<id>` does. The wait is the user's process polling a file, as a slow block
/// would be; the test itself only waits on events.
const GATE_SH: &str = r#"#!/bin/sh
echo "$DAISY_BLOCK_ID" >> "$GATES/started"
while :; do
  if [ ! -e "$GATES/hold-$DAISY_BLOCK_ID" ]; then
    if [ -e "$GATES/open-all" ] || [ -e "$GATES/open-$DAISY_BLOCK_ID" ]; then exit 0; fi
  fi
  sleep 0.02
done
"#;

/// Slots (`max_workers`) of the test's task.
const SLOTS: u64 = 2;

impl Setup {
    /// `<run>.toml` with task `a` of `blocks` gated blocks and [`SLOTS`] workers.
    fn gated(&self, run: &str, blocks: u64) {
        std::fs::write(self.path("gate.sh"), GATE_SH).unwrap();
        std::fs::create_dir_all(self.path("gates")).unwrap();
        let command = format!("command = [\"sh\", \"{}\"]", self.path("gate.sh").display());
        let extra = format!("{command}\nmax_workers = {SLOTS}\nmax_retries = 0\ntimeout = \"5m\"");
        self.pipeline(run, &task("a", blocks, &extra));
    }

    fn gate(&self, name: &str) -> std::path::PathBuf {
        self.path("gates").join(name)
    }

    fn open(&self, name: &str) {
        std::fs::write(self.gate(name), "").unwrap();
    }

    /// The block ids that started, in order.
    fn started(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(self.gate("started")).unwrap_or_default();
        text.lines().filter_map(|line| line.trim().parse().ok()).collect()
    }

    fn with_gates<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command.env("GATES", self.path("gates"))
    }

    fn status_json(&self, run: &str) -> (Output, Value) {
        let output = crate::util::daisy()
            .args(["status", run, "--json", "--nats", self.nats.url()])
            .current_dir(self.dir.path())
            .env_remove("NATS_URL")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let status = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output, status)
    }
}

/// Task `a`'s entry of a status, if the status has one.
fn task_a(status: &Value) -> Option<&Value> {
    status["tasks"].as_array()?.iter().find(|t| t["id"] == "a")
}

fn counter(task: &Value, name: &str) -> u64 {
    task[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {task}"))
}

/// Reads `daisy status --json` until `done` holds for task `a`, checking on every read that
/// no more blocks are processing than there are slots. Returns that status and whether any
/// read showed blocks dispatched but not started.
fn watch_until(
    setup: &Setup,
    run: &str,
    what: &str,
    done: impl Fn(&Value, &Value) -> bool,
) -> (Value, bool) {
    let start = Instant::now();
    let mut saw_dispatched = false;
    loop {
        let (output, status) = setup.status_json(run);
        if let Some(a) = task_a(&status) {
            assert!(counter(a, "processing") <= SLOTS, "more processing than slots: {status}");
            saw_dispatched |= counter(a, "dispatched") > 0;
            if done(&status, a) {
                return (status, saw_dispatched);
            }
        }
        assert!(
            start.elapsed() < RUN_DEADLINE,
            "timed out waiting for {what}: {}",
            describe(&output)
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn processing_counts_running_blocks_only_and_a_straggler_is_listed_with_worker_and_trace() {
    let setup = Setup::new();
    setup.gated("r", 12);
    let mut scheduler = Proc::spawn("scheduler", setup.with_gates(&mut setup.scheduler("r")));
    let mut worker =
        Proc::spawn("worker", setup.with_gates(&mut setup.worker_with_slots("r", SLOTS as u32)));

    // Every gate closed: both slots run a block, and the leader keeps more batches queued.
    let (status, saw_dispatched) =
        watch_until(&setup, "r", "both slots running", |_, a| counter(a, "processing") == SLOTS);
    let a = task_a(&status).expect("task a");
    assert!(
        saw_dispatched || counter(a, "dispatched") > 0,
        "blocks handed out in batches beyond the slots count as dispatched: {status}"
    );

    // One running block is held; the others finish fast and make the median.
    let straggler = setup.started()[0];
    setup.open(&format!("hold-{straggler}"));
    setup.open("open-all");
    let (status, _) = watch_until(&setup, "r", "a straggler listed", |_, a| {
        a["stragglers"].as_array().is_some_and(|s| !s.is_empty())
    });
    let a = task_a(&status).expect("task a");
    let listed = &a["stragglers"][0];
    assert_eq!(listed["block_id"], straggler, "{status}");
    let worker_slot = listed["worker"].as_str().unwrap_or_default();
    assert!(
        worker_slot.ends_with("-a-0") || worker_slot.ends_with("-a-1"),
        "the worker slot running it: {status}"
    );
    let trace_id = daisy_telemetry::block_trace_id("r", "a", straggler).to_string();
    assert_eq!(listed["trace_id"], trace_id.as_str(), "{status}");
    assert!(listed["running_seconds"].as_f64().is_some_and(|s| s >= 1.0), "{status}");
    assert!(counter(a, "completed") >= 5, "the median needs outcomes: {status}");
    let text = crate::util::daisy()
        .args(["status", "r", "--nats", setup.nats.url()])
        .current_dir(setup.dir.path())
        .env_remove("NATS_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("dispatched") && text.contains(&format!("block {straggler} attempt 1 on")),
        "{text}"
    );
    assert!(text.contains(&trace_id), "the human status names the trace: {text}");
    scheduler.wait_line(&trace_id, RUN_DEADLINE);
    assert!(scheduler.stderr().contains("straggler"), "{}", scheduler.describe());

    std::fs::remove_file(setup.gate(&format!("hold-{straggler}"))).unwrap();
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.describe());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.describe());
    let (_, status) = setup.status_json("r");
    let a = task_a(&status).expect("task a");
    assert_eq!((counter(a, "completed"), counter(a, "processing")), (12, 0), "{status}");
    assert_eq!(a["stragglers"], serde_json::json!([]), "{status}");
}

/// Right after a failover `status --json` showed `"tasks": []` until the new leader's first
/// tick: every read across a leader change must show the last known counters.
#[test]
fn status_across_a_leader_change_shows_the_last_known_counters() {
    let setup = Setup::new();
    setup.gated("f", 8);
    for block in 0..3 {
        setup.open(&format!("open-{block}"));
    }
    let mut leader = Proc::spawn("leader", setup.with_gates(&mut setup.scheduler("f")));
    let (status, _) =
        watch_until(&setup, "f", "the first leader leading", |s, _| !s["leader"].is_null());
    let first_leader = status["leader"]["pid"].clone();
    assert_eq!(first_leader, leader.pid(), "{status}");
    let mut standby = Proc::spawn("standby", setup.with_gates(&mut setup.scheduler("f")));
    let mut worker =
        Proc::spawn("worker", setup.with_gates(&mut setup.worker_with_slots("f", SLOTS as u32)));
    let (status, _) = watch_until(&setup, "f", "three blocks done, two running", |_, a| {
        counter(a, "completed") == 3 && counter(a, "processing") == SLOTS
    });
    let completed = counter(task_a(&status).expect("task a"), "completed");

    leader.kill();
    // Every read until the standby has led for a while shows the counters.
    let start = Instant::now();
    let mut reads_under_new_leader = 0;
    while reads_under_new_leader < 10 {
        let (output, status) = setup.status_json("f");
        assert!(output.status.success(), "{}", describe(&output));
        let a = task_a(&status).unwrap_or_else(|| panic!("a status without task a: {status}"));
        assert_eq!(counter(a, "total"), 8, "{status}");
        assert!(counter(a, "completed") >= completed, "counters went back: {status}");
        if status["leader"]["pid"] == standby.pid() {
            reads_under_new_leader += 1;
        }
        assert!(start.elapsed() < RUN_DEADLINE, "the standby never led: {}", standby.describe());
    }

    setup.open("open-all");
    assert_eq!(standby.wait(RUN_DEADLINE), Some(0), "{}", standby.describe());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.describe());
}

#[test]
fn a_straggler_factor_that_is_not_a_number_is_refused_naming_the_fix() {
    for binary in
        [crate::util::daisy().arg("run"), &mut Command::new(env!("CARGO_BIN_EXE_daisy-scheduler"))]
    {
        let output = binary.args(["pipeline.toml", "--straggler-factor", "slow"]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--straggler-factor") && stderr.contains("0 / off"), "{stderr}");
    }
}
