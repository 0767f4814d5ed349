//! The embedded `nats-server` of `daisy run`: a child process with its
//! store under `<state-dir>/nats/`, so the same command started again
//! resumes the run from its streams.
//!
//! # Ownership
//! This module owns the server's whole life: one run per state dir (a
//! lock file), stopping a server that a killed run left behind, starting
//! the child in its own process group, publishing its URL for the other
//! commands (`<state-dir>/nats/url`, [`EMBEDDED_URL_FILE`], present only
//! while the server runs) and stopping it. It does not connect to it (the
//! caller does, with the URL).
//!
//! # After the run
//! The server lives only while its `daisy run` does. A command that reads
//! or operates the run later ([`local_server`]) uses the live server when a
//! `daisy run` holds the state dir, and otherwise starts one on the same
//! store for as long as it lasts: two servers must never open one
//! JetStream store, and the lock guarantees that.
//!
//! # Why its own process group
//! A Ctrl-C in the terminal must not stop the server before the scheduler
//! has drained; the flip side is that a second Ctrl-C, which quits at once,
//! must kill it explicitly ([`kill_embedded_servers`]), or it would run on
//! as an orphan.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daisy_nats::server::{NatsServer, ServerError, ServerOptions};
use tracing::warn;

use crate::run_lock::{self, DirLock, LockError, LockHolder};

/// Where the embedded server's URL is written, under the state dir; the
/// NATS commands look there when given no URL.
pub const EMBEDDED_URL_FILE: &str = "nats/url";

/// The lock file under `<state-dir>/nats/`: held by the process whose server uses the
/// store.
const LOCK_FILE: &str = "lock";

/// The JetStream store under `<state-dir>/nats/`.
const STORE_DIR: &str = "store";

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
    #[error(transparent)]
    Lock(LockError),
    /// Another process (a `daisy run`, or an operator command's short-lived server) holds
    /// the state dir's server.
    #[error("the embedded NATS server of {} is in use by {}", dir.display(), holder_name(holder))]
    InUse {
        /// `<state-dir>/nats`.
        dir: PathBuf,
        /// Who holds it, when its note could be read.
        holder: Option<LockHolder>,
    },
    /// No `daisy run` runs in the state dir now (and none was to be started).
    #[error("no daisy run is running in {}", dir.display())]
    NotRunning {
        /// The state dir.
        dir: PathBuf,
    },
    /// `<state-dir>/nats/store` does not exist: no `daisy run` ever used this state dir.
    #[error("no daisy run has used {} (no embedded server store there)", dir.display())]
    NoStore {
        /// The state dir.
        dir: PathBuf,
    },
    /// A live `daisy run` holds the state dir but published no URL in time.
    #[error(
        "{} holds {} but published no server URL in {}",
        holder_name(holder),
        dir.display(),
        url_file.display()
    )]
    NoUrl {
        /// `<state-dir>/nats`.
        dir: PathBuf,
        /// The URL file waited for.
        url_file: PathBuf,
        /// The holder of the lock.
        holder: Option<LockHolder>,
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

/// A lock's holder for a message, when its note could be read.
fn holder_name(holder: &Option<LockHolder>) -> String {
    holder.as_ref().map_or_else(|| "another daisy process".to_owned(), ToString::to_string)
}

/// A running embedded server, holding its state dir's lock until stopped
/// or dropped (which kills it).
#[derive(Debug)]
pub struct EmbeddedServer {
    server: NatsServer,
    /// The child's pid, registered for [`kill_embedded_servers`] until drop.
    pid: Option<u32>,
    /// `<state-dir>/nats/url`, removed when the server goes, so that no
    /// command reads the address of a dead server.
    url_file: PathBuf,
    /// `<state-dir>/nats/pid`, removed once the server is gone.
    pid_file: PathBuf,
    /// Held while the server uses the store: one server per store.
    _lock: DirLock,
}

impl EmbeddedServer {
    /// Takes the lock of `<state_dir>/nats` for `holder`, stops a server a
    /// killed run left there, starts a new one on the same store and writes
    /// its URL to `<state_dir>/nats/url`. Blocks until the server is ready
    /// (well under a second; up to its start timeout).
    ///
    /// # Errors
    /// [`EmbeddedServerError`]; [`EmbeddedServerError::InUse`] when another
    /// process holds the state dir.
    pub fn start(state_dir: &Path, holder: &LockHolder) -> Result<Self, EmbeddedServerError> {
        let nats_dir = state_dir.join("nats");
        std::fs::create_dir_all(&nats_dir)
            .map_err(|source| EmbeddedServerError::CreateDir { path: nats_dir.clone(), source })?;
        let lock_file = nats_dir.join(LOCK_FILE);
        let deadline = Instant::now() + BRIEF_HOLDER_WAIT;
        let lock = loop {
            match run_lock::lock(&lock_file, holder) {
                Ok(lock) => break lock,
                // `daisy status` in a loop in another shell must not keep a run from starting.
                Err(LockError::Held { holder: Some(other), .. })
                    if other.brief && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(LockError::Held { holder, .. }) => {
                    return Err(EmbeddedServerError::InUse { dir: nats_dir, holder });
                }
                Err(err @ LockError::Io { .. }) => return Err(EmbeddedServerError::Lock(err)),
            }
        };
        // The URL of a killed run's server: nobody may read it from now on.
        let url_file = state_dir.join(EMBEDDED_URL_FILE);
        let _ = std::fs::remove_file(&url_file);
        // Absolute, so that the server's command line names this store wherever the next
        // command runs from: that is how a left-over server of this store is recognised.
        let store =
            std::fs::canonicalize(&nats_dir).unwrap_or_else(|_| nats_dir.clone()).join(STORE_DIR);
        stop_orphaned_server(&nats_dir, &store);
        let mut options = ServerOptions::new(store);
        options.log_file = Some(nats_dir.join("server.log"));
        options.ports_file_dir = Some(nats_dir.clone());
        // A run's server survives the first Ctrl-C (the run stops it after its workers
        // finished); a command's short-lived server goes with the command's process group
        // when the command is interrupted, instead of outliving it.
        options.own_process_group = !holder.brief;
        let server = NatsServer::start(&options).map_err(EmbeddedServerError::Start)?;
        let pid = server.pid();
        if let Some(pid) = pid {
            let _ = std::fs::write(nats_dir.join(PID_FILE), pid.to_string());
            running_pids().push(pid);
        }
        let pid_file = nats_dir.join(PID_FILE);
        let server = Self { server, pid, url_file: url_file.clone(), pid_file, _lock: lock };
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
        let _ = std::fs::remove_file(&self.url_file);
        match self.server.stop() {
            // Gone: its pid may name another process from now on.
            Ok(()) => {
                let _ = std::fs::remove_file(&self.pid_file);
            }
            Err(err) => warn!(error = %err, "could not stop the embedded nats-server"),
        }
    }
}

impl Drop for EmbeddedServer {
    /// The server is killed by its own drop (if [`EmbeddedServer::stop`]
    /// did not stop it); its pid must not be killed again later, when it
    /// may name another process.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.url_file);
        if let Some(pid) = self.pid {
            running_pids().retain(|&running| running != pid);
        }
    }
}

/// The server of a state dir for a command that runs no blocks (`daisy status`, `runs`,
/// `retry`, `cancel`, a `daisy-worker` joining a local run).
#[derive(Debug)]
pub enum LocalServer {
    /// The server of the `daisy run` running there now.
    Live {
        /// Its URL.
        url: String,
        /// The `daisy run` (or the command) that started it.
        holder: Option<LockHolder>,
    },
    /// No run is running there: a server started on its store for this command, stopped
    /// when dropped. It holds the store, so no `daisy run` starts meanwhile.
    Started(Box<EmbeddedServer>),
}

impl LocalServer {
    /// The URL to connect to.
    pub fn url(&self) -> &str {
        match self {
            LocalServer::Live { url, .. } => url,
            LocalServer::Started(server) => server.url(),
        }
    }
}

/// How long starting a server waits for an operator command that holds the store for a
/// moment (it reads a few keys and stops its server; starting that server on a big store
/// may take a while).
const BRIEF_HOLDER_WAIT: Duration = Duration::from_secs(30);

/// How long an operator command waits for another one's short-lived server to go.
const BRIEF_COMMAND_WAIT: Duration = Duration::from_secs(30);

/// Whether a process holds the embedded server of `state_dir` now (a `daisy run`, or a
/// command's short-lived server).
///
/// # Errors
/// The lock file exists but cannot be probed.
pub fn embedded_server_running(state_dir: &Path) -> std::io::Result<bool> {
    run_lock::is_held(&state_dir.join("nats").join(LOCK_FILE))
}

/// How long a command waits for a `daisy run` that holds the state dir to publish its
/// server's URL: the server starts in well under a second.
const URL_WAIT: Duration = Duration::from_secs(10);

/// Finds the server of the `daisy run`s of `state_dir`: the live one if a `daisy run`
/// (or another command) holds the state dir, else, with `start_if_idle`, one started on
/// the same store for `holder` — JetStream stores must never be opened by two servers,
/// so this is the only way to read a run after its `daisy run` ended.
///
/// # Errors
/// [`EmbeddedServerError::NoStore`] when no `daisy run` ever used `state_dir`,
/// [`EmbeddedServerError::NotRunning`] when none runs there and `start_if_idle` is
/// false, [`EmbeddedServerError::NoUrl`] when the holder publishes no URL in time, and
/// the errors of [`EmbeddedServer::start`].
pub fn local_server(
    state_dir: &Path,
    holder: &LockHolder,
    start_if_idle: bool,
) -> Result<LocalServer, EmbeddedServerError> {
    let nats_dir = state_dir.join("nats");
    match std::fs::metadata(nats_dir.join(STORE_DIR)) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(EmbeddedServerError::NoStore { dir: state_dir.to_path_buf() });
        }
        Err(source) => return Err(EmbeddedServerError::CreateDir { path: nats_dir, source }),
    }
    let lock_file = nats_dir.join(LOCK_FILE);
    let url_file = state_dir.join(EMBEDDED_URL_FILE);
    let deadline = Instant::now() + URL_WAIT;
    let brief_deadline = Instant::now() + BRIEF_COMMAND_WAIT;
    loop {
        let held = run_lock::is_held(&lock_file).map_err(|source| {
            EmbeddedServerError::Lock(LockError::Io { path: lock_file.clone(), source })
        })?;
        if !held {
            if !start_if_idle {
                return Err(EmbeddedServerError::NotRunning { dir: state_dir.to_path_buf() });
            }
            match EmbeddedServer::start(state_dir, holder) {
                Ok(server) => return Ok(LocalServer::Started(Box::new(server))),
                // A `daisy run` took it in between: use its server.
                Err(EmbeddedServerError::InUse { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        // Another command's short-lived server is no run: joining it would lose it when that
        // command ends in a moment. Wait for it to go (and start this command's own), or say
        // that no run runs.
        if let Some(other) = run_lock::read_holder(&lock_file).filter(|other| other.brief) {
            if !start_if_idle {
                return Err(EmbeddedServerError::NotRunning { dir: state_dir.to_path_buf() });
            }
            if Instant::now() >= brief_deadline {
                return Err(EmbeddedServerError::InUse { dir: nats_dir, holder: Some(other) });
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match std::fs::read_to_string(&url_file) {
            Ok(url) if !url.trim().is_empty() => {
                let holder = run_lock::read_holder(&lock_file);
                return Ok(LocalServer::Live { url: url.trim().to_owned(), holder });
            }
            _ if Instant::now() >= deadline => {
                return Err(EmbeddedServerError::NoUrl {
                    dir: nats_dir,
                    url_file,
                    holder: run_lock::read_holder(&lock_file),
                });
            }
            // The holder is starting its server, or ending and about to release the lock.
            _ => std::thread::sleep(Duration::from_millis(20)),
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

/// Stops a nats-server that a killed run left running on this store (the
/// caller holds the lock, so no live run uses it).
fn stop_orphaned_server(nats_dir: &Path, store: &Path) {
    let Ok(text) = std::fs::read_to_string(nats_dir.join(PID_FILE)) else { return };
    let Ok(pid) = text.trim().parse::<u32>() else { return };
    // The pid names the left-over server only if that process serves this very store: a
    // pid reused by another process (even another nats-server) is left alone.
    let store = store.as_os_str().as_encoded_bytes().to_vec();
    let is_nats = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == store.as_slice()))
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
