//! Runs a local `nats-server` child process with JetStream on, for `daisy run` and for tests.
//!
//! Owns the child process from spawn to reap: [`NatsServer`] starts it, waits for its ports
//! file, stops it (SIGTERM, a deadline, then SIGKILL), kills it for fault tests, restarts it on
//! the same port and store, and kills it when dropped. It does not own the store dir, log or
//! ports dir (the caller picks and removes them), nor JetStream readiness
//! ([`super::wait_jetstream_ready`]).
//!
//! Invariant: while `child` is `Some`, the process has not been reaped, so its pid cannot have
//! been reused and signalling it is safe.
//!
//! ```text
//!  start ──► running ──stop()/kill()──► stopped ──restart()──► running
//!               │                                   ▲
//!               └────────────restart() (stops first)┘      drop: SIGKILL if running
//! ```
//!
//! Why the ports file: `nats-server --ports_file_dir D` writes `D/<exe>_<pid>.ports` (JSON with
//! the client URLs) once it listens. Polling that file under a deadline is exact, whereas
//! scraping the log for a "listening" line depends on wording that changes between releases.
//! The API is synchronous (std::process), so it works from sync code, tests and async code
//! alike; starting takes tens of milliseconds.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::find::{FindOptions, FindServerError, find_nats_server};

/// How often the ports file and the child are polled while starting and stopping.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many log lines an error about a failed start carries: after a bad flag, nats-server
/// prints the reason followed by ~65 lines of usage, and the reason must be in the tail.
const ERROR_LOG_TAIL_LINES: usize = 80;
/// How much of the log's end is read to find its last lines.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// How to start a [`NatsServer`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `nats-server` binary; `None` finds one with [`find_nats_server`] and `find`.
    pub binary: Option<PathBuf>,
    /// How to find the binary when `binary` is `None`.
    pub find: FindOptions,
    /// The JetStream store dir (`-sd`); created if missing. Reusing it resumes the streams.
    pub store_dir: PathBuf,
    /// The client port; `None` lets the server pick a free one (`-p -1`). A restart always
    /// reuses the port of the first start.
    pub port: Option<u16>,
    /// The address the server listens on (`-a`).
    pub bind_address: IpAddr,
    /// Where the server writes its ports file; `None` means `store_dir`.
    pub ports_file_dir: Option<PathBuf>,
    /// The server log (`-l`), also receiving the child's stdout and stderr; `None` means
    /// `<store_dir>/nats-server.log`.
    pub log_file: Option<PathBuf>,
    /// Further command-line arguments, appended after daisy's own (e.g. `--user`, `-c`).
    pub extra_args: Vec<OsString>,
    /// How long to wait for the ports file before giving up.
    pub start_timeout: Duration,
    /// How long [`NatsServer::stop`] waits after SIGTERM before sending SIGKILL.
    pub stop_timeout: Duration,
    /// Puts the child in its own process group, so a Ctrl-C in the terminal reaches only the
    /// parent, which can then drain and stop the server in order (`daisy run`). Off by
    /// default, so an interrupted `cargo test` takes its servers down with it.
    pub own_process_group: bool,
}

impl ServerOptions {
    /// Options for a server storing JetStream data in `store_dir`, with everything else at its
    /// default: a found binary, a free port on 127.0.0.1, ports file and log in `store_dir`.
    pub fn new(store_dir: impl Into<PathBuf>) -> Self {
        ServerOptions {
            binary: None,
            find: FindOptions::default(),
            store_dir: store_dir.into(),
            port: None,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports_file_dir: None,
            log_file: None,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            own_process_group: false,
        }
    }
}

/// Why a [`NatsServer`] could not be started, stopped or signalled.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No binary was given and none could be found.
    #[error(transparent)]
    Find(#[from] FindServerError),
    /// The store, ports or log dir could not be created, or the log not opened.
    #[error("could not prepare {} for nats-server", path.display())]
    Prepare {
        /// The dir or file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("could not start {}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// The server exited before it wrote its ports file.
    #[error(
        "nats-server exited with {status} before it was ready; last lines of {}:\n{log_tail}",
        log_file.display()
    )]
    ExitedEarly {
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log_file: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// No valid ports file appeared before the deadline; the child has been killed.
    #[error(
        "nats-server wrote no valid ports file into {} within {timeout:?} ({last_problem}); \
         last lines of {}:\n{log_tail}",
        ports_file_dir.display(),
        log_file.display()
    )]
    StartTimeout {
        /// The dir the ports file was expected in.
        ports_file_dir: PathBuf,
        /// The deadline that passed.
        timeout: Duration,
        /// What was wrong with the ports file at the last poll.
        last_problem: PortsFileProblem,
        /// Its log file.
        log_file: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Signalling, polling or reaping the child failed.
    #[error("could not {action} nats-server (pid {pid})")]
    Control {
        /// What was attempted: "signal", "wait for" or "kill".
        action: &'static str,
        /// The child's pid.
        pid: u32,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The stale ports file of a previous run could not be removed before a restart.
    #[error("could not remove the stale ports file {}", path.display())]
    RemoveStalePortsFile {
        /// The ports file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// What was wrong with the ports file when the start deadline passed.
#[derive(Debug, thiserror::Error)]
pub enum PortsFileProblem {
    /// No `*_<pid>.ports` file existed yet.
    #[error("no ports file yet")]
    Missing,
    /// The dir or the file could not be read.
    #[error("could not read it: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The file is not the JSON nats-server writes (or was caught half-written).
    #[error("not valid ports json: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// The file lists no client URL with a port.
    #[error("no client url with a port in {urls:?}")]
    NoClientUrl {
        /// The `nats` array as found.
        urls: Vec<String>,
    },
}

/// The part of nats-server's ports file daisy reads.
#[derive(Debug, Deserialize)]
struct PortsFile {
    /// Client URLs, one per listening address, e.g. `nats://127.0.0.1:4222`.
    #[serde(default)]
    nats: Vec<String>,
}

/// A local `nats-server` child with JetStream on; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    /// The binary, found or given once and reused by restarts.
    binary: PathBuf,
    /// The options of the first start, with `ports_file_dir` and `log_file` filled in.
    options: ServerOptions,
    /// The running child; `None` after stop or kill.
    child: Option<Child>,
    /// The ports file of the current (or last) child, removed before a restart.
    ports_file: Option<PathBuf>,
    /// The client port, fixed at the first start.
    port: u16,
    /// The client URL read from the first ports file.
    url: String,
}

impl NatsServer {
    /// Starts `nats-server -js` as configured and waits until it has written its ports file.
    ///
    /// # Errors
    ///
    /// [`ServerError::Find`] if no binary was given and none could be found,
    /// [`ServerError::ExitedEarly`] (with the log tail) if the child exits before it is ready,
    /// [`ServerError::StartTimeout`] if it stays silent past `start_timeout`, and the I/O
    /// variants for dirs, the log or the spawn.
    pub fn start(options: &ServerOptions) -> Result<NatsServer, ServerError> {
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => find_nats_server(&options.find)?,
        };
        let mut options = options.clone();
        let ports_file_dir =
            options.ports_file_dir.get_or_insert_with(|| options.store_dir.clone());
        let ports_file_dir = ports_file_dir.clone();
        let log_file =
            options.log_file.get_or_insert_with(|| options.store_dir.join("nats-server.log"));
        let log_parent = log_file.parent().map(Path::to_path_buf);
        for dir in [Some(options.store_dir.clone()), Some(ports_file_dir), log_parent]
            .into_iter()
            .flatten()
            .filter(|dir| !dir.as_os_str().is_empty())
        {
            fs::create_dir_all(&dir)
                .map_err(|source| ServerError::Prepare { path: dir, source })?;
        }

        let mut server = NatsServer {
            binary,
            port: options.port.unwrap_or(0),
            options,
            child: None,
            ports_file: None,
            url: String::new(),
        };
        let first_port = server.options.port;
        let (url, port) = server.spawn_and_wait(first_port)?;
        server.url = url;
        server.port = port;
        tracing::info!(url = %server.url, pid = server.pid(), store_dir = %server.options.store_dir.display(), "nats-server started");
        Ok(server)
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`; unchanged by restarts.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port; unchanged by restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the running child; `None` after stop or kill.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store dir.
    pub fn store_dir(&self) -> &Path {
        &self.options.store_dir
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        self.options.log_file.as_deref().unwrap_or(Path::new(""))
    }

    /// The binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The last `lines` lines of the server log (a note instead if it cannot be read).
    pub fn log_tail(&self, lines: usize) -> String {
        read_log_tail(self.log_file(), lines)
    }

    /// Whether the child is still running (reaping it if it has exited).
    ///
    /// # Errors
    ///
    /// [`ServerError::Control`] if the child's status cannot be queried.
    pub fn is_running(&mut self) -> Result<bool, ServerError> {
        let Some(child) = &mut self.child else {
            return Ok(false);
        };
        let pid = child.id();
        match child.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                tracing::warn!(pid, %status, "nats-server exited on its own");
                self.child = None;
                Ok(false)
            }
            Err(source) => Err(ServerError::Control { action: "wait for", pid, source }),
        }
    }

    /// Stops the server gracefully: SIGTERM, then SIGKILL if it is still running after
    /// `stop_timeout`. Does nothing if it is not running. Any exit status counts as stopped
    /// (nats-server exits with 1 after SIGTERM).
    ///
    /// # Errors
    ///
    /// [`ServerError::Control`] if the child cannot be signalled or reaped.
    pub fn stop(&mut self) -> Result<(), ServerError> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let pid = child.id();
        let control_error =
            |action: &'static str| move |source| ServerError::Control { action, pid, source };
        if child.try_wait().map_err(control_error("wait for"))?.is_none() {
            send_signal(pid, libc::SIGTERM).map_err(control_error("signal"))?;
            let deadline = Instant::now() + self.options.stop_timeout;
            loop {
                if let Some(status) = child.try_wait().map_err(control_error("wait for"))? {
                    tracing::info!(pid, %status, "nats-server stopped");
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(pid, timeout = ?self.options.stop_timeout, "nats-server ignored SIGTERM, killing it");
                    child.kill().map_err(control_error("kill"))?;
                    child.wait().map_err(control_error("wait for"))?;
                    break;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        self.child = None;
        Ok(())
    }

    /// Kills the server with SIGKILL and reaps it, as a crash would; the store and the ports
    /// file are left as they are. Does nothing if it is not running.
    ///
    /// # Errors
    ///
    /// [`ServerError::Control`] if the child cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<(), ServerError> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let pid = child.id();
        // `Child::kill` sends SIGKILL, or does nothing if the child has already exited.
        child.kill().map_err(|source| ServerError::Control { action: "kill", pid, source })?;
        child.wait().map_err(|source| ServerError::Control { action: "wait for", pid, source })?;
        tracing::info!(pid, "nats-server killed");
        self.child = None;
        Ok(())
    }

    /// Starts the server again on the same port, store dir and log, stopping it first if it is
    /// still running.
    ///
    /// # Errors
    ///
    /// As [`NatsServer::stop`] and [`NatsServer::start`]; also
    /// [`ServerError::RemoveStalePortsFile`].
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.stop()?;
        if let Some(stale) = self.ports_file.take() {
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ServerError::RemoveStalePortsFile { path: stale, source });
                }
            }
        }
        let (url, _port) = self.spawn_and_wait(Some(self.port))?;
        if url != self.url {
            tracing::debug!(old_url = %self.url, new_url = %url, "nats-server url changed on restart");
            self.url = url;
        }
        tracing::info!(url = %self.url, pid = self.pid(), "nats-server restarted");
        Ok(())
    }

    /// Spawns the child with `-p <port>` (or `-p -1`) and waits for its ports file; returns
    /// the client URL and port.
    fn spawn_and_wait(&mut self, port: Option<u16>) -> Result<(String, u16), ServerError> {
        let options = &self.options;
        let ports_file_dir = options.ports_file_dir.clone().unwrap_or_default();
        let log_file = options.log_file.clone().unwrap_or_default();
        let log_for_child = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|source| ServerError::Prepare { path: log_file.clone(), source })?;
        let log_for_stderr = log_for_child
            .try_clone()
            .map_err(|source| ServerError::Prepare { path: log_file.clone(), source })?;

        let mut command = Command::new(&self.binary);
        command
            .arg("-js")
            .arg("-a")
            .arg(options.bind_address.to_string())
            .arg("-p")
            .arg(port.map_or_else(|| "-1".to_owned(), |port| port.to_string()))
            .arg("-sd")
            .arg(&options.store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_file_dir)
            .arg("-l")
            .arg(&log_file)
            .args(&options.extra_args)
            .stdin(Stdio::null())
            // Messages printed before the log file is open (bad flags) land in the log too.
            .stdout(log_for_child)
            .stderr(log_for_stderr);
        if options.own_process_group {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        tracing::debug!(?command, "starting nats-server");
        let child = command
            .spawn()
            .map_err(|source| ServerError::Spawn { binary: self.binary.clone(), source })?;
        let pid = child.id();
        let child = self.child.insert(child);

        let start_timeout = self.options.start_timeout;
        let deadline = Instant::now() + start_timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(|source| ServerError::Control {
                action: "wait for",
                pid,
                source,
            })? {
                self.child = None;
                return Err(ServerError::ExitedEarly {
                    status,
                    log_tail: read_log_tail(&log_file, ERROR_LOG_TAIL_LINES),
                    log_file,
                });
            }
            let problem = match read_ports_file(&ports_file_dir, pid, self.options.bind_address) {
                Ok((path, url, port)) => {
                    self.ports_file = Some(path);
                    return Ok((url, port));
                }
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                // Best effort: the start has failed either way, and drop retries the kill.
                let _ = self.kill();
                return Err(ServerError::StartTimeout {
                    ports_file_dir,
                    timeout: start_timeout,
                    last_problem: problem,
                    log_tail: read_log_tail(&log_file, ERROR_LOG_TAIL_LINES),
                    log_file,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            tracing::warn!(error = %error, "could not kill nats-server on drop");
        }
        if let Some(ports_file) = self.ports_file.take() {
            // Best effort: a leftover ports file only matters to a restart, and there is none
            // after drop.
            let _ = fs::remove_file(ports_file);
        }
    }
}

/// Finds and parses `<dir>/*_<pid>.ports`; returns its path, the client URL and the port.
///
/// The file name starts with the base name of the binary as invoked, so it is matched by pid
/// only. Of several client URLs, the loopback one is preferred (a server bound to 0.0.0.0
/// lists every interface).
fn read_ports_file(
    dir: &Path,
    pid: u32,
    bind_address: IpAddr,
) -> Result<(PathBuf, String, u16), PortsFileProblem> {
    let suffix = format!("_{pid}.ports");
    let entries = fs::read_dir(dir).map_err(PortsFileProblem::Unreadable)?;
    let mut found = None;
    for entry in entries {
        let entry = entry.map_err(PortsFileProblem::Unreadable)?;
        if entry.file_name().to_string_lossy().ends_with(&suffix) {
            found = Some(entry.path());
            break;
        }
    }
    let path = found.ok_or(PortsFileProblem::Missing)?;
    let text = fs::read_to_string(&path).map_err(PortsFileProblem::Unreadable)?;
    let ports: PortsFile = serde_json::from_str(&text).map_err(PortsFileProblem::InvalidJson)?;
    let with_port: Vec<(&String, u16)> =
        ports.nats.iter().filter_map(|url| Some((url, url_port(url)?))).collect();
    let preferred = with_port
        .iter()
        .find(|(url, _)| bind_address.is_unspecified() && url.contains("://127.0.0.1:"))
        .or_else(|| with_port.first());
    match preferred {
        Some((url, port)) => Ok((path, (*url).clone(), *port)),
        None => Err(PortsFileProblem::NoClientUrl { urls: ports.nats }),
    }
}

/// The port of a `nats://host:port` URL.
fn url_port(url: &str) -> Option<u16> {
    let (_, port_text) = url.rsplit_once(':')?;
    port_text.trim_end_matches('/').parse().ok()
}

/// Returns the last `lines` lines of a log file, or a note saying why it could not be read.
pub fn read_log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all_lines: Vec<&str> = text.lines().collect();
            all_lines[all_lines.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("<could not read {}: {error}>", path.display()),
    }
}

/// Sends `signal` to the child `pid`.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) only takes integers and touches no memory of this process. The pid is
    // that of our own child, which has not been reaped yet (see the module invariant), so it
    // cannot name an unrelated process.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_from_client_urls() {
        assert_eq!(url_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(url_port("nats://[::1]:35001"), Some(35001));
        assert_eq!(url_port("nats://localhost"), None);
    }

    #[test]
    fn parses_a_ports_file_and_prefers_loopback_when_bound_to_all() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(
            dir.path().join("nats-server_4242.ports"),
            r#"{"nats":["nats://10.0.0.5:4500","nats://127.0.0.1:4500"],"monitoring":[]}"#,
        )
        .expect("temp dir is writable");
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let (_, url, port) = read_ports_file(dir.path(), 4242, unspecified).expect("valid file");
        assert_eq!((url.as_str(), port), ("nats://127.0.0.1:4500", 4500));
        assert!(matches!(
            read_ports_file(dir.path(), 4243, unspecified),
            Err(PortsFileProblem::Missing)
        ));
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        fs::write(&log, "one\ntwo\nthree\n").expect("temp dir is writable");
        assert_eq!(read_log_tail(&log, 2), "two\nthree");
        assert_eq!(read_log_tail(&log, 10), "one\ntwo\nthree");
        assert!(read_log_tail(&dir.path().join("missing.log"), 2).starts_with("<could not read"));
    }
}
