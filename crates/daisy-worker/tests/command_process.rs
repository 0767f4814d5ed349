//! `command = [..]` and `check = [..]`: one process per block.

use std::time::Duration;

use daisy_worker::process::{CheckProcess, CommandProcess, FailureKind, Processor};
use tempfile::TempDir;

use crate::support::{QUICK, TASK, argv, block, process_gone, read, read_pid, slot, wait_until};

#[test]
fn command_exit_zero_is_success_and_sees_the_block_in_its_env() {
    let dir = TempDir::new().expect("temp dir");
    let script = r#"echo "block=$DAISY_BLOCK_ID task=$DAISY_TASK_ID worker=$DAISY_WORKER_ID"; echo "json=$DAISY_BLOCK"; echo "to stderr" >&2"#;
    let mut processor =
        Processor::Command(CommandProcess::new(argv(&["sh", "-c", script]), slot(&dir, 1)));

    assert_eq!(processor.process(&block(7), QUICK), Ok(()));
    assert_eq!(processor.process(&block(8), QUICK), Ok(()));
    assert_eq!(processor.restarts(), 0);

    let slot = slot(&dir, 1);
    // Issue 14, item 7: one directory per daisy process, so two workers never share a file.
    let process_dir = format!("{}-{}", slot.writer.host, std::process::id());
    assert_eq!(
        slot.out_log_path(),
        dir.path().join("logs").join(TASK).join(process_dir).join("worker_1.out")
    );
    let out = read(&slot.out_log_path());
    assert!(out.contains("block=7 task=smooth worker=1"), "{out}");
    assert!(
        out.contains(
            r#"json={"task":"smooth","block_id":7,"read_roi":{"offset":[0,0],"shape":[8,8]}"#
        ),
        "{out}"
    );
    assert!(out.contains("block=8 task=smooth worker=1"), "{out}");
    assert_eq!(out.matches("=== daisy-rs: ").count(), 1, "one separator per processor:\n{out}");
    assert!(out.contains("--- block 7 attempt 1 (command) ---"), "{out}");
    let err = read(&slot.err_log_path());
    assert_eq!(err.lines().filter(|line| *line == "to stderr").count(), 2, "{err}");
}

#[test]
fn command_exit_three_is_failed_with_the_code_and_its_stderr() {
    let dir = TempDir::new().expect("temp dir");
    let mut command = CommandProcess::new(
        argv(&["sh", "-c", r#"echo "line one"; echo "bad input in $DAISY_BLOCK_ID" >&2; exit 3"#]),
        slot(&dir, 0),
    );
    let failure = command.process(&block(5), QUICK).expect_err("exit 3");
    assert_eq!(failure.kind, FailureKind::Failed);
    assert!(failure.message.contains("code 3"), "{failure}");
    assert!(failure.message.contains("bad input in 5"), "{failure}");
    assert!(!failure.message.contains("line one"), "stdout is not stderr: {failure}");

    // The stderr tail of a run only quotes that run.
    let again = command.process(&block(6), QUICK).expect_err("exit 3");
    assert!(!again.message.contains("bad input in 5"), "{again}");
}

#[test]
fn command_timeout_kills_the_process_group() {
    let dir = TempDir::new().expect("temp dir");
    let pid_file = dir.path().join("sleep.pid");
    let script =
        format!(r#"sleep 30 & echo $! > "{0}.tmp"; mv "{0}.tmp" "{0}"; wait"#, pid_file.display());
    let mut command = CommandProcess::new(argv(&["sh", "-c", &script]), slot(&dir, 0));
    let failure = command.process(&block(1), Duration::from_millis(500)).expect_err("times out");
    assert_eq!(failure.kind, FailureKind::Timeout);
    let sleep_pid = read_pid(&pid_file);
    assert!(
        wait_until(Duration::from_secs(2), || process_gone(sleep_pid)),
        "background child {sleep_pid} survived the group kill"
    );
}

#[test]
fn check_exit_zero_means_done_and_other_exits_not() {
    let dir = TempDir::new().expect("temp dir");
    let mut check =
        CheckProcess::new(argv(&["sh", "-c", r#"test "$DAISY_BLOCK_ID" = 1"#]), slot(&dir, 0));
    assert_eq!(check.check(&block(1), QUICK), Ok(true));
    assert_eq!(check.check(&block(2), QUICK), Ok(false));
}

#[test]
fn check_timeout_means_not_done() {
    let dir = TempDir::new().expect("temp dir");
    let mut check = CheckProcess::new(argv(&["sleep", "30"]), slot(&dir, 0));
    assert_eq!(check.check(&block(1), Duration::from_millis(100)), Ok(false));
}

#[test]
fn missing_command_and_check_are_spawn_failed() {
    let dir = TempDir::new().expect("temp dir");
    let mut command = CommandProcess::new(argv(&["daisy-no-such-program"]), slot(&dir, 0));
    let failure = command.process(&block(1), QUICK).expect_err("cannot spawn");
    assert_eq!(failure.kind, FailureKind::SpawnFailed);
    assert!(failure.message.contains("daisy-no-such-program"), "{failure}");
    assert!(failure.message.contains("`command` key of task `smooth`"), "{failure}");

    let mut check = CheckProcess::new(argv(&["daisy-no-such-program"]), slot(&dir, 0));
    let failure = check.check(&block(1), QUICK).expect_err("cannot spawn");
    assert_eq!(failure.kind, FailureKind::SpawnFailed);

    // A script without the executable bit gets a different hint.
    let script = dir.path().join("process.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write script");
    let script = script.to_str().expect("utf-8 path");
    let mut command = CommandProcess::new(argv(&[script]), slot(&dir, 0));
    let failure = command.process(&block(1), QUICK).expect_err("not executable");
    assert_eq!(failure.kind, FailureKind::SpawnFailed);
    assert!(failure.message.contains("chmod +x"), "{failure}");
}

#[test]
fn unwritable_log_dir_is_spawn_failed() {
    let dir = TempDir::new().expect("temp dir");
    let mut slot = slot(&dir, 0);
    // A file where the log dir should be.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").expect("write");
    slot.log_dir = not_a_dir;
    let mut command = CommandProcess::new(argv(&["true"]), slot);
    let failure = command.process(&block(1), QUICK).expect_err("no log dir");
    assert_eq!(failure.kind, FailureKind::SpawnFailed);
}
