//! `daisy run` over NATS JetStream: with an embedded `nats-server` child
//! (the default; its store under `<state-dir>/nats/`, so the same command
//! resumes from the stream) or an existing server (`--nats URL`, where
//! remote `daisy-worker`s may join). A scheduler replica and local worker
//! slots run in this process, both through JetStream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use daisy_nats::server::{NatsServer, ServerOptions};
use daisy_nats::{LeaseHolder, Nats, RunSettings};
use daisy_scheduler::nats::{ReplicaError, ReplicaOptions, run_replica, signal_leading};
use daisy_scheduler::{RunReport, RunSnapshot, SchedulerConfig};
use daisy_worker::factory::pipeline_processors;
use daisy_worker::nats::{NatsWorkerOptions, run_nats_worker_from};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::RunContext;
use crate::input::BadInput;
use crate::nats_args::EMBEDDED_URL_FILE;

/// Where the run's NATS server is.
pub(crate) enum Server {
    /// A child `nats-server`, stopped at the end.
    Embedded(Box<NatsServer>),
    /// Someone else's server.
    External,
}

/// A NATS run that is connected and ready.
pub(crate) struct Prepared {
    nats: Nats,
    url: String,
    server: Server,
    snapshots: watch::Sender<RunSnapshot>,
    /// Whether an earlier session recorded this run.
    existed: bool,
    /// Held while this run uses the embedded server's store.
    _lock: Option<std::fs::File>,
}

/// Starts the embedded server (unless given a URL) and connects.
pub(super) async fn prepare(
    context: &RunContext,
    url: Option<String>,
    state_dir: &std::path::Path,
) -> anyhow::Result<Prepared> {
    let mut lock = None;
    let (url, server) = match url {
        Some(url) => (url, Server::External),
        None => {
            let nats_dir = state_dir.join("nats");
            std::fs::create_dir_all(&nats_dir)
                .map_err(|err| BadInput(format!("cannot create {}: {err}", nats_dir.display())))?;
            lock = Some(lock_embedded_server(&nats_dir)?);
            stop_orphaned_server(&nats_dir);
            let mut options = ServerOptions::new(nats_dir.join("store"));
            options.log_file = Some(nats_dir.join("server.log"));
            options.ports_file_dir = Some(nats_dir.clone());
            // Ctrl-C in the terminal must not stop the server before the
            // scheduler has drained.
            options.own_process_group = true;
            let server =
                NatsServer::start(&options).context("starting the embedded nats-server")?;
            let url = server.url().to_owned();
            if let Some(pid) = server.pid() {
                let _ = std::fs::write(nats_dir.join(PID_FILE), pid.to_string());
                let _ = EMBEDDED_SERVER_PID.set(pid);
            }
            std::fs::write(state_dir.join(EMBEDDED_URL_FILE), &url).with_context(|| {
                format!("writing {}", state_dir.join(EMBEDDED_URL_FILE).display())
            })?;
            (url, Server::Embedded(Box::new(server)))
        }
    };
    let nats = daisy_nats::connect(&daisy_nats::ConnectOptions {
        name: Some("daisy run".into()),
        ..daisy_nats::ConnectOptions::new(url.clone())
    })
    .await
    .with_context(|| format!("connecting to NATS at {url}"))?;
    let existed = !context.fresh && nats.open_run(&context.run_id).await.is_ok();
    if context.fresh {
        nats.delete_run(&context.run_id)
            .await
            .with_context(|| format!("deleting the recorded run '{}' (--fresh)", context.run_id))?;
    }
    let (snapshots, _) = watch::channel(RunSnapshot::default());
    Ok(Prepared { nats, url, server, snapshots, existed, _lock: lock })
}

impl Prepared {
    /// Where the run's record lives, for the start line and the summary.
    pub(super) fn record_place(&self, context: &RunContext) -> PathBuf {
        PathBuf::from(format!(
            "event stream {} on {}",
            daisy_proto::subjects::event_stream(&context.run_id),
            self.url
        ))
    }

    /// Whether an earlier session recorded this run.
    pub(super) fn existed(&self) -> bool {
        self.existed
    }

    /// Live snapshots (filled once the local replica leads).
    pub(super) fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        self.snapshots.subscribe()
    }

    /// Runs the scheduler replica and local workers until the run ends.
    pub(super) async fn run(
        self,
        context: &RunContext,
        spec_toml: String,
        cancel: CancellationToken,
    ) -> anyhow::Result<RunReport> {
        let Prepared { nats, server, snapshots, .. } = self;
        // The local workers start once the replica leads (see `run_nats_worker_from`).
        let leading = CancellationToken::new();
        let make_replica = || {
            let forward = daisy_scheduler::nats::forward_snapshots(snapshots.clone());
            ReplicaOptions {
                run: context.run_id.clone(),
                spec_toml: spec_toml.clone(),
                pipeline: context.pipeline.clone(),
                settings: RunSettings {
                    lease_ttl: Duration::from_secs(5),
                    ..RunSettings::default()
                },
                holder: LeaseHolder::this_process(),
                scheduler: SchedulerConfig::default(),
                replay_mode: daisy_scheduler::ReplayMode::Resume,
                on_leading: Some(signal_leading(leading.clone(), Some(forward))),
            }
        };
        let slots: u32 = context.pipeline.tasks().iter().map(|t| t.spec.max_workers).sum();
        let worker_options = NatsWorkerOptions::new(context.run_id.clone(), slots);
        let factory = pipeline_processors(context.children.clone());
        let workers_cancel = CancellationToken::new();
        let workers = tokio::spawn(run_nats_worker_from(
            leading.clone(),
            nats.clone(),
            worker_options,
            factory,
            workers_cancel.clone(),
        ));
        let report = loop {
            match run_replica(nats.clone(), make_replica(), cancel.clone()).await {
                Ok(report) => break Ok(report),
                Err(ReplicaError::LeaseLost { .. }) => {
                    warn!("lost the scheduler lease; standing by again");
                }
                Err(err @ ReplicaError::LayoutChanged { .. }) => {
                    break Err(anyhow::Error::new(BadInput(err.to_string())));
                }
                Err(err) => break Err(anyhow::Error::new(err)),
            }
        };
        workers_cancel.cancel();
        match workers.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %err, "local workers stopped with an error"),
            Err(err) => warn!(error = %err, "local workers panicked"),
        }
        if let Server::Embedded(mut server) = server
            && let Err(err) = server.stop()
        {
            warn!(error = %err, "could not stop the embedded nats-server");
        }
        report
    }
}

/// The embedded server's pid, to stop it if a killed run left it behind.
const PID_FILE: &str = "pid";

/// The embedded server of this process, for [`kill_embedded_server`].
static EMBEDDED_SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Kills this process's embedded nats-server at once (a second Ctrl-C):
/// it runs in its own process group, so it would outlive us otherwise.
pub(crate) fn kill_embedded_server() {
    if let Some(pid) = EMBEDDED_SERVER_PID.get() {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// Takes the embedded server's lock: one `daisy run` per state dir.
fn lock_embedded_server(nats_dir: &std::path::Path) -> Result<std::fs::File, BadInput> {
    let path = nats_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| BadInput(format!("cannot open {}: {err}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(BadInput(format!(
            "the embedded NATS server in {} is in use by another daisy run; wait for it to \
             finish, or give this run another --state-dir",
            nats_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(BadInput(format!("cannot lock {}: {err}", path.display())))
        }
    }
}

/// Stops a nats-server that a killed `daisy run` left running on this
/// store (we hold the lock, so no live run uses it).
fn stop_orphaned_server(nats_dir: &std::path::Path) {
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
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_nats(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !is_nats(pid) {
            return;
        }
    }
}
