//! The NATS runtime of one process: [`NatsRun`] runs a scheduler replica
//! of a run and, optionally, worker slots of this process, through a NATS
//! JetStream server it connects to or starts ([`embedded`]).
//!
//! Every way of running over NATS goes through it: `daisy run` (embedded
//! server or `--nats URL`, local workers running the pipeline file's
//! processes), `daisy-scheduler` (a replica alone) and `Runner::nats(url)`
//! (local workers running Rust closures).
//!
//! ```text
//!  prepare: [start embedded server] ─► connect ─► existed? ─► [--fresh: delete the run]
//!  run:     replica ──stand by──► lead ──on leading──► local worker slots start (once)
//!              ▲                    │ lost the lease
//!              └──── stand by again ┘  (never an exit: another replica leads meanwhile)
//!           run over or cancelled ─► stop local workers ─► stop embedded server
//! ```
//!
//! # Ownership
//! This module owns the wiring of a run over NATS: the lease-lost retry
//! loop, when local workers start, the lease TTL default and the embedded
//! server's life. The replica itself (election, replay, dispatch) is
//! `daisy_scheduler::nats`; a worker slot is `daisy_worker::nats`; what
//! processes a block is the caller's [`ProcessorFactory`].
//!
//! # Why local workers wait for the lead
//! Blocks an earlier session left queued must be read by the replica's
//! replay as in flight; a local worker started before would run and record
//! them first, and the replay would count them as done in that earlier
//! session (see `daisy_worker::nats::run_nats_worker_from`).

pub mod embedded;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use daisy_core::{Pipeline, pipeline_toml};
use daisy_nats::{ConnectError, ConnectOptions, DeleteRunError, LeaseHolder, Nats, RunSettings};
use daisy_proto::RunId;
use daisy_scheduler::nats::{
    ReplicaError, ReplicaOptions, forward_snapshots, run_replica, signal_leading,
};
use daisy_scheduler::{ReplayMode, RunReport, RunSnapshot, SchedulerConfig};
use daisy_worker::factory::ProcessorFactory;
use daisy_worker::nats::{NatsWorkerOptions, run_nats_worker_from};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::embedded::{EmbeddedServer, EmbeddedServerError};
use crate::run_lock::LockHolder;

/// How long the leader lease lives without a renewal unless told
/// otherwise: a standby takes over this long after the leader died.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// The command written into the run's spec for tasks whose blocks a Rust
/// closure processes, so that a generic `daisy-worker` that joins fails
/// those blocks with this text instead of guessing.
pub const CLOSURE_PLACEHOLDER: &str =
    "<a Rust closure: start the program that defines it with daisy::Worker>";

/// Which NATS server a run uses.
#[derive(Debug, Clone)]
pub enum ServerChoice {
    /// A server that runs already (remote workers may join the run there).
    Connect(ConnectOptions),
    /// A `nats-server` child started for the run, its store and lock under
    /// `<state_dir>/nats/`, stopped at the end (see [`embedded`]).
    Embedded {
        /// The state dir (`.daisy` for `daisy run`).
        state_dir: PathBuf,
        /// The connection's name on the server (`None`: `daisy`).
        connection_name: Option<String>,
        /// Who holds the state dir's server, named to a second run refused.
        holder: LockHolder,
    },
}

/// How a [`NatsRun`] runs: [`NatsRunOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct NatsRunOptions {
    /// The server.
    pub server: ServerChoice,
    /// The run's name (its streams and buckets).
    pub run: RunId,
    /// The pipeline file's text, published for workers that join; `None`
    /// writes it from the pipeline (closure tasks get
    /// [`CLOSURE_PLACEHOLDER`] as their command).
    pub spec_toml: Option<String>,
    /// How long the leader lease lives without a renewal.
    pub lease_ttl: Duration,
    /// Who this replica is (shown by `daisy status`).
    pub holder: LeaseHolder,
    /// How recorded outcomes count: `Resume` for a new session of a run
    /// (successes are skipped, failed blocks get fresh retries),
    /// `Continue` for one replica of a long run taking over (failover).
    pub replay_mode: ReplayMode,
    /// Delete what earlier sessions recorded and start over.
    pub fresh: bool,
    /// Actor tuning.
    pub scheduler: SchedulerConfig,
}

impl NatsRunOptions {
    /// Run `run` on `server`: the spec written from the pipeline, a lease
    /// of [`DEFAULT_LEASE_TTL`] held by this process, resuming what was
    /// recorded.
    pub fn new(server: ServerChoice, run: RunId) -> Self {
        Self {
            server,
            run,
            spec_toml: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            holder: LeaseHolder::this_process(),
            replay_mode: ReplayMode::Resume,
            fresh: false,
            scheduler: SchedulerConfig::default(),
        }
    }
}

/// Why a NATS run could not start or run to its end.
#[derive(Debug, thiserror::Error)]
pub enum NatsRunError {
    /// The embedded server could not be started.
    #[error(transparent)]
    EmbeddedServer(#[from] EmbeddedServerError),
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The server's URL.
        url: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// What an earlier session recorded could not be deleted (a fresh run).
    #[error("deleting the recorded run '{run}'")]
    DeleteRun {
        /// The run.
        run: RunId,
        /// Why.
        #[source]
        source: DeleteRunError,
    },
    /// The scheduler replica stopped (NATS failed, the layout changed).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// A prepared NATS run: the server is up, connected, and progress can be
/// watched. Same shape as [`InProcessRun`](crate::in_process::InProcessRun).
pub struct NatsRun {
    pipeline: Arc<Pipeline>,
    nats: Nats,
    url: String,
    embedded: Option<EmbeddedServer>,
    options: NatsRunOptions,
    spec_toml: String,
    snapshots: watch::Sender<RunSnapshot>,
    existed: bool,
}

impl NatsRun {
    /// Starts the embedded server (if chosen), connects, and deletes the
    /// recorded run if `fresh`. Starting the embedded server blocks the
    /// calling thread until it is ready.
    ///
    /// # Errors
    /// [`NatsRunError`]: the server cannot be started or reached, or the
    /// old run cannot be deleted.
    pub async fn prepare(
        pipeline: Arc<Pipeline>,
        options: NatsRunOptions,
    ) -> Result<Self, NatsRunError> {
        let (connect, embedded) = match &options.server {
            ServerChoice::Connect(connect) => (connect.clone(), None),
            ServerChoice::Embedded { state_dir, connection_name, holder } => {
                let server = EmbeddedServer::start(state_dir, holder)?;
                let connect = ConnectOptions {
                    name: connection_name.clone(),
                    ..ConnectOptions::new(server.url())
                };
                (connect, Some(server))
            }
        };
        let url = connect.url.clone();
        let nats = daisy_nats::connect(&connect)
            .await
            .map_err(|source| NatsRunError::Connect { url: url.clone(), source })?;
        let run = &options.run;
        let existed = !options.fresh && nats.open_run(run).await.is_ok();
        if options.fresh {
            nats.delete_run(run)
                .await
                .map_err(|source| NatsRunError::DeleteRun { run: run.clone(), source })?;
        }
        let spec_toml = options.spec_toml.clone().unwrap_or_else(|| {
            let specs: Vec<_> = pipeline.tasks().iter().map(|t| t.spec.clone()).collect();
            pipeline_toml(&specs, CLOSURE_PLACEHOLDER)
        });
        let (snapshots, _) = watch::channel(RunSnapshot::default());
        Ok(Self { pipeline, nats, url, embedded, options, spec_toml, snapshots, existed })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether an earlier session recorded this run (always `false` when
    /// fresh).
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// Where the run's record lives, for people: `event stream <name> on <url>`.
    pub fn record_place(&self) -> String {
        format!(
            "event stream {} on {}",
            daisy_proto::subjects::event_stream(&self.options.run),
            self.url
        )
    }

    /// Who this replica is.
    pub fn holder(&self) -> &LeaseHolder {
        &self.options.holder
    }

    /// Live snapshots of the run, filled whenever this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        self.snapshots.subscribe()
    }

    /// Runs the scheduler replica until the run is over or `cancel`: it
    /// stands by while another replica leads, leads when it can, and goes
    /// back to standby when it loses the lease. With a `factory`, this
    /// process also runs one worker slot per `max_workers` of each task,
    /// started once the replica first leads. Then stops the local workers
    /// and the embedded server.
    ///
    /// A replica cancelled while standing by returns an interrupted report
    /// with no tasks.
    ///
    /// # Errors
    /// [`NatsRunError::Replica`] if the replica cannot go on (NATS failed,
    /// the recorded run has another layout).
    pub async fn run(
        self,
        factory: Option<Arc<ProcessorFactory>>,
        cancel: CancellationToken,
    ) -> Result<RunReport, NatsRunError> {
        let NatsRun { pipeline, nats, url, embedded, options, spec_toml, snapshots, .. } = self;
        info!(run = %options.run, url = %url, replica = %options.holder.id, "scheduler replica started");
        let leading = CancellationToken::new();
        let workers_cancel = CancellationToken::new();
        let workers = factory.map(|factory| {
            let slots = pipeline.tasks().iter().map(|t| t.spec.max_workers).sum();
            tokio::spawn(run_nats_worker_from(
                leading.clone(),
                nats.clone(),
                NatsWorkerOptions::new(options.run.clone(), slots),
                factory,
                workers_cancel.clone(),
            ))
        });
        let mut replay_mode = options.replay_mode;
        let mut retry_delay = RETRY_DELAY_MIN;
        let report = loop {
            let replica = ReplicaOptions {
                run: options.run.clone(),
                spec_toml: spec_toml.clone(),
                pipeline: pipeline.clone(),
                settings: RunSettings { lease_ttl: options.lease_ttl, ..RunSettings::default() },
                holder: options.holder.clone(),
                scheduler: options.scheduler.clone(),
                replay_mode,
                on_leading: Some(signal_leading(
                    leading.clone(),
                    Some(forward_snapshots(snapshots.clone())),
                )),
            };
            let result = run_replica(nats.clone(), replica, cancel.clone()).await;
            if leading.is_cancelled() {
                // Once this session led, taking over again continues it: its recorded
                // failures, abandonments and successes count as they did.
                replay_mode = ReplayMode::Continue;
            }
            match result {
                Ok(report) => break Ok(report),
                Err(ReplicaError::LeaseLost { .. }) => {
                    warn!("lost the scheduler lease; standing by again");
                    retry_delay = RETRY_DELAY_MIN;
                }
                // Only the user ends a run: NATS failing (a server restarting, a leader
                // election) means trying again, with a warning each time.
                Err(err @ ReplicaError::Nats { .. }) => {
                    warn!(error = %daisy_worker::factory::error_chain(&err), retry_in = ?retry_delay, "the scheduler replica could not go on; standing by again");
                    tokio::select! {
                        () = cancel.cancelled() => break Err(NatsRunError::Replica(err)),
                        () = tokio::time::sleep(retry_delay) => {}
                    }
                    retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
                }
                Err(err) => break Err(NatsRunError::Replica(err)),
            }
        };
        workers_cancel.cancel();
        if let Some(workers) = workers {
            match workers.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => warn!(error = %err, "local workers stopped with an error"),
                Err(err) => warn!(error = %err, "local workers panicked"),
            }
        }
        if let Some(server) = embedded {
            // Blocks this thread for at most the server's stop timeout, once, at the very end.
            server.stop();
        }
        report
    }
}

/// The first wait before a replica that failed on NATS stands by again.
const RETRY_DELAY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest wait between two tries of a replica that keeps failing on NATS.
const RETRY_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(10);
