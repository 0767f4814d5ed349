//! Asks a `nats-server` binary for its version and decides whether daisy can use it.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long `<bin> --version` may take before the candidate is given up on.
const VERSION_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the `--version` child is polled for its exit.
const VERSION_PROBE_POLL: Duration = Duration::from_millis(10);

/// A `nats-server` release number, as printed by `nats-server --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatsServerVersion {
    /// Major release number.
    pub major: u32,
    /// Minor release number.
    pub minor: u32,
    /// Patch release number.
    pub patch: u32,
}

impl NatsServerVersion {
    /// The oldest server daisy runs against: 2.10 added multi-filter consumers, and the
    /// account-info reply of 2.9 cannot be parsed by async-nats 0.51 (jetstream notes B.1).
    pub const MINIMUM: NatsServerVersion = NatsServerVersion { major: 2, minor: 10, patch: 0 };

    /// Parses the output of `nats-server --version`, e.g. `nats-server: v2.9.10`.
    ///
    /// A pre-release or build suffix (`v2.11.0-RC.1`) is ignored; a missing patch number
    /// counts as 0. Returns `None` when the text does not look like a version.
    pub fn parse_version_output(output: &str) -> Option<NatsServerVersion> {
        let first_line = output.lines().map(str::trim).find(|line| !line.is_empty())?;
        let version_text = first_line.strip_prefix("nats-server:").unwrap_or(first_line).trim();
        let version_text = version_text.strip_prefix('v').unwrap_or(version_text);
        let numbers_text = version_text.split(['-', '+', ' ']).next()?;
        let mut parts = numbers_text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(patch_text) => patch_text.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(NatsServerVersion { major, minor, patch })
    }
}

impl fmt::Display for NatsServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a candidate `nats-server` binary cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// The binary could not be started (missing, not executable, wrong architecture).
    #[error("could not run `{} --version`", path.display())]
    Spawn {
        /// The candidate binary.
        path: PathBuf,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for, or reading the output of, `--version` failed.
    #[error("could not read the output of `{} --version`", path.display())]
    Output {
        /// The candidate binary.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// `--version` did not finish within its deadline.
    #[error("`{} --version` did not exit within {timeout:?}", path.display())]
    Hung {
        /// The candidate binary.
        path: PathBuf,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// `--version` exited unsuccessfully.
    #[error("`{} --version` failed with {status}: {stderr}", path.display())]
    VersionFailed {
        /// The candidate binary.
        path: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// `--version` printed something that is not a nats-server version.
    #[error("`{} --version` printed {output:?}, not a nats-server version", path.display())]
    UnrecognisedVersion {
        /// The candidate binary.
        path: PathBuf,
        /// What it printed on stdout, trimmed.
        output: String,
    },
    /// The binary works but is older than [`NatsServerVersion::MINIMUM`].
    #[error("{} is nats-server {found}, older than the required {required}", path.display())]
    TooOld {
        /// The candidate binary.
        path: PathBuf,
        /// The version it reported.
        found: NatsServerVersion,
        /// The minimum daisy needs.
        required: NatsServerVersion,
    },
}

/// Runs `<path> --version` and accepts the binary if it is at least
/// [`NatsServerVersion::MINIMUM`].
///
/// # Errors
///
/// A [`CandidateError`] saying why the binary cannot be used; [`CandidateError::TooOld`] for
/// a working but old server (Debian's 2.9.10).
pub fn check_candidate(path: &Path) -> Result<NatsServerVersion, CandidateError> {
    let found = probe_version(path)?;
    if found < NatsServerVersion::MINIMUM {
        return Err(CandidateError::TooOld {
            path: path.to_path_buf(),
            found,
            required: NatsServerVersion::MINIMUM,
        });
    }
    Ok(found)
}

/// Runs `<path> --version` under a deadline and parses what it prints.
fn probe_version(path: &Path) -> Result<NatsServerVersion, CandidateError> {
    let mut child = spawn_version_probe(path)?;
    let output_error = |source| CandidateError::Output { path: path.to_path_buf(), source };

    // The output is one short line, far below a pipe's capacity, so the child cannot block on
    // a full pipe while it is polled here.
    let deadline = Instant::now() + VERSION_PROBE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(output_error)? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the candidate is rejected whether or not the kill succeeds.
            let _ = child.kill();
            let _ = child.wait();
            return Err(CandidateError::Hung {
                path: path.to_path_buf(),
                timeout: VERSION_PROBE_TIMEOUT,
            });
        }
        std::thread::sleep(VERSION_PROBE_POLL);
    };

    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout).map_err(output_error)?;
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).map_err(output_error)?;
    }
    if !status.success() {
        return Err(CandidateError::VersionFailed {
            path: path.to_path_buf(),
            status,
            stderr: stderr.trim().to_owned(),
        });
    }
    NatsServerVersion::parse_version_output(&stdout).ok_or_else(|| {
        CandidateError::UnrecognisedVersion {
            path: path.to_path_buf(),
            output: stdout.trim().to_owned(),
        }
    })
}

/// Starts `<path> --version`, retrying briefly on `ETXTBSY`: a binary that was just written
/// (a fresh install, a test's fake server) is "busy" while another thread's fork still holds
/// the write handle, until that fork execs.
fn spawn_version_probe(path: &Path) -> Result<std::process::Child, CandidateError> {
    const BUSY_RETRIES: u32 = 50;
    let mut attempt = 0;
    loop {
        let spawned = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(source)
                if source.raw_os_error() == Some(libc::ETXTBSY) && attempt < BUSY_RETRIES =>
            {
                attempt += 1;
                std::thread::sleep(VERSION_PROBE_POLL);
            }
            Err(source) => {
                return Err(CandidateError::Spawn { path: path.to_path_buf(), source });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(major: u32, minor: u32, patch: u32) -> NatsServerVersion {
        NatsServerVersion { major, minor, patch }
    }

    #[test]
    fn parses_release_and_prerelease_output() {
        let parse = NatsServerVersion::parse_version_output;
        assert_eq!(parse("nats-server: v2.9.10\n"), Some(version(2, 9, 10)));
        assert_eq!(parse("nats-server: v2.15.1"), Some(version(2, 15, 1)));
        assert_eq!(parse("nats-server: v2.11.0-RC.1"), Some(version(2, 11, 0)));
        assert_eq!(parse("v2.10"), Some(version(2, 10, 0)));
        assert_eq!(parse("hello world"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("nats-server: v2.10.1.4"), None);
    }

    #[test]
    fn minimum_is_ordered_numerically() {
        assert!(version(2, 9, 10) < NatsServerVersion::MINIMUM);
        assert!(version(2, 10, 0) >= NatsServerVersion::MINIMUM);
        assert!(version(2, 15, 1) > NatsServerVersion::MINIMUM);
        assert!(version(3, 0, 0) > NatsServerVersion::MINIMUM);
    }
}
