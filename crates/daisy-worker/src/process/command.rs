//! One process per block: `command = [..]` runs the block, `check = [..]` asks whether it is
//! already done.
//!
//! The block travels in env vars (`DAISY_BLOCK` holds the protocol JSON, plus
//! `DAISY_BLOCK_ID`); stdin is `/dev/null`, stdout and stderr are appended straight to the
//! slot's `.out`/`.err` logs. Each run is preceded in both logs by a
//! `--- block <id> attempt <n> (<key>) ---` line, and the first run of a processor by the
//! `=== daisy-rs: <which daisy process> .. ===` header.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::group::{base_command, kill_process_group, reap, spawn_failure, spawn_registered};
use super::logs::{
    append_line, log_len, log_open_failure, open_slot_logs, separator_line, tail_since,
    with_stderr_tail,
};
use super::{
    BlockFailure, BlockLine, CommandLine, FailureKind, REAP_TIMEOUT, SlotConfig, encode_block_line,
};

/// Runs `command = [..]` once per block; exit status 0 means success.
#[derive(Debug)]
pub struct CommandProcess {
    command: CommandLine,
    slot: SlotConfig,
    /// Whether the run separator was already written to this slot's logs.
    separator_written: bool,
}

impl CommandProcess {
    /// A processor for `command` in `slot`; nothing is started until [`Self::process`].
    pub fn new(command: CommandLine, slot: SlotConfig) -> Self {
        Self { command, slot, separator_written: false }
    }

    /// Runs the command for `block` and waits at most `timeout` for it to exit.
    ///
    /// # Errors
    ///
    /// * [`FailureKind::Failed`]: non-zero exit code; the message has the code and the last
    ///   stderr lines of this run.
    /// * [`FailureKind::ProcessDied`]: killed by a signal (e.g. the OOM killer).
    /// * [`FailureKind::Timeout`]: still running after `timeout`; its process group was
    ///   killed.
    /// * [`FailureKind::SpawnFailed`]: the command or the log files could not be opened.
    pub fn process(&mut self, block: &BlockLine, timeout: Duration) -> Result<(), BlockFailure> {
        let run = run_once(
            "command",
            &self.command,
            &self.slot,
            &mut self.separator_written,
            block,
            timeout,
        )?;
        let block_id = block.block_id;
        match run.outcome {
            OneShotOutcome::Exited(status) if status.success() => {
                tracing::debug!(task_id = %self.slot.task_id, block_id, pid = run.pid, "command succeeded");
                Ok(())
            }
            OneShotOutcome::Exited(status) => {
                let (kind, what) = match status.code() {
                    Some(code) => (FailureKind::Failed, format!("command exited with code {code}")),
                    None => (FailureKind::ProcessDied, format!("command was killed ({status})")),
                };
                Err(BlockFailure::new(kind, with_stderr_tail(&what, &run.stderr_tail)))
            }
            OneShotOutcome::TimedOut => Err(BlockFailure::new(
                FailureKind::Timeout,
                with_stderr_tail(
                    &format!(
                        "command (pid {}) still running after {}, killed",
                        run.pid,
                        humantime::format_duration(timeout)
                    ),
                    &run.stderr_tail,
                ),
            )),
            OneShotOutcome::WaitFailed(reason) => Err(BlockFailure::new(
                FailureKind::ProcessDied,
                with_stderr_tail(&reason, &run.stderr_tail),
            )),
        }
    }
}

/// Runs `check = [..]` once per block; exit status 0 means "already done, skip it".
#[derive(Debug)]
pub struct CheckProcess {
    command: CommandLine,
    slot: SlotConfig,
    /// Whether the run separator was already written to this slot's logs.
    separator_written: bool,
}

impl CheckProcess {
    /// A checker for `command` in `slot`; nothing is started until [`Self::check`].
    pub fn new(command: CommandLine, slot: SlotConfig) -> Self {
        Self { command, slot, separator_written: false }
    }

    /// Whether `block` is already done: `Ok(true)` on exit status 0, `Ok(false)` on any
    /// other exit, and also `Ok(false)` (with a warning) when the check is still running
    /// after `timeout` and was killed.
    ///
    /// # Errors
    ///
    /// [`FailureKind::SpawnFailed`] when the check command or the log files could not be
    /// opened.
    pub fn check(&mut self, block: &BlockLine, timeout: Duration) -> Result<bool, BlockFailure> {
        let run = run_once(
            "check",
            &self.command,
            &self.slot,
            &mut self.separator_written,
            block,
            timeout,
        )?;
        let task_id = &self.slot.task_id;
        let block_id = block.block_id;
        match run.outcome {
            OneShotOutcome::Exited(status) => {
                tracing::debug!(%task_id, block_id, done = status.success(), %status, "check finished");
                Ok(status.success())
            }
            OneShotOutcome::TimedOut => {
                tracing::warn!(
                    %task_id,
                    block_id,
                    pid = run.pid,
                    timeout = %humantime::format_duration(timeout),
                    "check timed out and was killed; treating block as not done"
                );
                Ok(false)
            }
            OneShotOutcome::WaitFailed(reason) => {
                tracing::warn!(%task_id, block_id, %reason, "check failed to run; treating block as not done");
                Ok(false)
            }
        }
    }
}

/// How a one-shot child ended.
enum OneShotOutcome {
    /// It exited by itself (possibly killed by a signal not sent by us).
    Exited(ExitStatus),
    /// It was still running at the deadline; its process group was killed.
    TimedOut,
    /// Its status could not be collected; the reason says why.
    WaitFailed(String),
}

struct OneShot {
    pid: u32,
    outcome: OneShotOutcome,
    /// The last stderr lines written during this run.
    stderr_tail: String,
}

/// Spawns `command_line` for `block` with the one-shot env and logs, and waits for it.
fn run_once(
    key: &str,
    command_line: &CommandLine,
    slot: &SlotConfig,
    separator_written: &mut bool,
    block: &BlockLine,
    timeout: Duration,
) -> Result<OneShot, BlockFailure> {
    let block_json = encode_block_line(block)?;
    let mut logs = open_slot_logs(slot).map_err(|err| log_open_failure(key, slot, &err))?;
    if !*separator_written {
        let separator =
            separator_line(slot, &format!("runs `{command_line}` once per block ({key})"));
        append_line(&mut logs.out, &separator);
        append_line(&mut logs.err, &separator);
        *separator_written = true;
    }
    let header = format!("--- block {} attempt {} ({key}) ---\n", block.block_id, block.attempt);
    append_line(&mut logs.out, &header);
    append_line(&mut logs.err, &header);
    let err_path = slot.err_log_path();
    let stderr_start = log_len(&err_path);

    let mut command = base_command(command_line, slot);
    command
        .env("DAISY_BLOCK", &block_json)
        .env("DAISY_BLOCK_ID", block.block_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(logs.out))
        .stderr(Stdio::from(logs.err));
    let child = spawn_registered(&mut command)
        .map_err(|err| spawn_failure(key, slot, command_line, &err))?;
    let pid = child.id();
    tracing::debug!(task_id = %slot.task_id, block_id = block.block_id, pid, key, "started block process");
    let outcome = wait_with_timeout(child, timeout);
    Ok(OneShot { pid, outcome, stderr_tail: tail_since(&err_path, stderr_start) })
}

/// Waits for `child` on a waiter thread for at most `timeout`; at the deadline kills its
/// process group and reaps it.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> OneShotOutcome {
    let pid = child.id();
    // Capacity 1: the waiter sends exactly one status and must never block on it.
    let (status_tx, status_rx) = mpsc::sync_channel(1);
    let spawned = thread::Builder::new().name(format!("daisy-wait-{pid}")).spawn(move || {
        // The receiver may be gone after a reap timeout; nobody needs the status then.
        let _ = status_tx.send(reap(&mut child));
    });
    let waiter = match spawned {
        Ok(handle) => handle,
        Err(err) => {
            // The child was dropped with the closure: kill it so it cannot outlive the block.
            kill_logged(pid);
            return OneShotOutcome::WaitFailed(format!("cannot start waiter thread: {err}"));
        }
    };
    match status_rx.recv_timeout(timeout) {
        Ok(Ok(status)) => {
            join_logged(waiter);
            OneShotOutcome::Exited(status)
        }
        Ok(Err(err)) => {
            join_logged(waiter);
            OneShotOutcome::WaitFailed(format!("cannot wait for process {pid}: {err}"))
        }
        Err(RecvTimeoutError::Timeout) => {
            kill_logged(pid);
            match status_rx.recv_timeout(REAP_TIMEOUT) {
                Ok(status) => {
                    join_logged(waiter);
                    match status {
                        // It exited by itself just before our kill landed: that is its outcome.
                        Ok(status) if status.signal() != Some(libc::SIGKILL) => {
                            OneShotOutcome::Exited(status)
                        }
                        _ => OneShotOutcome::TimedOut,
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        pid,
                        "killed process not reaped in time; leaving its waiter thread"
                    );
                    OneShotOutcome::TimedOut
                }
            }
        }
        Err(RecvTimeoutError::Disconnected) => {
            join_logged(waiter);
            OneShotOutcome::WaitFailed(format!(
                "waiter thread of process {pid} ended without a status"
            ))
        }
    }
}

/// SIGKILLs the process group led by `pid`, logging (not failing) when that is refused.
pub(super) fn kill_logged(pid: u32) {
    if let Err(error) = kill_process_group(pid) {
        tracing::error!(pid, %error, "cannot kill process group");
    }
}

/// Joins a helper thread that is known to be finishing, reporting a panic.
pub(super) fn join_logged(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("unnamed").to_owned();
    if handle.join().is_err() {
        tracing::error!(thread = %name, "process helper thread panicked");
    }
}
