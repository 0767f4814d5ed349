//! Operating runs from another shell (issue 5, item 5): `daisy status`, `daisy runs`,
//! `daisy retry` and `daisy cancel` against a real `nats-server` (daisy-testkit), with runs
//! driven by `daisy run --nats` or the `daisy-scheduler` and `daisy-worker` binaries.
//!
//! Every block runs [`BLOCK_SH`], which appends `<task> <block id>` to `$ATTEMPTS` when an
//! attempt starts (attempts are counted on the processor's side) and fails the block named by
//! `$FAIL_ONCE` the first time only (a marker file remembers it). Waiting is on a condition
//! under a deadline, never a fixed sleep; children are killed when their guard drops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use daisy_nats::{ConnectOptions, Nats};
use daisy_proto::RunId;
use daisy_testkit::TestNats;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::util::describe;

/// One attempt: recorded, then failed once for `$FAIL_ONCE`, else sleeps `$SLEEP` seconds.
const BLOCK_SH: &str = r#"
echo "$DAISY_TASK_ID $DAISY_BLOCK_ID" >> "$ATTEMPTS"
if [ "$DAISY_TASK_ID:$DAISY_BLOCK_ID" = "$FAIL_ONCE" ] && [ ! -e "$ATTEMPTS.failed" ]; then
  touch "$ATTEMPTS.failed"
  echo "boom in $DAISY_BLOCK_ID" >&2
  exit 3
fi
sleep "${SLEEP:-0}"
"#;

/// How long a run may take on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A test's server, directory and client.
struct Setup {
    nats: TestNats,
    dir: TempDir,
    runtime: tokio::runtime::Runtime,
    client: Nats,
}

impl Setup {
    fn new() -> Setup {
        let nats = TestNats::start().expect("nats-server starts");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(nats.wait_ready(Duration::from_secs(20))).expect("jetstream is ready");
        let client = runtime
            .block_on(daisy_nats::connect(&ConnectOptions::new(nats.url())))
            .expect("the test connects");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("block.sh"), BLOCK_SH).unwrap();
        Setup { nats, dir, runtime, client }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>.toml`: task `a` of `blocks` blocks and task `b` downstream of it
    /// (block i of `b` reads block i of `a`), both running `block.sh`.
    fn pipeline(&self, name: &str, blocks: u64, extra: &str) -> PathBuf {
        let task = |id: &str, more: &str| {
            format!(
                "[[task]]\nid = \"{id}\"\ntotal_roi = {{ offset = [0], shape = [{}] }}\n\
                 read_roi = {{ offset = [0], shape = [10] }}\nwrite_roi = {{ offset = [0], shape = [10] }}\n\
                 read_write_conflict = false\ncommand = [\"sh\", \"{}\"]\nmax_retries = 0\n{more}\n{extra}\n",
                blocks * 10,
                self.path("block.sh").display()
            )
        };
        let file = self.path(&format!("{name}.toml"));
        std::fs::write(&file, task("a", "") + &task("b", "upstream = [\"a\"]")).unwrap();
        file
    }

    fn attempts_file(&self, run: &str) -> PathBuf {
        self.path(&format!("attempts-{run}"))
    }

    /// How often each (task, block id) of `run` was attempted.
    fn attempts(&self, run: &str) -> BTreeMap<(String, u64), usize> {
        let text = std::fs::read_to_string(self.attempts_file(run)).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let (task, id) = line.split_once(' ').expect("attempt line");
            *counts.entry((task.to_owned(), id.parse().unwrap())).or_default() += 1;
        }
        counts
    }

    /// Sets the environment `block.sh` reads.
    fn block_env(&self, command: &mut Command, run: &str, fail_once: &str, sleep: &str) {
        command
            .env("ATTEMPTS", self.attempts_file(run))
            .env("FAIL_ONCE", fail_once)
            .env("SLEEP", sleep)
            .env_remove("RUST_LOG")
            .env_remove("NATS_URL")
            .current_dir(self.dir.path());
    }

    /// `daisy run <run>.toml --nats URL` to its end.
    fn daisy_run(&self, run: &str, fail_once: &str) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy"));
        command.arg("run").arg(self.path(&format!("{run}.toml"))).args([
            "--nats",
            self.nats.url(),
            "--no-progress",
            "--json",
        ]);
        self.block_env(&mut command, run, fail_once, "0");
        command.output().unwrap()
    }

    /// `daisy-scheduler` of `run` (2 s lease, JSON summary).
    fn scheduler(&self, run: &str) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy-scheduler"));
        command.args(["--nats", self.nats.url()]).arg(self.path(&format!("{run}.toml"))).args([
            "--run-id",
            run,
            "--lease-ttl",
            "2s",
            "--json",
            "--no-progress",
        ]);
        self.block_env(&mut command, run, "", "0");
        Proc::spawn(command)
    }

    /// `daisy-worker` of `run`, one slot.
    fn worker(&self, run: &str, fail_once: &str, sleep: &str) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy-worker"));
        command.args(["--nats", self.nats.url(), "--run", run, "--slots", "1"]);
        command.arg("--log-dir").arg(self.path("logs")).arg("--state-dir").arg(self.path("state"));
        self.block_env(&mut command, run, fail_once, sleep);
        Proc::spawn(command)
    }

    /// `daisy <args> --nats URL`.
    fn daisy(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy"));
        command.args(args).args(["--nats", self.nats.url()]).current_dir(self.dir.path());
        command.env_remove("NATS_URL").env_remove("RUST_LOG");
        command.output().unwrap()
    }

    /// `daisy status <run> --json`, which must succeed.
    fn status(&self, run: &str) -> Value {
        let output = self.daisy(&["status", run, "--json"]);
        assert!(output.status.success(), "{}", describe(&output));
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
            if output.status.success() && done(&status) {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}: {}",
                describe(&output)
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether `daisy cancel`'s mark is in `run`'s KV status.
    fn cancelled(&self, run: &str) -> bool {
        let run = RunId::new(run).unwrap();
        self.runtime.block_on(async {
            let streams = self.client.open_run(&run).await.expect("the run exists");
            streams.get_status().await.expect("status reads").is_some_and(|s| s.cancelled)
        })
    }
}

/// A child process killed on drop; its stdout and stderr go to files.
struct Proc {
    child: Child,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
}

impl Proc {
    fn spawn(mut command: Command) -> Proc {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .spawn()
            .expect("the binary starts");
        Proc { child, out, err }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit under the deadline.
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "process did not exit:\n{}", self.stderr());
            std::thread::sleep(POLL);
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.out.path()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        let text = std::fs::read_to_string(self.err.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!("--- stderr of a killed child ---\n{}", self.stderr());
            }
        }
    }
}

fn task_json(id: &str, total: u64, completed: u64, failed: u64, orphaned: u64) -> Value {
    json!({
        "id": id, "total": total, "ready": 0, "processing": 0, "completed": completed,
        "skipped": 0, "failed": failed, "orphaned": orphaned, "pending": 0,
        "first_error": null, "abandoned": null,
    })
}

#[test]
fn status_json_has_the_schema_and_exact_counts_and_runs_lists_and_deletes() {
    let setup = Setup::new();
    setup.pipeline("good", 3, "");
    setup.pipeline("bad", 3, "");
    let output = setup.daisy_run("good", "");
    assert!(output.status.success(), "{}", describe(&output));
    let output = setup.daisy_run("bad", "a:1");
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
    // With one run left, it is the default.
    let output = setup.daisy(&["status", "--json"]);
    assert!(output.status.success(), "{}", describe(&output));
    let only: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(only["run"], "bad");
}

#[test]
fn retry_reruns_only_the_failed_block_and_its_orphans() {
    let setup = Setup::new();
    setup.pipeline("flaky", 4, "");
    let output = setup.daisy_run("flaky", "a:2");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let before = setup.attempts("flaky");
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

    let mut scheduler = setup.scheduler("flaky");
    let mut worker = setup.worker("flaky", "a:2", "0");
    let code = scheduler.wait();
    assert!(code.success(), "{code}: {}\n{}", scheduler.stdout(), scheduler.stderr());
    assert!(worker.wait().success(), "{}", worker.stderr());
    let after = setup.attempts("flaky");
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
fn status_shows_leader_and_workers_and_cancel_stops_a_run_that_resumes() {
    let setup = Setup::new();
    setup.pipeline("long", 5, "");
    let mut scheduler = setup.scheduler("long");
    let mut worker = setup.worker("long", "", "0.3");
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
    let code = scheduler.wait();
    assert_eq!(code.code(), Some(1), "{}", scheduler.stderr());
    let summary: Value = serde_json::from_str(scheduler.stdout().trim()).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", scheduler.stdout(), scheduler.stderr());
    });
    assert_eq!(summary["interrupted"], true, "{summary}");
    assert!(worker.wait().success(), "the worker exits: {}", worker.stderr());
    let stopped = setup.status("long");
    assert_eq!((&stopped["finished"], &stopped["leader"]), (&json!(false), &Value::Null));
    let done_before: u64 =
        stopped["tasks"].as_array().unwrap().iter().map(|t| t["completed"].as_u64().unwrap()).sum();
    assert!(done_before < 10, "cancelled before the end: {stopped}");
    // Not finished: nothing to retry; cancelled already.
    let output = setup.daisy(&["retry", "long"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));

    // A new scheduler resumes it; no block runs twice.
    let mut scheduler = setup.scheduler("long");
    let start = Instant::now();
    while setup.cancelled("long") {
        assert!(start.elapsed() < DEADLINE, "the new leader clears the cancel mark");
        std::thread::sleep(POLL);
    }
    let mut worker = setup.worker("long", "", "0");
    let code = scheduler.wait();
    assert!(code.success(), "{code}: {}", scheduler.stderr());
    assert!(worker.wait().success(), "{}", worker.stderr());
    let attempts = setup.attempts("long");
    assert_eq!(attempts.len(), 10, "{attempts:?}");
    assert!(attempts.values().all(|&n| n == 1), "no block ran twice: {attempts:?}");
    let output = setup.daisy(&["cancel", "long"]);
    assert_eq!(output.status.code(), Some(2), "a finished run: {}", describe(&output));
}
