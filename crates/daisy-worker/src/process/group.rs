//! Spawning children in their own process group, and killing that group.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{BlockFailure, CommandLine, FailureKind, SlotConfig};

/// A `Command` for `command_line` in its own process group with the env every child gets.
pub(super) fn base_command(command_line: &CommandLine, slot: &SlotConfig) -> Command {
    let mut command = Command::new(command_line.program());
    command
        .args(command_line.args())
        .env("DAISY_TASK_ID", &slot.task_id)
        .env("DAISY_WORKER_ID", slot.worker_id.to_string())
        .env("DAISY_LOG_DIR", &slot.log_dir)
        // A new group whose id is the child's pid: one kill reaches its descendants too.
        .process_group(0);
    if std::env::var_os("PYTHONUNBUFFERED").is_none() {
        command.env("PYTHONUNBUFFERED", OsStr::new("1"));
    }
    command.envs(slot.env.iter().map(|(key, value)| (key, value)));
    if let Some(dir) = &slot.current_dir {
        command.current_dir(dir);
    }
    command
}

/// Kills every process of the group led by `pgid` with SIGKILL. A group that no longer
/// exists is not an error.
///
/// # Errors
///
/// `InvalidInput` for ids that would address more than one group (≤ 1) or do not fit a
/// `pid_t`; otherwise the OS error of `kill(2)` (e.g. `EPERM`).
#[allow(unsafe_code)]
pub(super) fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process group id too large"))?;
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to kill process group <= 1",
        ));
    }
    // SAFETY: `kill` takes two integers and touches no memory of ours. `-pgid` addresses only
    // the group created for our child by `process_group(0)`; ids <= 1 are rejected above, so
    // this never becomes `kill(-1)` (every process we may signal) or `kill(0)` (our group).
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(err)
}

/// The failure for a child that could not be started, with what to do about it.
pub(super) fn spawn_failure(
    key: &str,
    slot: &SlotConfig,
    command_line: &CommandLine,
    err: &io::Error,
) -> BlockFailure {
    let program = command_line.program();
    let task_id = &slot.task_id;
    let hint = match err.kind() {
        io::ErrorKind::NotFound => format!(
            "check that `{program}` is installed and on PATH (or that the script's interpreter \
             exists), or give its absolute path in the `{key}` key of task `{task_id}`"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "make `{program}` executable (chmod +x) or run it through its interpreter, \
             e.g. {key} = [\"python3\", \"{program}\"]"
        ),
        _ => format!("check the `{key}` key of task `{task_id}`"),
    };
    BlockFailure::new(
        FailureKind::SpawnFailed,
        format!("cannot start {key} command `{command_line}` of task `{task_id}`: {err}; {hint}"),
    )
}
