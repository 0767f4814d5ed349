//! `daisy run`: process every block of a pipeline file, with progress, a
//! resumable journal, Daisy's summary and honest exit codes.
//!
//! # Ownership
//! This module is an adapter: it turns the arguments into the places (run
//! id, journal, logs) and the options of a library run, either
//! [`InProcessRun`] (`--in-process`: bounded channels, a journal file) or
//! [`NatsRun`] (an embedded nats-server, or `--nats URL`), runs it in the
//! foreground ([`crate::foreground`]: progress, Ctrl-C) and prints the
//! summary. What a run does is the library's.
//!
//! # Ctrl-C
//! The first SIGINT (or SIGTERM, as sent by batch systems) cancels the run:
//! no new block starts, blocks in flight finish (every outcome is recorded
//! as it arrives, so nothing needs flushing), the summary is printed with
//! unfinished tasks marked `…` and the exit code is 1; the same command
//! resumes. A second signal kills the processes of blocks in flight (their
//! whole process groups) and exits at once with code 130.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use daisy::in_process::{InProcessRun, RunError, RunOptions};
use daisy::journal::JournalError;
use daisy::nats::embedded::EmbeddedServerError;
use daisy::nats::{NatsRun, NatsRunError, NatsRunOptions, ServerChoice};
use daisy::run_lock::{self, DirLock, LockError, LockHolder};
use daisy_core::Pipeline;
use daisy_nats::ConnectOptions;
use daisy_proto::RunId;
use daisy_scheduler::nats::ReplicaError;
use daisy_scheduler::{RunReport, RunSnapshot, SchedulerConfig};
use daisy_worker::factory::{ChildEnvironment, check_processes, pipeline_processors};
use tokio::sync::watch;

use crate::foreground::run_in_foreground;
use crate::input::{BadInput, load_pipeline};
use crate::metrics_args::MetricsArgs;
use crate::nats_args::{Unreachable, connect_error, error_chain};
use crate::operator::{DEFAULT_STATE_DIR, RUN_LOCK_FILE};
use crate::summary::{RunPlaces, write_json, write_text};
use daisy_telemetry::LogOutput;

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy run pipeline.toml
      runs every block of every task: progress bars on stderr, then the summary on stdout
        task      blocks  completed  skipped  failed  orphaned
        ✔ square     250        250        0       0         0
        ✗ sum         16         15        0       1         0
        task 'sum': 1 block failed after 3 attempt(s) each; the first error: ...
        see daisy_logs/sum/laptop-4242/worker_0.err

  daisy run pipeline.toml             again (after a failure, a crash or Ctrl-C): resumes;
                                      blocks that succeeded are skipped, the others run again
  daisy run pipeline.toml --fresh     starts over, discarding what earlier sessions recorded
  daisy run pipeline.toml --json      the summary as one JSON object: per task blocks,
                                      completed, skipped, failed, orphaned, first_error
  daisy run pipeline.toml --run-id v2 a separate run of the same file (its own record)
  daisy run pipeline.toml -v          with daisy's info logs on stderr (-vv: debug)

Progress (stderr): a bar per task with Daisy's symbols: ⧗ not started, ▶ processing,
✔ completed (including skipped), ✗ failed, ∅ orphaned (an upstream block failed). The
summary marks a task ✔ if every block completed, ✗ if one failed, ∅ if one was orphaned.

Where things go:
  record         the run's event stream DAISY_<run-id>_EVENTS on the embedded nats-server,
                 whose store is <state-dir>/nats/ (.daisy/nats/); with --in-process, the
                 journal file <state-dir>/<run-id>/journal (.daisy/pipeline/journal for
                 pipeline.toml)
  worker logs    <log-dir>/<task>/<host>-<pid>/worker_<n>.out|err: stdout (print) and stderr
                 of your code, a directory per daisy process, headed by who wrote them
  Python helper  <state-dir>/python/daisy_worker.py, first on PYTHONPATH of your processes,
                 so `import daisy_worker` just works in a worker script

Your processes (worker, command and check keys) start in the pipeline file's directory:
worker = [\"python3\", \"square.py\"] in examples/x/pipeline.toml runs examples/x/square.py,
wherever you start daisy from. They get DAISY_TASK_ID, DAISY_WORKER_ID and DAISY_LOG_DIR.

Ctrl-C: no new blocks start, blocks in flight finish, the summary is printed and the same
command resumes later. A second Ctrl-C kills the blocks in flight and quits at once (exit
code 130).

Logs: -v/-vv beat RUST_LOG (e.g. RUST_LOG=daisy_scheduler=debug), default: warnings only.

Server: --in-process uses none; --nats URL, else $NATS_URL, else an embedded nats-server with
its store in <state-dir>/nats (--embedded forces it). The first line names the server used.

One daisy run per run (<state-dir>/<run-id>): a second one, in any mode, is refused with the
pid, mode and start time of the first.

",
    exit_codes_help!()
);

/// Run every block of a pipeline: progress, resume, summary.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// The pipeline file (TOML, one [[task]] table per task).
    file: PathBuf,
    /// Run scheduler and workers in this process over channels, recording
    /// outcomes in a journal file (no NATS at all). The default runs over an
    /// embedded nats-server instead.
    #[arg(long, conflicts_with_all = ["nats", "embedded"])]
    in_process: bool,
    /// Use this NATS server instead of starting an embedded one; remote
    /// `daisy-worker --nats URL` processes may join the run [default:
    /// $NATS_URL when set, else the embedded server]
    #[arg(long = "nats", value_name = "URL")]
    nats: Option<String>,
    /// Start the embedded nats-server (store under <state-dir>/nats) even
    /// when NATS_URL is set.
    #[arg(long, conflicts_with = "nats")]
    embedded: bool,
    /// Names the run: its streams on NATS, or its journal <state-dir>/<run-id>/
    /// with --in-process. Default: the pipeline file's name without extension.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Start over: discard the outcomes earlier sessions of this run recorded.
    #[arg(long)]
    fresh: bool,
    /// Where runs keep their state: the embedded nats-server's store, the
    /// --in-process journals and the Python helper.
    #[arg(long, value_name = "DIR", default_value = ".daisy")]
    state_dir: PathBuf,
    /// Where worker logs go: <log-dir>/<task>/<host>-<pid>/worker_<n>.out|err.
    #[arg(long, value_name = "DIR", default_value = "daisy_logs")]
    log_dir: PathBuf,
    /// No progress bars or progress lines on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Print the final report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// A block running K times its task's median block time (and at least a second) is a
    /// straggler: logged once, counted, listed by `daisy status`. 0 or "off" disables it.
    #[arg(long, value_name = "K", default_value = "5", value_parser = parse_straggler_factor)]
    straggler_factor: StragglerFactor,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// `--straggler-factor`: `None` when off.
#[derive(Debug, Clone, Copy)]
pub struct StragglerFactor(pub Option<f64>);

/// Parses `--straggler-factor`: a positive number, or 0 / `off` to disable detection.
///
/// # Errors
/// Anything else, with what to write instead.
pub fn parse_straggler_factor(text: &str) -> Result<StragglerFactor, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(StragglerFactor(None));
    }
    match text.parse::<f64>() {
        Ok(0.0) => Ok(StragglerFactor(None)),
        Ok(factor) if factor.is_finite() && factor > 0.0 => Ok(StragglerFactor(Some(factor))),
        _ => Err(format!(
            "{text:?} is not a factor: give a positive number such as 5 (a block running 5x its \
             task's median is a straggler), or 0 / off to turn straggler detection off"
        )),
    }
}

/// A run ready to start, in either mode (one value per run: its size does
/// not matter).
#[allow(clippy::large_enum_variant)]
enum Prepared {
    InProcess(InProcessRun),
    Nats(NatsRun),
}

impl Prepared {
    /// Opens the journal, or starts the embedded server (unless given a
    /// URL) and connects: a locked run or a changed layout is refused here,
    /// before anything starts.
    async fn new(args: &RunArgs, context: &RunContext) -> anyhow::Result<Self> {
        if args.in_process {
            let options = RunOptions {
                run_dir: Some(context.run_dir.clone()),
                fresh: context.fresh,
                scheduler: SchedulerConfig {
                    straggler_factor: args.straggler_factor.0,
                    ..SchedulerConfig::default()
                },
            };
            let run = InProcessRun::prepare(context.pipeline.clone(), options)
                .map_err(in_process_error)?;
            return Ok(Prepared::InProcess(run));
        }
        let server = match &context.server {
            Server::InProcess => unreachable!("returned above"),
            Server::Url { url, .. } => ServerChoice::Connect(ConnectOptions {
                name: Some("daisy run".into()),
                ..ConnectOptions::new(url.clone())
            }),
            Server::Embedded => ServerChoice::Embedded {
                state_dir: absolute(&args.state_dir, "--state-dir")?,
                connection_name: Some("daisy run".into()),
                holder: context.holder.clone(),
            },
        };
        let spec_toml = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        let options = NatsRunOptions {
            spec_toml: Some(spec_toml),
            fresh: context.fresh,
            scheduler: SchedulerConfig {
                straggler_factor: args.straggler_factor.0,
                ..SchedulerConfig::default()
            },
            ..NatsRunOptions::new(server, context.run_id.clone())
        };
        let run = NatsRun::prepare(context.pipeline.clone(), options)
            .await
            .map_err(|err| run_nats_error(err, context))?;
        Ok(Prepared::Nats(run))
    }

    /// How the start line names the server (or its absence).
    fn server_description(&self, context: &RunContext) -> String {
        match (self, &context.server) {
            (Prepared::InProcess(_), _) => "in-process, no NATS".to_owned(),
            (Prepared::Nats(run), Server::Url { from_env: true, .. }) => format!(
                "on NATS at {} from NATS_URL (--embedded: the embedded server instead)",
                run.url()
            ),
            (Prepared::Nats(run), Server::Url { from_env: false, .. }) => {
                format!("on NATS at {}", run.url())
            }
            (Prepared::Nats(run), _) => format!(
                "on the embedded NATS server at {} (store {})",
                run.url(),
                context.state_dir_shown.join("nats").display()
            ),
        }
    }

    /// What the start line says about earlier sessions.
    fn history(&self, fresh: bool) -> String {
        if fresh {
            return "started fresh".to_owned();
        }
        match self {
            Prepared::InProcess(run) => match run.resumed_blocks() {
                0 => "new run".to_owned(),
                resumed => {
                    format!("resuming: {resumed} blocks done in an earlier session are skipped")
                }
            },
            Prepared::Nats(run) if run.existed() => {
                "resuming: blocks its event stream records as done are skipped".to_owned()
            }
            Prepared::Nats(_) => "new run".to_owned(),
        }
    }

    fn subscribe(&self) -> watch::Receiver<RunSnapshot> {
        match self {
            Prepared::InProcess(run) => run.subscribe(),
            Prepared::Nats(run) => run.subscribe(),
        }
    }

    /// Where the run's record lives, for the start line and the summary.
    fn record_place(&self, context: &RunContext) -> PathBuf {
        match self {
            Prepared::InProcess(_) => context.journal_shown.clone(),
            Prepared::Nats(run) => PathBuf::from(run.record_place()),
        }
    }

    /// Runs every block with the pipeline file's processes until done or
    /// cancelled.
    async fn run(
        self,
        context: &RunContext,
        cancel: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<RunReport> {
        let factory = pipeline_processors(context.children.clone());
        match self {
            Prepared::InProcess(run) => Ok(run.run(&*factory, cancel).await?),
            Prepared::Nats(run) => {
                run.run(Some(factory), cancel).await.map_err(|err| run_nats_error(err, context))
            }
        }
    }
}

/// An in-process run's error, as bad input (exit code 2) where the user
/// can fix it.
fn in_process_error(err: RunError) -> anyhow::Error {
    match err {
        RunError::Journal(
            err @ (JournalError::Locked { .. } | JournalError::LayoutChanged { .. }),
        ) => anyhow::Error::new(BadInput(err.to_string())),
        RunError::Journal(err @ JournalError::Io { .. }) => anyhow::Error::new(BadInput(format!(
            "{err}; check that --state-dir is a writable directory"
        ))),
        other => anyhow::Error::new(other),
    }
}

/// A NATS run's error in the words of the flags and in the exit-code
/// classes: bad input (2) where the user can fix it (a state dir in use or
/// not writable, a changed layout), unreachable (3) for a server that cannot
/// be reached or started.
pub(crate) fn nats_run_error(err: NatsRunError) -> anyhow::Error {
    match err {
        NatsRunError::EmbeddedServer(EmbeddedServerError::InUse { dir, holder }) => {
            let holder =
                holder.map_or_else(|| "another daisy process".to_owned(), |h| h.to_string());
            anyhow::Error::new(BadInput(format!(
                "the embedded NATS server in {} is in use by another daisy run: {holder}; wait \
                 for it to finish, or give this run another --state-dir",
                dir.display()
            )))
        }
        NatsRunError::EmbeddedServer(
            err @ (EmbeddedServerError::CreateDir { .. } | EmbeddedServerError::Lock { .. }),
        ) => anyhow::Error::new(BadInput(format!(
            "{}; check that --state-dir is a writable directory",
            error_chain(&err)
        ))),
        NatsRunError::EmbeddedServer(err) => anyhow::Error::new(Unreachable(format!(
            "the embedded NATS server: {}",
            error_chain(&err)
        ))),
        NatsRunError::Connect { url, source } => connect_error(&url, source),
        NatsRunError::DeleteRun { run, source } => anyhow::Error::new(source)
            .context(format!("deleting the recorded run '{run}' (--fresh)")),
        NatsRunError::Replica(err @ ReplicaError::LayoutChanged { .. }) => {
            anyhow::Error::new(BadInput(err.to_string()))
        }
        other => anyhow::Error::new(other),
    }
}

/// `daisy run`'s NATS errors: [`nats_run_error`], with the layout-changed fix
/// naming this very command.
fn run_nats_error(err: NatsRunError, context: &RunContext) -> anyhow::Error {
    match err {
        NatsRunError::Replica(ReplicaError::LayoutChanged { run }) => {
            anyhow::Error::new(BadInput(format!(
                "the pipeline's block layout changed since run '{run}' was recorded: its recorded \
                 blocks would map onto other blocks. Start over with `{} --fresh` (discards what \
                 it recorded), or give the changed pipeline another --run-id",
                context.command
            )))
        }
        NatsRunError::Connect { url, source } => {
            let err = connect_error(&url, source);
            match context.server {
                Server::Url { from_env: true, .. } => err.context(
                    "the server comes from NATS_URL (--embedded: start the embedded one instead)",
                ),
                _ => err,
            }
        }
        other => nats_run_error(other),
    }
}

/// Which server a run uses.
pub(crate) enum Server {
    /// None: `--in-process`.
    InProcess,
    /// An embedded nats-server under `<state-dir>/nats`.
    Embedded,
    /// An existing server.
    Url {
        /// Its URL.
        url: String,
        /// Taken from `NATS_URL` rather than `--nats`.
        from_env: bool,
    },
}

impl Server {
    /// `--in-process`, `--nats URL`, `--embedded`, then `NATS_URL`, else embedded.
    fn of(args: &RunArgs) -> Server {
        if args.in_process {
            return Server::InProcess;
        }
        if let Some(url) = &args.nats {
            return Server::Url { url: url.clone(), from_env: false };
        }
        if args.embedded {
            return Server::Embedded;
        }
        match std::env::var("NATS_URL") {
            Ok(url) if !url.trim().is_empty() => {
                Server::Url { url: url.trim().to_owned(), from_env: true }
            }
            _ => Server::Embedded,
        }
    }

    /// The mode, as the lock note names it to a run refused.
    fn mode(&self) -> String {
        match self {
            Server::InProcess => "in-process".to_owned(),
            Server::Embedded => "embedded NATS".to_owned(),
            Server::Url { url, .. } => format!("NATS at {url}"),
        }
    }
}

/// The command that runs this run again, as the user would type it: the file
/// as given, and the flags that choose the run, its place and its server.
fn resume_command(args: &RunArgs, server: &Server) -> String {
    let mut command = format!("daisy run {}", args.file.display());
    match server {
        Server::InProcess => command.push_str(" --in-process"),
        Server::Url { url, from_env: false } => command.push_str(&format!(" --nats {url}")),
        Server::Embedded if args.embedded => command.push_str(" --embedded"),
        _ => {}
    }
    if let Some(id) = &args.run_id {
        command.push_str(&format!(" --run-id {id}"));
    }
    if args.state_dir != Path::new(DEFAULT_STATE_DIR) {
        command.push_str(&format!(" --state-dir {}", args.state_dir.display()));
    }
    command
}

/// Takes the run directory's lock for the whole run: two runs of one
/// pipeline in one directory would process every block twice and write to
/// the same worker logs, whatever their modes.
fn lock_run_dir(context: &RunContext, args: &RunArgs) -> Result<DirLock, BadInput> {
    let path = context.run_dir.join(RUN_LOCK_FILE);
    run_lock::lock(&path, &context.holder).map_err(|err| match err {
        LockError::Held { holder, .. } => {
            let (holder, stop) = match holder {
                Some(holder) => {
                    let stop = format!("Ctrl-C in its terminal, or kill -INT {}", holder.pid);
                    (holder.to_string(), stop)
                }
                None => ("another process".to_owned(), "Ctrl-C in its terminal".to_owned()),
            };
            BadInput(format!(
                "run '{}' ({}) is in use by another daisy run: {holder}. Two runs would process \
                 the same blocks twice: wait for it to finish, stop it ({stop}), or give this \
                 run another --run-id",
                context.run_id,
                args.state_dir.join(context.run_id.as_str()).display()
            ))
        }
        err @ LockError::Io { .. } => BadInput(format!(
            "{}; check that --state-dir is a writable directory",
            error_chain(&err)
        )),
    })
}

/// Everything a run needs from the arguments.
pub(crate) struct RunContext {
    pub pipeline: Arc<Pipeline>,
    /// Where the pipeline's processes start, log and find the Python helper.
    pub children: ChildEnvironment,
    pub run_id: RunId,
    /// `<state-dir>/<run-id>`, absolute.
    pub run_dir: PathBuf,
    pub fresh: bool,
    /// The journal file as the user would write it.
    pub journal_shown: PathBuf,
    /// The log dir as the user wrote it.
    pub log_dir_shown: PathBuf,
    /// The state dir as the user wrote it.
    pub state_dir_shown: PathBuf,
    /// The server the run uses.
    pub server: Server,
    /// This run, as its locks name it to a run refused.
    pub holder: LockHolder,
    /// The command that runs this run again (for the fixes messages name).
    pub command: String,
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf, BadInput> {
    std::path::absolute(path).map_err(|err| BadInput(format!("{what} {}: {err}", path.display())))
}

/// Reads the pipeline and settles where everything goes.
fn context(args: &RunArgs) -> anyhow::Result<RunContext> {
    let pipeline = load_pipeline(&args.file)?;
    let file = absolute(&args.file, "pipeline file")?;
    let pipeline_dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let run_id = match &args.run_id {
        Some(id) => RunId::new(id.clone()).ok_or_else(|| {
            BadInput(format!(
                "--run-id {id:?}: use 1 to 64 letters, digits, '_' or '-' (e.g. --run-id smooth-v2)"
            ))
        })?,
        None => {
            let stem = args.file.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
            RunId::sanitized(&stem)
        }
    };
    check_processes(&pipeline, &pipeline_dir).map_err(|err| {
        BadInput(format!("{}: {:#}", args.file.display(), anyhow::Error::new(err)))
    })?;
    let state_dir = absolute(&args.state_dir, "--state-dir")?;
    let log_dir = absolute(&args.log_dir, "--log-dir")?;
    let children = ChildEnvironment::new(log_dir, pipeline_dir)
        .with_python_helper(&state_dir)
        .map_err(|err| {
            BadInput(format!(
                "cannot write the Python helper into --state-dir {}: {err}; give a writable \
                     directory with --state-dir",
                args.state_dir.display()
            ))
        })?;
    let server = Server::of(args);
    let command = resume_command(args, &server);
    let holder = LockHolder {
        pipeline_file: Some(file.clone()),
        ..LockHolder::this_process(command.clone(), server.mode())
    };
    Ok(RunContext {
        run_dir: state_dir.join(run_id.as_str()),
        state_dir_shown: args.state_dir.clone(),
        server,
        holder,
        command,
        journal_shown: args.state_dir.join(run_id.as_str()).join(daisy::journal::JOURNAL_FILE),
        log_dir_shown: args.log_dir.clone(),
        pipeline,
        children,
        run_id,
        fresh: args.fresh,
    })
}

/// Runs `daisy run`.
pub fn run(args: RunArgs, logs: LogOutput) -> anyhow::Result<ExitCode> {
    let context = context(&args)?;
    // Held until the summary is written: released by the OS if this process dies.
    let _run_lock = lock_run_dir(&context, &args)?;
    args.metrics.serve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (report, record) = runtime.block_on(run_async(&args, &context, logs))?;
    let places = RunPlaces {
        run_id: context.run_id.as_str(),
        journal: &record,
        log_dir: &context.log_dir_shown,
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        write_json(&mut stdout, &report, &places)
    } else {
        write_text(&mut stdout, &report, &context.pipeline, &places)
    }
    .context("writing the summary")?;
    stdout.flush().context("writing the summary")?;
    Ok(if report.all_succeeded() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn run_async(
    args: &RunArgs,
    context: &RunContext,
    logs: LogOutput,
) -> anyhow::Result<(RunReport, PathBuf)> {
    let prepared = Prepared::new(args, context).await?;
    let record = prepared.record_place(context);
    logs.note(&format!(
        "daisy: run '{}' {}, {} blocks: record {}, {}; worker logs in {}",
        context.run_id,
        prepared.server_description(context),
        context.pipeline.num_blocks(),
        record.display(),
        prepared.history(args.fresh),
        context.log_dir_shown.display(),
    ));
    let snapshots = prepared.subscribe();
    let report =
        run_in_foreground(&context.pipeline, snapshots, args.no_progress, &logs, |cancel| {
            prepared.run(context, cancel)
        })
        .await?;
    Ok((report, record))
}
