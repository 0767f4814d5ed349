//! What the operator commands (`daisy status`, `runs`, `retry`, `cancel`) share:
//! connecting, choosing the run, and reading a run's state from NATS.
//!
//! These commands only read the run's KV status, lease and liveness keys and
//! publish operator events; scheduling stays with the leader.
//!
//! # Local runs
//! Without `--nats` and `NATS_URL`, the server is the embedded one of the
//! state dir's `daisy run`s. It lives only while a `daisy run` does, so a
//! command run after it ended starts a server on the same store for its own
//! duration (holding the store's lock: two servers must never open one
//! store), and its hints name `daisy run FILE` rather than a scheduler on a
//! server that is gone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use daisy::nats::embedded::{
    EmbeddedServerError, LocalServer, embedded_server_running, local_server,
};
use daisy::run_lock::{self, LockHolder};
use daisy_nats::{Nats, RunStatus, RunStreams};
use daisy_proto::RunId;
use serde::Serialize;

use crate::input::BadInput;
use crate::nats_args::{NatsArgs, Unreachable, error_chain};

/// Where the run's NATS server is: the options every operator command takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The state dir of local runs (`daisy run`'s --state-dir): used when
    /// neither --nats nor NATS_URL is given. While a `daisy run` runs there,
    /// commands use its server; after it ended, they start its server on the
    /// same store for the command's duration.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// `daisy run`'s default --state-dir.
pub const DEFAULT_STATE_DIR: &str = ".daisy";

/// A connection for one operator command.
pub struct Session {
    /// The connection.
    pub nats: Nats,
    /// The server's URL, for messages.
    pub url: String,
    /// Set when the server is the embedded one of local runs (no --nats, no
    /// `NATS_URL`): hints then name `daisy run FILE`. Dropped after `nats`,
    /// so a server started for the command stops after the connection closed.
    pub local: Option<LocalRuns>,
}

/// The local runs of a state dir, and the server the command uses for them.
pub struct LocalRuns {
    /// The state dir, as the user gave it.
    pub state_dir: PathBuf,
    /// The live server of a running `daisy run`, or one started for this command.
    server: LocalServer,
}

impl LocalRuns {
    /// Whether the server was started for this command (no `daisy run` runs).
    pub fn idle(&self) -> bool {
        matches!(self.server, LocalServer::Started(_))
    }

    /// Whether the `daisy run` whose live server this command uses has ended
    /// (and its server with it).
    pub fn run_ended(&self) -> bool {
        matches!(self.server, LocalServer::Live { .. })
            && !embedded_server_running(&self.state_dir).unwrap_or(true)
    }
}

impl Drop for LocalRuns {
    /// Stops a server started for the command gracefully (SIGTERM), so the
    /// store is closed cleanly before the next `daisy run` opens it.
    fn drop(&mut self) {
        let server = std::mem::replace(
            &mut self.server,
            LocalServer::Live { url: String::new(), holder: None },
        );
        if let LocalServer::Started(server) = server {
            (*server).stop();
        }
    }
}

/// A single-threaded runtime: operator commands do a few requests in turn.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// How long a server started on a local run's store may take until JetStream answers
/// (it recovers the run's streams first).
const LOCAL_READY_TIMEOUT: Duration = Duration::from_secs(20);

impl ServerArgs {
    /// Connects to `--nats` or `NATS_URL`, else to the server of the local
    /// runs in the state dir (started for the command if no `daisy run` runs).
    ///
    /// # Errors
    /// [`BadInput`] when there is no server to use, [`Unreachable`] when it
    /// cannot be reached or started.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Session> {
        if let Some(url) = &self.nats.url {
            let nats = self.nats.connect(url.clone(), name).await?;
            return Ok(Session { nats, url: url.clone(), local: None });
        }
        let holder = LockHolder {
            brief: true,
            ..LockHolder::this_process(name, "a short-lived server to read the runs")
        };
        let server = local_server(&self.state_dir, &holder, true).map_err(|err| {
            let chain = error_chain(&err);
            match err {
                EmbeddedServerError::NoStore { .. } => anyhow::Error::new(BadInput(format!(
                    "no NATS server given: pass --nats nats://host:4222 or set NATS_URL ({chain}; \
                     give --state-dir if its runs keep their state elsewhere{})",
                    if has_journals(&self.state_dir) {
                        "; runs with --in-process keep only a journal, which this command does \
                         not read"
                    } else {
                        ""
                    }
                ))),
                EmbeddedServerError::Start(_) | EmbeddedServerError::NoUrl { .. } => {
                    anyhow::Error::new(Unreachable(chain))
                }
                _ => anyhow::anyhow!(chain),
            }
        })?;
        let url = server.url().to_owned();
        if let LocalServer::Started(_) = server {
            eprintln!(
                "daisy: no daisy run is running in {}: started its NATS server on the same \
                 store for this command",
                self.state_dir.display()
            );
            daisy_nats::server::wait_jetstream_ready(&url, LOCAL_READY_TIMEOUT)
                .await
                .map_err(|err| Unreachable(error_chain(&err)))?;
        }
        let local = LocalRuns { state_dir: self.state_dir.clone(), server };
        let nats = self.nats.connect(url.clone(), name).await?;
        Ok(Session { nats, url, local: Some(local) })
    }
}

/// Whether `state_dir` holds journals of `--in-process` runs (`<state-dir>/<run>/journal`).
fn has_journals(state_dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(state_dir) else { return false };
    entries.flatten().any(|entry| {
        std::fs::metadata(entry.path().join(daisy::journal::JOURNAL_FILE))
            .is_ok_and(|m| m.is_file())
    })
}

impl Session {
    /// The runs on the server, sorted.
    pub async fn runs(&self) -> anyhow::Result<Vec<RunId>> {
        self.nats.list_runs().await.with_context(|| format!("listing the runs on {}", self.url))
    }

    /// Opens `run`, or the only run on the server when `run` is `None`.
    ///
    /// # Errors
    /// [`BadInput`] for an invalid or unknown run id, no run at all, or
    /// several runs and none chosen (the message lists them).
    pub async fn open(&self, run: Option<&str>) -> anyhow::Result<RunStreams> {
        let runs = self.runs().await?;
        let run = match run {
            Some(id) => RunId::new(id).ok_or_else(|| {
                BadInput(format!("{id:?} is not a run id (letters, digits, '_' and '-')"))
            })?,
            None => match runs.as_slice() {
                [only] => only.clone(),
                [] => return Err(BadInput(format!("no runs on {}", self.url)).into()),
                several => {
                    return Err(BadInput(format!(
                        "{} runs on {}: name one of {}",
                        several.len(),
                        self.url,
                        list(several)
                    ))
                    .into());
                }
            },
        };
        if !runs.contains(&run) {
            return Err(BadInput(format!(
                "no run '{run}' on {} (runs: {})",
                self.url,
                if runs.is_empty() { "none".to_owned() } else { list(&runs) }
            ))
            .into());
        }
        self.nats
            .open_run(&run)
            .await
            .with_context(|| format!("opening run '{run}' on {}", self.url))
    }
}

fn list(runs: &[RunId]) -> String {
    runs.iter().map(RunId::as_str).collect::<Vec<_>>().join(", ")
}

/// The scheduler leading a run (from its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// The replica's id (`<host>-<pid>`).
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} (pid {})", self.id, self.host, self.pid)
    }
}

/// Everything known about a run right now.
#[derive(Debug, Clone)]
pub struct RunState {
    /// The run.
    pub run: RunId,
    /// The leader's last status, if one was written.
    pub status: Option<RunStatus>,
    /// The leader, if the lease is held.
    pub leader: Option<Leader>,
    /// Live worker processes.
    pub workers: usize,
}

impl RunState {
    /// Reads the status, the lease and the liveness keys.
    pub async fn read(streams: &RunStreams) -> anyhow::Result<RunState> {
        let run = streams.run().clone();
        let status =
            streams.get_status().await.with_context(|| format!("reading the status of '{run}'"))?;
        let leader = daisy_nats::current_holder(streams)
            .await
            .with_context(|| format!("reading the leader lease of '{run}'"))?
            .map(|record| Leader {
                id: record.holder.id,
                host: record.holder.host,
                pid: record.holder.pid,
            });
        let workers = streams
            .live_workers()
            .await
            .with_context(|| format!("listing the workers of '{run}'"))?
            .len();
        Ok(RunState { run, status, leader, workers })
    }

    /// Whether every block has an outcome.
    pub fn finished(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.finished)
    }

    /// Whether `daisy cancel` stopped it (and no leader resumed it since).
    pub fn cancelled(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.cancelled)
    }

    /// Whether every block succeeded or was skipped (once finished).
    pub fn succeeded(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.finished && s.succeeded)
    }

    /// (completed, total) blocks over all tasks.
    pub fn blocks(&self) -> (u64, u64) {
        self.status.as_ref().map_or((0, 0), |s| {
            s.tasks.iter().fold((0, 0), |(done, total), t| {
                (done + t.counters.completed, total + t.counters.total)
            })
        })
    }

    /// (failed, orphaned) blocks over all tasks.
    pub fn failed_and_orphaned(&self) -> (u64, u64) {
        self.status.as_ref().map_or((0, 0), |s| {
            s.tasks
                .iter()
                .fold((0, 0), |(f, o), t| (f + t.counters.failed, o + t.counters.orphaned))
        })
    }

    /// Seconds since the leader wrote the status (by this machine's clock).
    pub fn status_age_seconds(&self) -> Option<f64> {
        let written = self.status.as_ref()?.updated_unix_ms;
        Some(now_unix_ms().saturating_sub(written) as f64 / 1000.0)
    }

    /// One word for the run's state.
    pub fn state_word(&self) -> &'static str {
        if self.finished() {
            if self.succeeded() { "succeeded" } else { "failed" }
        } else if self.cancelled() {
            "cancelled"
        } else if self.leader.is_some() {
            "running"
        } else if self.status.is_none() {
            "new"
        } else {
            "stopped"
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock.
pub fn now_unix_ms() -> u64 {
    daisy_scheduler::unix_ms_now()
}

/// Writes one JSON value and a newline to stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value).context("writing JSON")?;
    writeln!(stdout).context("writing JSON")?;
    stdout.flush().context("writing JSON")
}

impl Session {
    /// How to go on with `run` (resume it, run its retried blocks), for the
    /// next-step hints: `daisy run FILE` for a local run, else a scheduler
    /// on the same server.
    pub fn resume_hint(&self, run: &RunId) -> String {
        match &self.local {
            Some(local) => format!("  {}", local_run_command(&local.state_dir, run)),
            None => {
                let url = &self.url;
                format!(
                    "  daisy-scheduler --nats {url} PIPELINE.toml --run-id {run}   (plus \
                     daisy-worker --nats {url} --run {run})\n  or: daisy run PIPELINE.toml --nats \
                     {url} --run-id {run}"
                )
            }
        }
    }
}

/// The `daisy run` command of local run `run`: its pipeline file as its last `daisy run`
/// recorded it (relative to the current directory when below it), with `--run-id` and
/// `--state-dir` when they are not the defaults.
pub fn local_run_command(state_dir: &Path, run: &RunId) -> String {
    let lock = state_dir.join(run.as_str()).join(RUN_LOCK_FILE);
    let file = run_lock::read_holder(&lock).and_then(|holder| holder.pipeline_file);
    let mut command = match &file {
        Some(file) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            let shown = file.strip_prefix(&cwd).unwrap_or(file);
            format!("daisy run {}", shown.display())
        }
        None => "daisy run PIPELINE.toml".to_owned(),
    };
    let default_id = file
        .as_deref()
        .and_then(Path::file_stem)
        .is_some_and(|stem| RunId::sanitized(&stem.to_string_lossy()) == *run);
    if !default_id {
        command.push_str(&format!(" --run-id {run}"));
    }
    if state_dir != Path::new(DEFAULT_STATE_DIR) {
        command.push_str(&format!(" --state-dir {}", state_dir.display()));
    }
    command
}

/// The lock file of a local run, under `<state-dir>/<run-id>/`: held by its `daisy run`.
pub const RUN_LOCK_FILE: &str = "lock";
