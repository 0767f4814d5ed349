//! Operating runs from another shell (issue 5, item 5): `daisy status`, `daisy runs`,
//! `daisy retry` and `daisy cancel` against a real `nats-server` (daisy-testkit), with runs
//! driven by `daisy run --nats` or the `daisy-scheduler` and `daisy-worker` binaries.
//!
//! The harness is `util`'s: every block runs its `block.sh`, which records each attempt
//! (attempts are counted on the processor's side) and fails the block named by `$FAIL_ONCE`
//! the first time only. Waiting is on a condition under a deadline, never a fixed sleep;
//! children are killed when their guard drops.

use std::process::Output;
use std::time::Instant;

use serde_json::{Value, json};

use crate::util::{
    HANG_SH, POLL, Proc, RUN_DEADLINE, Setup, Watched, counts, describe, line_count, run, task,
    wait_until,
};

/// Task `a` of `blocks` blocks and task `b` downstream of it (block i of `b` reads block i of
/// `a`), neither retried.
fn a_then_b(setup: &Setup, blocks: u64) -> String {
    setup.task("a", blocks, "max_retries = 0")
        + &setup.task("b", blocks, "max_retries = 0\nupstream = [\"a\"]")
}

/// The `daisy` subcommands that operate a run, against the test's server.
impl Setup {
    /// `daisy <args> --nats URL`.
    fn daisy(&self, args: &[&str]) -> Output {
        let mut command = crate::util::daisy();
        command.args(args).args(["--nats", self.nats.url()]).current_dir(self.dir.path());
        command.env_remove("NATS_URL").env_remove("RUST_LOG");
        command.output().unwrap()
    }

    /// `daisy status <run> --json`, which must show a status: exit code 0, or 1 when the
    /// run has failed or orphaned blocks.
    fn status(&self, run: &str) -> Value {
        let output = self.daisy(&["status", run, "--json"]);
        let failed = serde_json::from_slice::<Value>(&output.stdout).is_ok_and(|status| {
            status["tasks"].as_array().into_iter().flatten().any(|task| {
                task["failed"].as_u64() > Some(0) || task["orphaned"].as_u64() > Some(0)
            })
        });
        assert_eq!(output.status.code(), Some(i32::from(failed)), "{}", describe(&output));
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", describe(&output)))
    }

    /// Waits until `daisy status <run> --json` succeeds and satisfies `done` (the run may not
    /// be provisioned yet at first); returns that status.
    fn wait_status(&self, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let output = self.daisy(&["status", run, "--json"]);
            let status = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            if matches!(output.status.code(), Some(0 | 1)) && done(&status) {
                return status;
            }
            assert!(
                start.elapsed() < RUN_DEADLINE,
                "timed out waiting for {what}: {}",
                describe(&output)
            );
            std::thread::sleep(POLL);
        }
    }
}

fn task_json(id: &str, total: u64, completed: u64, failed: u64, orphaned: u64) -> Value {
    json!({
        "id": id, "total": total, "ready": 0, "dispatched": 0, "processing": 0,
        "completed": completed, "skipped": 0, "failed": failed, "orphaned": orphaned,
        "pending": 0, "first_error": null, "abandoned": null, "stragglers": [],
    })
}

#[test]
fn status_json_has_the_schema_and_exact_counts_and_runs_lists_and_deletes() {
    let setup = Setup::new();
    setup.pipeline("good", &a_then_b(&setup, 3));
    setup.pipeline("bad", &a_then_b(&setup, 3));
    let output = run(setup.daisy_run("good").arg("--json"));
    assert!(output.status.success(), "{}", describe(&output));
    let output = run(setup.daisy_run("bad").arg("--json").env("FAIL_ONCE", "a:1"));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));

    let mut good = setup.status("good");
    let age = good["status_age_seconds"].take();
    assert!(age.as_f64().is_some_and(|age| (0.0..60.0).contains(&age)), "{age}");
    assert_eq!(
        good,
        json!({
            "run": "good", "finished": true, "succeeded": true, "leader": null, "workers": 0,
            "status_age_seconds": null,
            "tasks": [task_json("a", 3, 3, 0, 0), task_json("b", 3, 3, 0, 0)],
        })
    );
    let bad = setup.status("bad");
    assert_eq!((&bad["finished"], &bad["succeeded"]), (&json!(true), &json!(false)), "{bad}");
    let first_error = bad["tasks"][0]["first_error"].as_str().unwrap_or_default().to_owned();
    assert!(first_error.starts_with("block 1 attempt 1 (failed)"), "{first_error}");
    let mut tasks = bad["tasks"].clone();
    tasks[0]["first_error"] = Value::Null;
    assert_eq!(tasks, json!([task_json("a", 3, 2, 1, 0), task_json("b", 3, 2, 0, 1)]));

    // The human form names the run, the counters and the first error.
    let text = setup.daisy(&["status", "bad"]);
    assert_eq!(text.status.code(), Some(1), "a failed run: {}", describe(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("run bad on") && text.contains("failed"), "{text}");
    assert!(text.contains("a: block 1 attempt 1 (failed)"), "{text}");

    // No run named, two on the server: bad input that lists them.
    let output = setup.daisy(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad, good"), "{}", describe(&output));

    let output = setup.daisy(&["runs", "--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let runs: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        runs,
        json!({"runs": [
            {"run": "bad", "state": "failed", "finished": true, "succeeded": false,
             "completed": 4, "total": 6, "workers": 0, "leader": null},
            {"run": "good", "state": "succeeded", "finished": true, "succeeded": true,
             "completed": 6, "total": 6, "workers": 0, "leader": null},
        ]})
    );
    let output = setup.daisy(&["runs"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("good") && table.contains("6/6"), "{}", describe(&output));

    let output = setup.daisy(&["runs", "--delete", "good"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("deleted run good"));
    let output = setup.daisy(&["runs", "--json"]);
    let runs: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(runs["runs"][0]["run"], "bad");
    let output = setup.daisy(&["status", "good"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let output = setup.daisy(&["runs", "--delete", "good"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    // With one run left, it is the default; it failed, so the exit code is 1.
    let output = setup.daisy(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let only: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(only["run"], "bad");
}

#[test]
fn retry_reruns_only_the_failed_block_and_its_orphans() {
    let setup = Setup::new();
    setup.pipeline("flaky", &a_then_b(&setup, 4));
    let output = run(setup.daisy_run("flaky").arg("--json").env("FAIL_ONCE", "a:2"));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let before = setup.attempt_counts("flaky");
    assert_eq!(before.len(), 7, "every block but the orphan b:2 ran: {before:?}");
    assert!(before.values().all(|&n| n == 1), "{before:?}");

    let output = setup.daisy(&["retry", "flaky"]);
    assert!(output.status.success(), "{}", describe(&output));
    let hint = String::from_utf8_lossy(&output.stdout);
    assert!(hint.contains("1 failed and 1 orphaned") && hint.contains("daisy-scheduler"), "{hint}");
    let status = setup.status("flaky");
    assert_eq!(status["finished"], false, "{status}");
    // A second retry before a scheduler ran: the run is not finished.
    let output = setup.daisy(&["retry", "flaky"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not finished"));

    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("flaky"));
    let mut worker = Proc::spawn("worker", setup.worker("flaky").env("FAIL_ONCE", "a:2"));
    let code = scheduler.wait(RUN_DEADLINE);
    assert_eq!(code, Some(0), "{}\n{}", scheduler.stdout(), scheduler.stderr());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
    let after = setup.attempt_counts("flaky");
    let mut expected = before.clone();
    *expected.get_mut(&("a".to_owned(), 2)).unwrap() += 1;
    expected.insert(("b".to_owned(), 2), 1);
    assert_eq!(after, expected, "only a:2 and its orphan b:2 ran again");
    let status = setup.status("flaky");
    assert_eq!((&status["finished"], &status["succeeded"]), (&json!(true), &json!(true)));
    assert_eq!(status["tasks"], json!([task_json("a", 4, 4, 0, 0), task_json("b", 4, 4, 0, 0)]));

    // Nothing failed any more: nothing to retry.
    let output = setup.daisy(&["retry", "flaky"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no failed or orphaned"));
}

#[test]
fn a_forever_worker_records_the_retried_block_it_failed_before() {
    // One block, so the retried batch is the failed one again: same task, block, attempt
    // number and worker. Its outcome must still be recorded (a new dispatch epoch).
    let setup = Setup::new();
    setup.pipeline("once", &setup.task("a", 1, "max_retries = 0"));
    let mut worker = Proc::spawn(
        "forever worker",
        setup.worker("once").arg("--forever").env("FAIL_ONCE", "a:0"),
    );
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("once"));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(1), "{}", scheduler.stderr());
    let output = setup.daisy(&["retry", "once"]);
    assert!(output.status.success(), "{}", describe(&output));
    let mut scheduler = Proc::spawn("scheduler after retry", &mut setup.scheduler("once"));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(counts(&scheduler.json(), "a"), [1, 1, 0, 0, 0]);
    assert_eq!(setup.attempt_counts("once"), [(("a".to_owned(), 0), 2)].into());
    assert!(!worker.exited(), "a --forever worker keeps serving");
}

#[test]
fn status_shows_leader_and_workers_and_cancel_stops_a_run_that_resumes() {
    let setup = Setup::new();
    setup.pipeline("long", &a_then_b(&setup, 5));
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("long"));
    let mut worker = Proc::spawn("worker", setup.worker("long").env("SLEEP", "0.3"));
    scheduler.wait_line("leading the run", RUN_DEADLINE);
    let mut standby = Proc::spawn("standby", &mut setup.scheduler("long"));
    standby.wait_line("standing by", RUN_DEADLINE);
    let running = setup.wait_status("long", "a leader, a worker and progress", |s| {
        !s["leader"].is_null()
            && s["workers"] == 1
            && s["tasks"][0]["completed"].as_u64().is_some_and(|n| n >= 1)
    });
    assert_eq!(running["leader"]["pid"], scheduler.pid(), "{running}");
    assert_eq!(running["finished"], false);
    assert!(running["status_age_seconds"].as_f64().is_some_and(|age| age < 30.0), "{running}");
    let text = setup.daisy(&["status", "long"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("running") && text.contains("workers: 1 live"), "{text}");

    let output = setup.daisy(&["cancel", "long"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(1), "{}", scheduler.stderr());
    let summary = scheduler.json();
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "the worker exits: {}", worker.stderr());
    // The standby stops too, without leading the cancelled run.
    assert_eq!(standby.wait(RUN_DEADLINE), Some(1), "{}", standby.stderr());
    let standby_logs = standby.stderr();
    assert!(standby_logs.contains("cancelled while standing by"), "{standby_logs}");
    assert!(!standby_logs.contains("leading the run"), "{standby_logs}");
    let never_led = standby.json();
    assert_eq!((&never_led["interrupted"], &never_led["tasks"]), (&json!(true), &json!([])));
    assert!(setup.cancelled("long"), "the cancel mark stays until a scheduler resumes");
    let stopped = setup.status("long");
    assert_eq!((&stopped["finished"], &stopped["leader"]), (&json!(false), &Value::Null));
    let done_before: u64 =
        stopped["tasks"].as_array().unwrap().iter().map(|t| t["completed"].as_u64().unwrap()).sum();
    assert!(done_before < 10, "cancelled before the end: {stopped}");
    // Not finished: nothing to retry; cancelled already.
    let output = setup.daisy(&["retry", "long"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));

    // A new scheduler resumes it; no block runs twice.
    let mut scheduler = Proc::spawn("scheduler again", &mut setup.scheduler("long"));
    wait_until("the new leader to clear the cancel mark", RUN_DEADLINE, || {
        !setup.cancelled("long")
    });
    let mut worker = Proc::spawn("worker again", &mut setup.worker("long"));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
    let attempts = setup.attempt_counts("long");
    assert_eq!(attempts.len(), 10, "{attempts:?}");
    assert!(attempts.values().all(|&n| n == 1), "no block ran twice: {attempts:?}");
    let output = setup.daisy(&["cancel", "long"]);
    assert_eq!(output.status.code(), Some(2), "a finished run: {}", describe(&output));
}

#[test]
fn a_daisy_worker_finishes_its_blocks_on_ctrl_c_and_quits_killing_them_on_a_second() {
    let setup = Setup::new();
    let hang = setup.path("hang.sh");
    std::fs::write(&hang, HANG_SH).unwrap();
    let command = format!("command = [\"sh\", \"{}\"]", hang.display());
    setup.pipeline("hang", &task("t", 1, &command));
    let _scheduler = Proc::spawn("scheduler", &mut setup.scheduler("hang"));
    let pids = setup.path("pids");
    let mut worker = Proc::spawn("worker", setup.worker("hang").env("PIDS", &pids));
    wait_until("the block to start", RUN_DEADLINE, || line_count(&pids) >= 1);
    let blocks = Watched::read(&pids);
    assert_eq!(blocks.0.len(), 2, "the command and its sleep alive");
    worker.signal("INT");
    worker.wait_line("again to quit at once", RUN_DEADLINE);
    assert!(!worker.exited(), "the first Ctrl-C waits for the blocks in flight");
    worker.signal("INT");
    assert_eq!(worker.wait(RUN_DEADLINE), Some(130), "{}", worker.stderr());
    // The commands run in their own process groups, out of reach of the terminal's Ctrl-C.
    wait_until("the block commands and their children to be killed", RUN_DEADLINE, || {
        blocks.alive().is_empty()
    });
}
