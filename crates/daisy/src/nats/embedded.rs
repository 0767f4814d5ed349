//! The embedded `nats-server` of `daisy run`: a child process with its
//! store under `<state-dir>/nats/`, so the same command started again
//! resumes the run from its streams.
//!
//! # Ownership
//! This module owns the server's whole life: one run per state dir (a
//! lock file), stopping a server that a killed run left behind, starting
//! the child in its own process group, publishing its URL for the other
//! commands (`<state-dir>/nats/url`, [`EMBEDDED_URL_FILE`]) and stopping
//! it. It does not connect to it (the caller does, with the URL).
//!
//! # Why its own process group
//! A Ctrl-C in the terminal must not stop the server before the scheduler
//! has drained; the flip side is that a second Ctrl-C, which quits at once,
//! must kill it explicitly ([`kill_embedded_servers`]), or it would run on
//! as an orphan.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daisy_nats::server::{NatsServer, ServerError, ServerOptions};
use tracing::warn;

/// Where the embedded server's URL is written, under the state dir; the
/// NATS commands look there when given no URL.
pub const EMBEDDED_URL_FILE: &str = "nats/url";

/// The embedded server's pid, under `<state-dir>/nats/`, to stop it if a
/// killed run left it behind.
const PID_FILE: &str = "pid";

/// The embedded servers this process runs, for [`kill_embedded_servers`].
static RUNNING_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Why the embedded server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedServerError {
    /// `<state-dir>/nats` could not be created.
    #[error("cannot create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Another run of this state dir holds the lock.
    #[error("the embedded NATS server in {} is in use by another daisy run", dir.display())]
    InUse {
        /// `<state-dir>/nats`.
        dir: PathBuf,
    },
    /// The server did not start.
    #[error("starting the embedded nats-server")]
    Start(#[source] ServerError),
    /// The URL file could not be written.
    #[error("writing {}", path.display())]
    WriteUrl {
        /// `<state-dir>/nats/url`.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// A running embedded server, holding its state dir's lock until stopped
/// or dropped (which kills it).
#[derive(Debug)]
pub struct EmbeddedServer {
    server: NatsServer,
    /// The child's pid, registered for [`kill_embedded_servers`] until drop.
    pid: Option<u32>,
    /// Held while the server uses the store: one run per state dir.
    _lock: File,
}

impl EmbeddedServer {
    /// Takes the lock of `<state_dir>/nats`, stops a server a killed run
    /// left there, starts a new one on the same store and writes its URL
    /// to `<state_dir>/nats/url`. Blocks until the server is ready (well
    /// under a second; up to its start timeout).
    ///
    /// # Errors
    /// [`EmbeddedServerError`]; [`EmbeddedServerError::InUse`] when another
    /// run holds the state dir.
    pub fn start(state_dir: &Path) -> Result<Self, EmbeddedServerError> {
        let nats_dir = state_dir.join("nats");
        std::fs::create_dir_all(&nats_dir)
            .map_err(|source| EmbeddedServerError::CreateDir { path: nats_dir.clone(), source })?;
        let lock = lock(&nats_dir)?;
        stop_orphaned_server(&nats_dir);
        let mut options = ServerOptions::new(nats_dir.join("store"));
        options.log_file = Some(nats_dir.join("server.log"));
        options.ports_file_dir = Some(nats_dir.clone());
        options.own_process_group = true;
        let server = NatsServer::start(&options).map_err(EmbeddedServerError::Start)?;
        let pid = server.pid();
        if let Some(pid) = pid {
            let _ = std::fs::write(nats_dir.join(PID_FILE), pid.to_string());
            running_pids().push(pid);
        }
        let server = Self { server, pid, _lock: lock };
        let url_file = state_dir.join(EMBEDDED_URL_FILE);
        std::fs::write(&url_file, server.url())
            .map_err(|source| EmbeddedServerError::WriteUrl { path: url_file, source })?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Stops the server (SIGTERM, then SIGKILL after its stop timeout) and
    /// releases the state dir; a failure is logged, the lock released anyway.
    /// Blocks until the server is gone.
    pub fn stop(mut self) {
        if let Err(err) = self.server.stop() {
            warn!(error = %err, "could not stop the embedded nats-server");
        }
    }
}

impl Drop for EmbeddedServer {
    /// The server is killed by its own drop (if [`EmbeddedServer::stop`]
    /// did not stop it); its pid must not be killed again later, when it
    /// may name another process.
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            running_pids().retain(|&running| running != pid);
        }
    }
}

fn running_pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    // A panic while holding the lock cannot leave the list half-changed.
    RUNNING_PIDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills this process's embedded servers at once (a second Ctrl-C, just
/// before exiting): they run in their own process groups, so they would
/// outlive this process otherwise.
pub fn kill_embedded_servers() {
    for pid in running_pids().iter() {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// Takes the embedded server's lock: one run per state dir.
fn lock(nats_dir: &Path) -> Result<File, EmbeddedServerError> {
    let path = nats_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| EmbeddedServerError::Lock { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(EmbeddedServerError::InUse { dir: nats_dir.to_path_buf() })
        }
        Err(std::fs::TryLockError::Error(source)) => {
            Err(EmbeddedServerError::Lock { path, source })
        }
    }
}

/// Stops a nats-server that a killed run left running on this store (the
/// caller holds the lock, so no live run uses it).
fn stop_orphaned_server(nats_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(nats_dir.join(PID_FILE)) else { return };
    let Ok(pid) = text.trim().parse::<u32>() else { return };
    let is_nats = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "nats-server")
    };
    if !is_nats(pid) {
        return;
    }
    warn!(pid, "stopping the nats-server a killed daisy run left behind");
    for signal in ["-TERM", "-KILL"] {
        let _ = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_nats(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !is_nats(pid) {
            return;
        }
    }
}
