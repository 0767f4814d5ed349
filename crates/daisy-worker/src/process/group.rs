//! Spawning children in their own process group, and killing that group.
//!
//! # Why a registry of live groups
//!
//! A child in its own group is out of reach of the terminal's Ctrl-C, which
//! is what lets blocks in flight finish after a first Ctrl-C. The flip side:
//! when daisy exits at once (a second Ctrl-C) it must kill those groups
//! itself, or they outlive it as orphans that keep writing data. So every
//! child is spawned through [`spawn_registered`] and reaped through [`reap`],
//! and [`kill_all_children`] kills what is in between.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

use super::{BlockFailure, CommandLine, FailureKind, SlotConfig};

/// The process groups of this process's children, for [`kill_all_children`].
static LIVE_GROUPS: LiveGroups = LiveGroups::new();

/// Spawns `command` (built by [`base_command`], so in a group of its own whose id is the
/// child's pid) and records its group until [`reap`] collects it.
///
/// # Errors
///
/// The spawn error, or `Interrupted` once [`kill_all_children`] has run: daisy is exiting
/// and nothing may start that it would leave behind.
pub(super) fn spawn_registered(command: &mut Command) -> io::Result<Child> {
    LIVE_GROUPS.spawn(command)
}

/// Waits for `child` to exit and forgets its group, which [`kill_all_children`] must not
/// signal once its id is free for reuse.
///
/// # Errors
///
/// The error of `wait(2)`.
pub(super) fn reap(child: &mut Child) -> io::Result<ExitStatus> {
    LIVE_GROUPS.reap(child)
}

/// Kills (SIGKILL) the process group of every child this process started and has not reaped
/// yet, with everything in those groups, and refuses to start children from then on.
///
/// For a process about to exit without waiting for its blocks (a second Ctrl-C): children
/// run in their own process groups, so the terminal's signal does not reach them, and they
/// would otherwise run on as orphans. Returns how many groups were signalled.
pub fn kill_all_children() -> usize {
    LIVE_GROUPS.kill_all()
}

/// Live child process groups. The lock is held across a spawn, so a child either is
/// recorded before [`LiveGroups::kill_all`] looks or is never started.
struct LiveGroups(Mutex<Groups>);

struct Groups {
    /// Ids of the groups (each the pid of the child that leads it), from spawn to reap.
    live: BTreeSet<u32>,
    /// Set by `kill_all`: no child starts any more.
    closed: bool,
}

impl LiveGroups {
    const fn new() -> Self {
        Self(Mutex::new(Groups { live: BTreeSet::new(), closed: false }))
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // A panic while holding the lock cannot leave the set half-updated: take it as is.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        let mut groups = self.lock();
        if groups.closed {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "daisy is quitting: no process starts any more",
            ));
        }
        let child = command.spawn()?;
        groups.live.insert(child.id());
        Ok(child)
    }

    fn reap(&self, child: &mut Child) -> io::Result<ExitStatus> {
        let status = child.wait();
        // Also after an error: the child is then not ours to wait for (or no longer exists),
        // so its id may be reused. Between the reap and this line the id is free but still
        // recorded; a new group with that very id starting meanwhile is not a practical risk,
        // since Linux hands out pids in a cycle.
        self.lock().live.remove(&child.id());
        status
    }

    fn kill_all(&self) -> usize {
        let mut groups = self.lock();
        groups.closed = true;
        let live = std::mem::take(&mut groups.live);
        for &pgid in &live {
            if let Err(error) = kill_process_group(pgid) {
                tracing::error!(pgid, %error, "cannot kill child process group");
            }
        }
        live.len()
    }
}

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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// A shell in its own group that waits on a `sleep` child, like a user's script.
    fn sleeper() -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 60 & wait"]).process_group(0);
        command
    }

    #[test]
    fn kill_all_kills_the_unreaped_children_and_refuses_new_ones() {
        // A registry of its own: the process-wide one would kill other tests' children.
        let groups = LiveGroups::new();
        let mut done = groups.spawn(Command::new("true").process_group(0)).expect("spawn true");
        assert!(groups.reap(&mut done).expect("reap true").success());
        let mut sleepers =
            [sleeper(), sleeper()].map(|mut command| groups.spawn(&mut command).expect("spawn sh"));

        assert_eq!(groups.kill_all(), 2, "only the children not yet reaped");
        for child in &mut sleepers {
            let status = groups.reap(child).expect("reap sh");
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        }
        assert!(groups.lock().live.is_empty());
        let refused = groups.spawn(&mut sleeper()).map(|_| ()).map_err(|err| err.kind());
        assert_eq!(refused, Err(io::ErrorKind::Interrupted));
    }
}
