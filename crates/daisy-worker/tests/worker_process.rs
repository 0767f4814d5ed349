//! `worker = [..]`: long-lived children speaking JSON lines.

use std::time::Duration;

use daisy_worker::process::{FailureKind, WorkerProcess};
use tempfile::TempDir;

use crate::support::{QUICK, argv, block, process_gone, python_worker, read, slot, wait_until};

#[test]
fn helper_worker_reports_outcomes_and_keeps_prints_out_of_the_protocol() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import os, sys
import daisy_worker

def process(block):
    task_id, i = block.block_id
    assert task_id == "smooth" and block.task_id == "smooth" and block.attempt == 1
    if i == 1:
        print("hello from block", i)
        print("no newline", end="")
        os.write(1, b"c-level write\n")
        sys.stdout.write('{"block_id": 1, "status": "failed", "error": "spoofed"}\n')
        return None
    if i == 2:
        raise ValueError("boom in block 2")
    if i == 3:
        return False
    if i == 4:
        assert block.read_roi.contains(block.write_roi)
        assert block.write_roi.shape == (4, 4) and block.write_roi.end == (6, 6)
        assert block.read_roi.to_slices() == (slice(0, 8), slice(0, 8))
        block.status = daisy_worker.BlockStatus.FAILED
        return True
    return True

daisy_worker.serve(process)
"#,
    );

    assert_eq!(worker.process(&block(1), QUICK), Ok(()));
    let pid = worker.pid().expect("worker running");

    let raised = worker.process(&block(2), QUICK).expect_err("block 2 raises");
    assert_eq!(raised.kind, FailureKind::Failed);
    assert!(raised.message.contains("ValueError: boom in block 2"), "{raised}");

    let returned_false = worker.process(&block(3), QUICK).expect_err("block 3 returns False");
    assert_eq!(returned_false.kind, FailureKind::Failed);

    let status_failed = worker.process(&block(4), QUICK).expect_err("block 4 sets FAILED");
    assert_eq!(status_failed.kind, FailureKind::Failed);

    assert_eq!(worker.process(&block(5), QUICK), Ok(()));
    assert_eq!(worker.pid(), Some(pid), "one child serves every block");
    assert_eq!(worker.restarts(), 0);

    let status = worker.shutdown(Duration::from_secs(5)).expect("exit status collected");
    assert!(status.success(), "clean exit at EOF, got {status}");
    assert!(process_gone(pid));

    let slot = slot(&dir, 0);
    let out = read(&slot.out_log_path());
    for expected in ["hello from block 1", "no newline", "c-level write", "spoofed"] {
        assert!(out.contains(expected), "{expected:?} missing from .out log:\n{out}");
    }
    // Issue 14, item 7: the header says which daisy process wrote the log and what it ran.
    let writer = &slot.writer;
    let header = format!(
        "=== daisy-rs: {} on {} (pid {}), task smooth slot 0: started `python3 ",
        writer.program,
        writer.host,
        std::process::id()
    );
    assert!(out.starts_with(&header), "{header:?} does not head the log:\n{out}");
    assert!(out.contains(&format!("worker.py` as pid {pid} at ")), "{out}");
    let err = read(&slot.err_log_path());
    assert!(err.contains("Traceback"), "{err}");
    assert!(err.contains("ValueError: boom in block 2"), "{err}");
}

#[test]
fn garbage_on_stdout_is_logged_and_never_taken_for_a_reply() {
    let dir = TempDir::new().expect("temp dir");
    // A worker that does not use the helper and writes all sorts of things to stdout.
    let mut worker = python_worker(
        &dir,
        r#"
import json, sys
for line in sys.stdin:
    block = json.loads(line)
    i = block["block_id"]
    print("plain garbage")
    print(json.dumps({"not": "a reply"}))
    print("{ not json, block_id")
    sys.stdout.buffer.write(b"\xff\xfe not utf-8\n")
    sys.stdout.write("partial progress ")
    print(json.dumps({"block_id": i, "status": "success"}), flush=True)
"#,
    );

    assert_eq!(worker.process(&block(1), QUICK), Ok(()));
    assert_eq!(worker.process(&block(2), QUICK), Ok(()));
    assert_eq!(worker.restarts(), 0);
    worker.shutdown(Duration::from_secs(5));

    let out = read(&slot(&dir, 0).out_log_path());
    for expected in
        ["plain garbage", r#"{"not": "a reply"}"#, "{ not json, block_id", "partial progress"]
    {
        assert!(out.contains(expected), "{expected:?} missing from .out log:\n{out}");
    }
    assert!(!out.contains(r#""status": "success""#), "replies are not logged:\n{out}");
}

/// Lines that only look like replies are not protocol errors: a script that echoes its
/// block line (it has a `block_id` but no `status`) or that replies twice for one block
/// (the second reply arrives while the next block is in flight) keeps its child and
/// every block succeeds.
#[test]
fn echoed_block_lines_and_a_repeated_reply_are_not_protocol_errors() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import json, sys
for line in sys.stdin:
    i = json.loads(line)["block_id"]
    print(line.strip(), flush=True)
    reply = json.dumps({"block_id": i, "status": "success"})
    print(reply, flush=True)
    print(reply, flush=True)
"#,
    );
    for id in 1..=4 {
        assert_eq!(worker.process(&block(id), Duration::from_secs(60)), Ok(()), "block {id}");
    }
    assert_eq!(worker.restarts(), 0, "the child was never restarted");
    worker.shutdown(Duration::from_secs(5));
}
/// Issue 14, item 2: a reply with a typo or for another block used to be logged and the
/// block left waiting for its timeout (10 minutes by default), which the summary then
/// blamed. It fails the block at once, quoting the line, and the next block gets a fresh
/// child.
#[test]
fn regression_14_an_invalid_reply_fails_the_block_at_once_and_restarts_the_worker() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import json, os, sys
for line in sys.stdin:
    i = json.loads(line)["block_id"]
    if i == 1:
        reply = {"block_id": i, "status": "sucess"}
    elif i == 2:
        reply = {"block_id": i + 1000, "status": "success"}
    elif i == 3:
        reply = {"block_id": i, "status": "done", "error": "x" * 5000}
    else:
        reply = {"block_id": i, "status": "success"}
    print(json.dumps(reply), flush=True)
"#,
    );
    // Far longer than the test may take: a block that waits for it is a failure.
    let patience = Duration::from_secs(120);

    let typo = worker.process(&block(1), patience).expect_err("a typo in status is an error");
    assert_eq!(typo.kind, FailureKind::Failed, "{typo}");
    assert!(typo.message.contains(r#"`{"block_id": 1, "status": "sucess"}`"#), "{typo}");
    assert!(worker.pid().is_none(), "the child that broke the protocol is gone");

    let other = worker.process(&block(2), patience).expect_err("a reply for another block");
    assert_eq!(other.kind, FailureKind::Failed, "{other}");
    assert!(other.message.contains("replied for block 1002 while block 2"), "{other}");
    assert_eq!(worker.restarts(), 1, "block 2 ran in a fresh child");

    let long = worker.process(&block(3), patience).expect_err("an unknown status");
    assert!(long.message.contains("(shortened)") && long.message.len() < 1000, "{long}");
    assert_eq!(worker.process(&block(4), patience), Ok(()));
    assert_eq!(worker.restarts(), 3, "blocks 2, 3 and 4 each ran in a fresh child");
    worker.shutdown(Duration::from_secs(5));
}

#[test]
fn worker_crash_mid_block_is_process_died_and_the_next_block_restarts_it() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import os, sys
import daisy_worker

def process(block):
    if block.block_id[1] == 1:
        sys.stderr.write("about to crash\n")
        sys.stderr.flush()
        os._exit(7)

daisy_worker.serve(process)
"#,
    );

    let died = worker.process(&block(1), QUICK).expect_err("block 1 crashes");
    assert_eq!(died.kind, FailureKind::ProcessDied);
    assert!(died.message.contains("exit status: 7"), "{died}");
    assert!(died.message.contains("about to crash"), "{died}");
    assert_eq!(worker.pid(), None);
    assert_eq!(worker.restarts(), 0);

    assert_eq!(worker.process(&block(2), QUICK), Ok(()));
    assert_eq!(worker.restarts(), 1);

    let err = read(&slot(&dir, 0).err_log_path());
    assert_eq!(err.matches("=== daisy-rs: ").count(), 2, "one separator per start:\n{err}");
}

#[test]
fn worker_that_exits_after_replying_is_restarted_for_the_next_block() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import json, sys
block = json.loads(sys.stdin.readline())
print(json.dumps({"block_id": block["block_id"], "status": "success"}), flush=True)
"#,
    );

    assert_eq!(worker.process(&block(1), QUICK), Ok(()));
    assert_eq!(worker.process(&block(2), QUICK), Ok(()));
    assert_eq!(worker.restarts(), 1);
}

#[test]
fn worker_that_never_serves_is_process_died_after_one_resend() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(&dir, "import daisy_worker  # forgot to call serve()\n");
    let died = worker.process(&block(1), QUICK).expect_err("nobody answers");
    assert_eq!(died.kind, FailureKind::ProcessDied);
    assert!(died.message.contains("daisy_worker.serve"), "{died}");
    assert_eq!(worker.restarts(), 1);
}

#[test]
fn hung_worker_times_out_and_its_whole_process_group_is_killed() {
    let dir = TempDir::new().expect("temp dir");
    let pids = dir.path().join("pids");
    let mut worker = python_worker(
        &dir,
        &format!(
            r#"
import os, subprocess, time
import daisy_worker

def process(block):
    if block.block_id[1] == 0:
        return  # warm-up: keeps interpreter start-up out of the timed block
    child = subprocess.Popen(["sleep", "30"])
    with open(r"{pids}.tmp", "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    os.rename(r"{pids}.tmp", r"{pids}")
    time.sleep(30)

daisy_worker.serve(process)
"#,
            pids = pids.display()
        ),
    );

    assert_eq!(worker.process(&block(0), QUICK), Ok(()));
    let timed_out = worker.process(&block(1), Duration::from_millis(500)).expect_err("block hangs");
    assert_eq!(timed_out.kind, FailureKind::Timeout);
    assert_eq!(worker.pid(), None);

    let pids = read(&pids);
    let (worker_pid, sleep_pid) = pids.split_once(' ').expect("two pids");
    let worker_pid: u32 = worker_pid.parse().expect("worker pid");
    let sleep_pid: u32 = sleep_pid.parse().expect("grandchild pid");
    assert!(process_gone(worker_pid), "worker {worker_pid} still running");
    assert!(
        wait_until(Duration::from_secs(2), || process_gone(sleep_pid)),
        "grandchild {sleep_pid} survived the group kill"
    );
}

#[test]
fn missing_worker_executable_is_spawn_failed_with_a_fix() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = WorkerProcess::new(argv(&["daisy-no-such-program", "x.py"]), slot(&dir, 0));
    let failure = worker.process(&block(1), QUICK).expect_err("cannot spawn");
    assert_eq!(failure.kind, FailureKind::SpawnFailed);
    assert!(failure.message.contains("daisy-no-such-program"), "{failure}");
    assert!(failure.message.contains("PATH"), "{failure}");
    assert_eq!(worker.restarts(), 0);
}

#[test]
fn setup_runs_once_before_the_first_block() {
    let dir = TempDir::new().expect("temp dir");
    let mut worker = python_worker(
        &dir,
        r#"
import daisy_worker

calls = []

def setup():
    calls.append("setup")
    print("setup done")

def process(block):
    assert calls == ["setup"], calls

daisy_worker.serve(process, setup=setup)
"#,
    );
    assert_eq!(worker.process(&block(1), QUICK), Ok(()));
    assert_eq!(worker.process(&block(2), QUICK), Ok(()));
    drop(worker);
    let out = read(&slot(&dir, 0).out_log_path());
    assert_eq!(out.matches("setup done").count(), 1, "{out}");
}
