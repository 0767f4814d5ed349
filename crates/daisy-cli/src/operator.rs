//! What the operator commands (`daisy status`, `runs`, `retry`, `cancel`) share:
//! connecting, choosing the run, and reading a run's state from NATS.
//!
//! These commands only read the run's KV status, lease and liveness keys and
//! publish operator events; scheduling stays with the leader.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use daisy_nats::{Nats, RunStatus, RunStreams};
use daisy_proto::RunId;
use serde::Serialize;

use crate::input::BadInput;
use crate::nats_args::NatsArgs;

/// Where the run's NATS server is: the options every operator command takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Where `daisy run` keeps its embedded server's URL (nats/url), used
    /// when neither --nats nor NATS_URL is given.
    #[arg(long, value_name = "DIR", default_value = ".daisy")]
    pub state_dir: PathBuf,
}

/// A connection for one operator command.
pub struct Session {
    /// The connection.
    pub nats: Nats,
    /// The server's URL, for messages.
    pub url: String,
}

/// A single-threaded runtime: operator commands do a few requests in turn.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl ServerArgs {
    /// Resolves the URL (flag, `NATS_URL`, embedded server) and connects.
    pub async fn connect(&self, name: &str) -> anyhow::Result<Session> {
        let url = self.nats.resolve_url(&self.state_dir)?;
        let nats = self.nats.connect(url.clone(), name).await?;
        Ok(Session { nats, url })
    }
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

/// How to start a scheduler for `run` again, for the next-step hints.
pub fn restart_hint(url: &str, run: &RunId) -> String {
    format!(
        "  daisy-scheduler --nats {url} PIPELINE.toml --run-id {run}   (plus daisy-worker --nats \
         {url} --run {run})\n  or: daisy run PIPELINE.toml --nats {url} --run-id {run}"
    )
}
