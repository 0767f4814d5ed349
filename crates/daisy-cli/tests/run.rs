//! `daisy run`: real pipelines through the real binary, with user processes
//! in Python and sh, failures, crashes, timeouts, resume and Ctrl-C.
//!
//! Every test has its own directory holding the pipeline file, its scripts,
//! the state dir and the log dir; scripts append `task block_id attempt pid`
//! to the file named by `$ATTEMPTS` when an attempt starts (as util's
//! [`BLOCK_SH`] does), which is what "every block ran once" is counted from.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{
    Attempt, BLOCK_SH, HANG_SH, Proc, RUN_DEADLINE, Watched, assert_each_ran_once,
    assert_none_ran_again, counts, daisy, daisy_run, describe, done_blocks, line_count,
    read_attempts, run, task, task_report, wait_until,
};

/// A Python worker built on daisy_worker.py, driven by env vars:
/// `FAIL=task:id,..` raises for those blocks, `CRASH=task:id,..` exits the
/// process on a block's first attempt (`CRASH_ALWAYS=1`: on every block),
/// `SLEEP=s` sleeps per block,
/// `SLOW=task:id=s,..` sleeps longer for some blocks and `PIDS=file`
/// appends the worker's pid to that file when it starts.
const WORKER_PY: &str = r#"
import os, time
import daisy_worker

def listed(name, task, bid):
    return f"{task}:{bid}" in os.environ.get(name, "").split(",")

def process(block):
    task, bid = block.block_id
    with open(os.environ["ATTEMPTS"], "a") as f:
        f.write(f"{task} {bid} {block.attempt} {os.getpid()}\n")
    print(f"processing {task} {bid}")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    for entry in os.environ.get("SLOW", "").split(","):
        if entry.startswith(f"{task}:{bid}="):
            time.sleep(float(entry.split("=")[1]))
    if listed("CRASH", task, bid) and block.attempt == 1 or os.environ.get("CRASH_ALWAYS"):
        os._exit(3)
    if listed("FAIL", task, bid):
        raise ValueError(f"block {bid} is cursed")

if __name__ == "__main__":
    if "PIDS" in os.environ:
        with open(os.environ["PIDS"], "a") as f:
            f.write(f"{os.getpid()}\n")
    daisy_worker.serve(process)
"#;

/// A worker without the helper that answers every block after writing
/// lines that are not protocol replies to stdout.
const GARBAGE_PY: &str = r#"
import json, os, sys
for line in sys.stdin:
    block = json.loads(line)
    with open(os.environ["ATTEMPTS"], "a") as f:
        f.write(f"{block['task']} {block['block_id']} {block['attempt']} {os.getpid()}\n")
    print("garbage {not json", flush=True)
    print(json.dumps({"hello": "world"}), flush=True)
    print(json.dumps({"block_id": block["block_id"], "status": "success"}), flush=True)
"#;

/// A one-process-per-block command that never ends by itself: it starts a
/// `sleep` (a grandchild of daisy, in the command's process group), appends
/// `<its own pid> <the sleep's pid>` to `$PIDS` and waits.
/// A check: blocks with even ids are already done.
const EVEN_DONE_SH: &str = r#"
test $((DAISY_BLOCK_ID % 2)) -eq 0
"#;

/// A test's directory: pipeline, scripts, state, logs and the attempts file.
struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every `.ext` log of `task`'s worker slots, of every daisy process
    /// (`logs/<task>/<host>-<pid>/worker_<n>.<ext>`), one after the other.
    fn worker_logs(&self, task: &str, ext: &str) -> String {
        let mut text = String::new();
        for process in std::fs::read_dir(self.path("logs").join(task)).unwrap() {
            for file in std::fs::read_dir(process.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_some_and(|found| found == ext) {
                    text += &std::fs::read_to_string(path).unwrap();
                }
            }
        }
        text
    }

    /// Writes a file into the project's `pipelines/` dir (executable).
    fn write(&self, name: &str, text: &str) {
        let path = self.path("pipelines").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn pipeline(&self, tasks: &[String]) {
        self.write("pipeline.toml", &tasks.concat());
    }

    fn run_dir(&self) -> PathBuf {
        self.path("state").join("pipeline")
    }

    /// `daisy run` on the pipeline, started from another directory than the
    /// pipeline's, with state and logs in the project.
    fn daisy_run(&self, args: &[&str]) -> Command {
        let pipeline = self.path("pipelines").join("pipeline.toml");
        let mut command = daisy_run(&pipeline, self.dir.path(), &self.path("attempts"));
        command.args(args);
        command
    }

    /// The attempts per (task, block id), in the order they started.
    fn attempts(&self) -> BTreeMap<(String, u64), Vec<Attempt>> {
        read_attempts(&self.path("attempts"))
    }

    fn attempt_lines(&self) -> usize {
        line_count(&self.path("attempts"))
    }

    /// Blocks (task, index) the journal records as succeeded or skipped.
    fn journal_done(&self) -> BTreeSet<(String, u64)> {
        done_blocks(daisy::journal::read_journal(&self.run_dir()).unwrap_or_default())
    }
}

/// The attempt numbers of a block's runs, in the order they started.
fn numbers(runs: &[Attempt]) -> Vec<u32> {
    runs.iter().map(|run| run.attempt).collect()
}

/// Whether every block ran as its first attempt.
fn all_first(attempts: &BTreeMap<(String, u64), Vec<Attempt>>) -> bool {
    attempts.values().all(|runs| numbers(runs) == [1])
}

/// Ctrl-C, then Ctrl-C again once daisy said it is winding down: daisy quits
/// at once with 130, without waiting for the blocks in flight, and the user
/// processes of those blocks (`in_flight`) are killed soon after.
fn ctrl_c_twice(running: &mut Proc, in_flight: &Watched, what: &str) {
    running.signal("INT");
    running.wait_line("daisy: interrupted", Duration::from_secs(10));
    running.signal("INT");
    let started = Instant::now();
    let code = running.wait(RUN_DEADLINE);
    assert_eq!(code, Some(130), "{}", running.describe());
    assert!(started.elapsed() < Duration::from_secs(4), "quit without waiting for the blocks");
    wait_until(&format!("{what} to be killed"), Duration::from_secs(5), || {
        in_flight.alive().is_empty()
    });
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("--json output: {err}\n{}", describe(output)))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn python_workers_process_every_block_once_and_a_second_run_skips_them_all() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    project.pipeline(&[
        task("up", 8, "max_workers = 2\nworker = [\"python3\", \"worker.py\"]"),
        task(
            "down",
            8,
            "max_workers = 2\nupstream = [\"up\"]\nworker = [\"python3\", \"worker.py\"]",
        ),
    ]);
    let output = run(&mut project.daisy_run(&[]));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let attempts = project.attempts();
    assert_each_ran_once(&attempts, &[("up", 8), ("down", 8)]);
    assert!(all_first(&attempts), "{attempts:?}");
    let text = stdout(&output);
    assert!(text.contains("all 16 blocks processed successfully"), "{text}");
    // The helper came from the state dir, and user prints went to the logs.
    assert!(project.path("state/python/daisy_worker.py").is_file());
    let out_log = project.worker_logs("up", "out");
    assert!(out_log.contains("processing up"), "{out_log}");
    assert!(stderr(&output).contains("new run"), "{}", describe(&output));

    // Daisy #62: a run where every block is skipped still has a summary.
    let again = run(&mut project.daisy_run(&["--json"]));
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    let report = json(&again);
    assert_eq!(counts(&report, "up"), [8, 8, 8, 0, 0]);
    assert_eq!(counts(&report, "down"), [8, 8, 8, 0, 0]);
    assert_eq!(report["all_succeeded"], true);
    assert_eq!(project.attempt_lines(), 16, "no block ran again");
    assert!(stderr(&again).contains("resuming"), "{}", describe(&again));
}

#[test]
fn commands_run_once_per_block_and_checked_blocks_are_skipped() {
    let project = Project::new();
    project.write("bin/block.sh", BLOCK_SH);
    project.write("even_done.sh", EVEN_DONE_SH);
    project.pipeline(&[task(
        "cmd",
        10,
        "max_workers = 2\ncommand = [\"./bin/block.sh\"]\ncheck = [\"sh\", \"even_done.sh\"]",
    )]);
    let output = run(&mut project.daisy_run(&["--json"]));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(counts(&report, "cmd"), [10, 10, 5, 0, 0]);
    let attempts = project.attempts();
    let ran: Vec<u64> = attempts.keys().map(|(_, id)| *id).collect();
    assert_eq!(ran, [1, 3, 5, 7, 9]);
    assert!(all_first(&attempts), "{attempts:?}");
}

#[test]
fn a_block_that_always_fails_is_failed_its_downstream_orphaned_and_the_rest_done() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    let worker = "worker = [\"python3\", \"worker.py\"]";
    project.pipeline(&[
        task("up", 10, &format!("max_workers = 2\nmax_retries = 2\n{worker}")),
        task("down", 10, &format!("upstream = [\"up\"]\n{worker}")),
        task("other", 5, worker),
    ]);
    let output = run(project.daisy_run(&["--json"]).env("FAIL", "up:3"));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(counts(&report, "up"), [10, 9, 0, 1, 0]);
    assert_eq!(counts(&report, "down"), [10, 9, 0, 0, 1]);
    assert_eq!(counts(&report, "other"), [5, 5, 0, 0, 0]);
    assert_eq!(report["all_succeeded"], false);
    let up = task_report(&report, "up");
    assert_eq!(up["failed_attempts"], 3);
    let first = &up["first_error"];
    assert_eq!(first["block_id"], 3);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["kind"], "failed");
    assert!(first["message"].as_str().unwrap().contains("ValueError: block 3 is cursed"));
    let log = PathBuf::from(first["log"].as_str().unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("cursed"), "{}", log.display());
    assert_eq!(task_report(&report, "down")["first_error"], Value::Null);
    let attempts = project.attempts();
    assert_eq!(numbers(&attempts[&("up".to_owned(), 3)]), [1, 2, 3]);
    assert!(!attempts.contains_key(&("down".to_owned(), 3)), "the orphan never ran");
    assert_eq!(attempts.len(), 10 + 9 + 5);
}

#[test]
fn a_worker_that_crashes_mid_block_is_restarted_and_the_run_completes() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    project.pipeline(&[task(
        "crashy",
        6,
        "max_workers = 2\nworker = [\"python3\", \"worker.py\"]",
    )]);
    let output = run(project.daisy_run(&["--json"]).env("CRASH", "crashy:1,crashy:4"));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(counts(&report, "crashy"), [6, 6, 0, 0, 0]);
    let crashy = task_report(&report, "crashy");
    assert_eq!(crashy["failed_attempts"], 2);
    assert_eq!(crashy["first_error"]["kind"], "process_died");
    assert!(crashy["worker_restarts"].as_u64().unwrap() >= 1, "{crashy}");
    let attempts = project.attempts();
    for id in [1, 4] {
        let runs = &attempts[&("crashy".to_owned(), id)];
        assert_eq!(numbers(runs), [1, 2], "{runs:?}");
        assert_ne!(runs[0].pid, runs[1].pid, "block {id} ran again in a new process: {runs:?}");
    }
}

#[test]
fn a_task_whose_workers_keep_dying_is_abandoned_with_its_reason() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    let worker = "worker = [\"python3\", \"worker.py\"]";
    project.pipeline(&[
        task("doomed", 6, &format!("max_retries = 10\nmax_worker_restarts = 1\n{worker}")),
        task("after", 6, &format!("upstream = [\"doomed\"]\n{worker}")),
    ]);
    let output = run(project.daisy_run(&[]).env("CRASH_ALWAYS", "1"));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = stdout(&output);
    assert!(text.contains("task 'doomed' was abandoned:"), "{text}");
    assert!(text.contains("max_worker_restarts = 1"), "{text}");
    assert!(text.contains("process died"), "{text}");
    let row = |id: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.split_whitespace().nth(1) == Some(id)).unwrap();
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("after"), ["∅", "after", "6", "0", "0", "0", "6"], "{text}");
    // Two restarts exceed the budget; a batch already queued for the slot
    // may still run. Without a budget: 6 blocks x 11 attempts.
    assert!(project.attempt_lines() <= 5, "restarts stopped at the budget");
}

#[test]
fn garbage_on_a_workers_stdout_is_logged_and_the_run_completes() {
    let project = Project::new();
    project.write("garbage.py", GARBAGE_PY);
    project.pipeline(&[task("noisy", 4, "worker = [\"python3\", \"garbage.py\"]")]);
    let output = run(&mut project.daisy_run(&["--json"]));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(counts(&json(&output), "noisy"), [4, 4, 0, 0, 0]);
    let attempts = project.attempts();
    assert_each_ran_once(&attempts, &[("noisy", 4)]);
    assert!(all_first(&attempts), "{attempts:?}");
    let out_log = project.worker_logs("noisy", "out");
    assert!(out_log.contains("garbage {not json"), "{out_log}");
}

#[test]
fn a_block_over_its_timeout_is_failed_as_a_timeout_with_a_hint() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    // A block's timeout also covers starting its worker process: 1s is too
    // tight for Python on a loaded 2-core machine.
    project.pipeline(&[task(
        "slow",
        3,
        "max_retries = 0\ntimeout = \"2s\"\nworker = [\"python3\", \"worker.py\"]",
    )]);
    let output = run(project.daisy_run(&[]).env("SLOW", "slow:1=30"));
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let text = stdout(&output);
    let row: Vec<&str> =
        text.lines().find(|l| l.contains(" slow ")).unwrap().split_whitespace().collect();
    assert_eq!(row, ["✗", "slow", "3", "2", "0", "1", "0"], "{text}");
    assert!(text.contains("block 1 (attempt 1, timeout"), "{text}");
    assert!(
        text.contains("1 block attempt(s) of task 'slow' exceeded the block timeout (2s)"),
        "{text}"
    );
    assert!(text.contains("timeout = \"4s\""), "{text}");
    // The summary names the very file of the slot that failed (issue 14, item 7).
    let see = text.lines().find_map(|line| line.trim().strip_prefix("see ")).unwrap();
    assert!(see.contains("logs/slow/") && see.ends_with("/worker_0.err"), "{text}");
    assert!(project.path(see).is_file(), "{see} does not exist:\n{text}");
    assert!(text.contains("2 of 3 completed; 1 block failed"), "{text}");
}

#[test]
fn a_run_killed_mid_pipeline_resumes_without_running_succeeded_blocks_again() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    let worker = "max_workers = 2\nworker = [\"python3\", \"worker.py\"]";
    project.pipeline(&[
        task("first", 100, worker),
        task("second", 100, &format!("upstream = [\"first\"]\n{worker}")),
    ]);
    let mut running = Proc::spawn(
        "daisy run",
        project.daisy_run(&["--no-progress", "--in-process"]).env("SLEEP", "0.01"),
    );
    wait_until("20 blocks recorded in the journal", Duration::from_secs(20), || {
        project.journal_done().len() >= 20
    });
    running.kill();
    let code = running.wait(RUN_DEADLINE);
    assert_eq!(code, None, "killed by a signal: {}", running.describe());
    let recorded = project.journal_done();
    assert!(recorded.len() < 200, "the run was killed before it finished");

    let output = run(project.daisy_run(&["--json", "--in-process"]).env("SLEEP", "0.01"));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let report = json(&output);
    assert_eq!(counts(&report, "first")[..2], [100, 100]);
    assert_eq!(counts(&report, "second")[..2], [100, 100]);
    let skipped = counts(&report, "first")[2] + counts(&report, "second")[2];
    assert_eq!(skipped, recorded.len() as u64, "every recorded block was skipped");
    let attempts = project.attempts();
    assert_eq!(attempts.len(), 200, "every block ran");
    assert_none_ran_again(&attempts, &recorded);
}

#[test]
fn a_changed_layout_is_refused_until_fresh_starts_over() {
    let project = Project::new();
    project.write("bin/block.sh", BLOCK_SH);
    project.pipeline(&[task("t", 4, "command = [\"./bin/block.sh\"]")]);
    let first = run(&mut project.daisy_run(&[]));
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));

    project.pipeline(&[task("t", 5, "command = [\"./bin/block.sh\"]")]);
    let refused = run(&mut project.daisy_run(&[]));
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let message = stderr(&refused);
    assert!(message.contains("block layout changed"), "{message}");
    assert!(message.contains("--fresh"), "{message}");
    assert_eq!(project.attempt_lines(), 4, "nothing ran");

    let fresh = run(&mut project.daisy_run(&["--fresh", "--json"]));
    assert_eq!(fresh.status.code(), Some(0), "{}", describe(&fresh));
    assert_eq!(counts(&json(&fresh), "t"), [5, 5, 0, 0, 0]);
    assert_eq!(project.attempt_lines(), 4 + 5, "--fresh ran every block again");
}

#[test]
fn ctrl_c_stops_the_run_resumably_and_a_second_run_in_parallel_is_refused() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    project.pipeline(&[task("t", 40, "max_workers = 2\nworker = [\"python3\", \"worker.py\"]")]);
    let mut running =
        Proc::spawn("daisy run", project.daisy_run(&["--in-process"]).env("SLEEP", "0.2"));
    wait_until("blocks to start", Duration::from_secs(20), || project.attempt_lines() >= 2);

    let parallel = run(project.daisy_run(&["--in-process"]).env("SLEEP", "0.2"));
    assert_eq!(parallel.status.code(), Some(2), "{}", describe(&parallel));
    assert!(stderr(&parallel).contains("in use by another daisy run"), "{}", describe(&parallel));

    running.signal("INT");
    assert_eq!(running.wait(RUN_DEADLINE), Some(1), "{}", running.describe());
    let text = running.stdout();
    assert!(text.contains("interrupted with"), "{text}");
    assert!(text.contains("… t"), "{text}");
    assert!(running.stderr().contains("daisy: interrupted"), "{}", running.describe());
    let recorded = project.journal_done();
    assert!(!recorded.is_empty() && recorded.len() < 40, "{} recorded", recorded.len());

    let resumed = run(&mut project.daisy_run(&["--json", "--in-process"]));
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    assert_eq!(counts(&json(&resumed), "t")[..3], [40, 40, recorded.len() as u64]);
    let attempts = project.attempts();
    assert_eq!(attempts.len(), 40);
    assert_none_ran_again(&attempts, &recorded);
}

#[test]
fn a_second_ctrl_c_quits_at_once_with_130_while_a_block_is_in_flight() {
    let project = Project::new();
    project.write("worker.py", WORKER_PY);
    project.pipeline(&[task("t", 2, "worker = [\"python3\", \"worker.py\"]")]);
    let pids = project.path("pids");
    let mut running =
        Proc::spawn("daisy run", project.daisy_run(&[]).env("SLOW", "t:0=60").env("PIDS", &pids));
    wait_until("the slow block to start", Duration::from_secs(20), || project.attempt_lines() >= 1);
    let worker = Watched::read(&pids);
    assert_eq!(worker.0.len(), 1, "one live worker process");
    // The worker runs in its own process group, out of reach of the
    // terminal's Ctrl-C: daisy must kill it, or it runs on as an orphan.
    ctrl_c_twice(&mut running, &worker, "the worker process");
}

#[test]
fn a_second_ctrl_c_kills_the_block_commands_in_flight_and_their_children() {
    let project = Project::new();
    project.write("hang.sh", HANG_SH);
    project.pipeline(&[task("t", 2, "max_workers = 2\ncommand = [\"./hang.sh\"]")]);
    let pids = project.path("pids");
    let mut running =
        Proc::spawn("daisy run", project.daisy_run(&["--in-process"]).env("PIDS", &pids));
    wait_until("both blocks to start", Duration::from_secs(20), || line_count(&pids) >= 2);
    let commands = Watched::read(&pids);
    assert_eq!(commands.0.len(), 4, "two commands and their sleeps alive");
    ctrl_c_twice(&mut running, &commands, "the commands and their children");
}

#[test]
fn bad_input_exits_2_naming_the_place_and_the_fix() {
    let project = Project::new();
    let missing = run(&mut project.daisy_run(&[]));
    assert_eq!(missing.status.code(), Some(2), "{}", describe(&missing));
    assert!(stderr(&missing).contains("cannot read pipeline file"), "{}", describe(&missing));

    let valid = task("t", 2, "command = [\"true\"]");
    project.write("pipeline.toml", &format!("{valid}max_worker = 3\n"));
    let typo = run(&mut project.daisy_run(&[]));
    assert_eq!(typo.status.code(), Some(2), "{}", describe(&typo));
    let message = stderr(&typo);
    let place = format!("pipeline.toml:{}:1", valid.lines().count() + 1);
    assert!(message.contains(&place) && message.contains("max_worker"), "{place}: {message}");

    project.pipeline(&[task("t", 2, "command = [\"true\"]")]);
    let bad_id = run(&mut project.daisy_run(&["--run-id", "no spaces"]));
    assert_eq!(bad_id.status.code(), Some(2), "{}", describe(&bad_id));
    assert!(stderr(&bad_id).contains("--run-id"), "{}", describe(&bad_id));
}

#[test]
fn help_teaches_by_example_with_exit_codes() {
    let output = run(daisy().args(["run", "--help"]));
    assert!(output.status.success());
    let help = stdout(&output);
    for expected in ["daisy run pipeline.toml --fresh", "Exit codes", "pipeline file's directory"] {
        assert!(help.contains(expected), "{expected}: {help}");
    }
}
