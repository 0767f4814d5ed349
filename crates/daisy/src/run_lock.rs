//! Directory locks that say who holds them: one `daisy run` per run directory, one
//! embedded nats-server per state dir.
//!
//! # Ownership
//! This module owns the lock files (`<state-dir>/<run-id>/lock` and
//! `<state-dir>/nats/lock`) and the note inside them naming the holder. What is locked,
//! and when, is the caller's (`daisy run`, [`crate::nats::embedded`]).
//!
//! # Why an OS file lock
//! The lock is `flock(2)` on the file (std's [`File::try_lock`]): the kernel releases it
//! when the holder dies, even by SIGKILL or the OOM killer, so a crashed run never leaves
//! a stale lock that a user would have to delete by hand. The file itself stays; the note
//! in it is only read while the lock is held, to name the holder in the refusal, and is
//! rewritten by every new holder.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How often [`lock`] tries again before it reports a holder, and how long it waits in
/// between: a probe of [`is_held`] holds the lock for microseconds.
const PROBE_RETRIES: u32 = 3;
const PROBE_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Who holds a lock, written into the lock file for the message that refuses the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holding process.
    pub pid: u32,
    /// What it is, as the user would start it again (`daisy run pipeline.toml`).
    pub command: String,
    /// How it runs (`embedded NATS`, `in-process`, `NATS at nats://host:4222`).
    pub mode: String,
    /// When it took the lock, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The pipeline file of a run, absolute; `None` for other holders.
    #[serde(default)]
    pub pipeline_file: Option<PathBuf>,
    /// Holds the lock for a moment only (an operator command reading a
    /// finished run): who wants it waits instead of giving up.
    #[serde(default)]
    pub brief: bool,
}

impl LockHolder {
    /// This process, taking a lock now.
    pub fn this_process(command: impl Into<String>, mode: impl Into<String>) -> Self {
        let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Self {
            pid: std::process::id(),
            command: command.into(),
            mode: mode.into(),
            since_unix_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            pipeline_file: None,
            brief: false,
        }
    }
}

impl std::fmt::Display for LockHolder {
    /// `daisy run pipeline.toml (embedded NATS, pid 4242, since 2026-11-29T21:53:04Z)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(self.since_unix_ms);
        write!(
            f,
            "`{}` ({}, pid {}, since {})",
            self.command,
            self.mode,
            self.pid,
            humantime::format_rfc3339_seconds(since)
        )
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be created, locked or written.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Another live process holds it.
    #[error("{} is held by {}", path.display(), holder.as_ref().map_or_else(|| "another process".to_owned(), ToString::to_string))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// Its holder, when the note could be read.
        holder: Option<LockHolder>,
    },
}

/// A held lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct DirLock {
    /// Holds the `flock`: closing the file releases it.
    _file: File,
}

/// Takes the lock file `path` (creating it and its directory) for `holder`, without waiting.
///
/// # Errors
/// [`LockError::Held`] when another process holds it, [`LockError::Io`] otherwise.
pub fn lock(path: &Path, holder: &LockHolder) -> Result<DirLock, LockError> {
    let io = |source| LockError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Not truncated on open: the note belongs to the holder until the lock is ours.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut tries = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            // [`is_held`] takes the lock for an instant: only a lock still held after a
            // few tries has a holder.
            Err(std::fs::TryLockError::WouldBlock) if tries < PROBE_RETRIES => {
                tries += 1;
                std::thread::sleep(PROBE_RETRY_DELAY);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder(path);
                return Err(LockError::Held { path: path.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
    }
    let note = serde_json::to_vec(holder).map_err(|err| io(std::io::Error::other(err)))?;
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&note).map_err(io)?;
    Ok(DirLock { _file: file })
}

/// The note of the last holder of `path` (current or past); `None` if there is none, or
/// the holder is still writing it.
pub fn read_holder(path: &Path) -> Option<LockHolder> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a live process holds the lock file `path` (probed by taking and releasing it).
///
/// # Errors
/// The file exists but cannot be opened or locked.
pub fn is_held(path: &Path) -> std::io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_first_holder_until_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/lock");
        let mut first = LockHolder::this_process("daisy run p.toml", "embedded NATS");
        first.pipeline_file = Some(dir.path().join("p.toml"));
        let held = lock(&path, &first).unwrap();
        assert!(is_held(&path).unwrap());
        let second = LockHolder::this_process("daisy run p.toml --in-process", "in-process");
        match lock(&path, &second) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(first.clone())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(!is_held(&path).unwrap());
        let _again = lock(&path, &second).unwrap();
        assert_eq!(read_holder(&path), Some(second));
    }
}
