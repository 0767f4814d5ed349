//! `daisy run`: process every block of a pipeline file, with progress, a
//! resumable journal, Daisy's summary and honest exit codes.
//!
//! # Ownership
//! This module owns what every way of running shares: the arguments, the
//! places (run id, journal, logs), the processes of the pipeline file,
//! Ctrl-C, progress and the summary. A mode ([`Mode`]) owns the transport:
//! today only [`in_process`] (bounded channels, a journal file); the
//! NATS-embedded mode goes beside it and reuses everything here.
//!
//! # Ctrl-C
//! The first SIGINT (or SIGTERM, as sent by batch systems) cancels the run:
//! no new block starts, blocks in flight finish (the journal records every
//! outcome as it arrives, so nothing needs flushing), the summary is printed
//! with unfinished tasks marked `…` and the exit code is 1; the same command
//! resumes. A second signal kills the processes of blocks in flight (their
//! whole process groups) and exits at once with code 130.

mod in_process;
mod nats;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use daisy_core::Pipeline;
use daisy_proto::RunId;
use daisy_scheduler::RunReport;
use daisy_worker::factory::{ChildEnvironment, check_processes};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::input::{BadInput, load_pipeline};
use crate::progress::{Progress, ProgressMode, follow};
use crate::summary::{RunPlaces, write_json, write_text};
use crate::telemetry::LogOutput;

const AFTER_HELP: &str = "\
Examples:
  daisy run pipeline.toml
      runs every block of every task: progress bars on stderr, then the summary on stdout
        task      blocks  completed  skipped  failed  orphaned
        ✔ square     250        250        0       0         0
        ✗ sum         16         15        0       1         0
        task 'sum': 1 block failed after 3 attempt(s) each; the first error: ...
        see daisy_logs/sum/worker_0.err

  daisy run pipeline.toml             again (after a failure, a crash or Ctrl-C): resumes;
                                      blocks that succeeded are skipped, the others run again
  daisy run pipeline.toml --fresh     starts over, discarding what earlier sessions recorded
  daisy run pipeline.toml --json      the summary as one JSON object: per task blocks,
                                      completed, skipped, failed, orphaned, first_error
  daisy run pipeline.toml --run-id v2 a separate run of the same file (its own journal)
  daisy run pipeline.toml -v          with daisy's info logs on stderr (-vv: debug)

Where things go:
  journal        <state-dir>/<run-id>/journal        .daisy/pipeline/journal for pipeline.toml
  worker logs    <log-dir>/<task>/worker_<n>.out|err  stdout (print) and stderr of your code
  Python helper  <state-dir>/python/daisy_worker.py, first on PYTHONPATH of your processes,
                 so `import daisy_worker` just works in a worker script

Your processes (worker, command and check keys) start in the pipeline file's directory:
worker = [\"python3\", \"square.py\"] in examples/x/pipeline.toml runs examples/x/square.py,
wherever you start daisy from. They get DAISY_TASK_ID, DAISY_WORKER_ID and DAISY_LOG_DIR.

Ctrl-C: no new blocks start, blocks in flight finish, the summary is printed and the same
command resumes later. A second Ctrl-C kills the blocks in flight and quits at once (exit
code 130).

Logs: -v/-vv beat RUST_LOG (e.g. RUST_LOG=daisy_scheduler=debug), default: warnings only.

Exit codes: 0 every block succeeded or was skipped; 1 some failed or were orphaned, or the
run was interrupted; 2 bad input (pipeline file, arguments, a changed pipeline layout, a
run already in progress).";

/// Run every block of a pipeline: progress, resume, summary.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// The pipeline file (TOML, one [[task]] table per task).
    file: PathBuf,
    /// Run scheduler and workers in this process over channels, recording
    /// outcomes in a journal file (no NATS at all). The default runs over an
    /// embedded nats-server instead.
    #[arg(long, conflicts_with = "nats")]
    in_process: bool,
    /// Use this NATS server instead of starting an embedded one; remote
    /// `daisy-worker --nats URL` processes may join the run.
    #[arg(long = "nats", value_name = "URL")]
    nats: Option<String>,
    /// Names the run: its journal is <state-dir>/<run-id>/. Default: the
    /// pipeline file's name without extension.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Start over: discard the outcomes earlier sessions of this run recorded.
    #[arg(long)]
    fresh: bool,
    /// Where runs keep their journals (and the Python helper).
    #[arg(long, value_name = "DIR", default_value = ".daisy")]
    state_dir: PathBuf,
    /// Where worker logs go: <log-dir>/<task>/worker_<n>.out|err.
    #[arg(long, value_name = "DIR", default_value = "daisy_logs")]
    log_dir: PathBuf,
    /// No progress bars or progress lines on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Print the final report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// How the blocks are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Scheduler and workers in this process, a journal file for resume.
    InProcess,
    /// Scheduler replica and local workers over NATS JetStream (an embedded
    /// server unless a URL was given).
    Nats,
}

impl RunArgs {
    fn mode(&self) -> Mode {
        if self.in_process { Mode::InProcess } else { Mode::Nats }
    }
}

/// A run ready to start, in either mode (one value per run: its size does
/// not matter).
#[allow(clippy::large_enum_variant)]
enum Prepared {
    InProcess(in_process::Prepared),
    Nats(nats::Prepared),
}

impl Prepared {
    /// What the start line says about earlier sessions.
    fn history(&self, fresh: bool) -> String {
        if fresh {
            return "started fresh".to_owned();
        }
        match self {
            Prepared::InProcess(prepared) => match prepared.resumed_blocks() {
                0 => "new run".to_owned(),
                resumed => {
                    format!("resuming: {resumed} blocks done in an earlier session are skipped")
                }
            },
            Prepared::Nats(prepared) if prepared.existed() => {
                "resuming: blocks its event stream records as done are skipped".to_owned()
            }
            Prepared::Nats(_) => "new run".to_owned(),
        }
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<daisy_scheduler::RunSnapshot> {
        match self {
            Prepared::InProcess(prepared) => prepared.subscribe(),
            Prepared::Nats(prepared) => prepared.subscribe(),
        }
    }

    fn record_place(&self, context: &RunContext) -> PathBuf {
        match self {
            Prepared::InProcess(_) => context.journal_shown.clone(),
            Prepared::Nats(prepared) => prepared.record_place(context),
        }
    }

    async fn run(
        self,
        context: &RunContext,
        args: &RunArgs,
        cancel: CancellationToken,
    ) -> anyhow::Result<RunReport> {
        match self {
            Prepared::InProcess(prepared) => prepared.run(context, cancel).await,
            Prepared::Nats(prepared) => {
                let spec = std::fs::read_to_string(&args.file)
                    .with_context(|| format!("reading {}", args.file.display()))?;
                prepared.run(context, spec, cancel).await
            }
        }
    }
}

/// Everything a mode needs to run a pipeline file.
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
    Ok(RunContext {
        run_dir: state_dir.join(run_id.as_str()),
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
    let state_dir = absolute(&args.state_dir, "--state-dir")?;
    let prepared = match args.mode() {
        Mode::InProcess => Prepared::InProcess(in_process::prepare(context)?),
        Mode::Nats => Prepared::Nats(nats::prepare(context, args.nats.clone(), &state_dir).await?),
    };
    let record = prepared.record_place(context);
    let mode_name = match args.mode() {
        Mode::InProcess => "in-process",
        Mode::Nats if args.nats.is_some() => "NATS",
        Mode::Nats => "embedded NATS",
    };
    let history = prepared.history(args.fresh);
    logs.note(&format!(
        "daisy: run '{}' ({}, {} blocks): record {}, {history}; worker logs in {}",
        context.run_id,
        mode_name,
        context.pipeline.num_blocks(),
        record.display(),
        context.log_dir_shown.display(),
    ));

    let tasks: Vec<(String, u64)> = context
        .pipeline
        .topological_order()
        .iter()
        .map(|&task| {
            let task = context.pipeline.task(task);
            (task.spec.id.to_string(), task.grid.num_blocks())
        })
        .collect();
    let progress = Progress::new(ProgressMode::choose(args.no_progress), &tasks, logs.clone());
    let stop_progress = CancellationToken::new();
    let progress_task = tokio::spawn(follow(progress, prepared.subscribe(), stop_progress.clone()));

    let cancel = CancellationToken::new();
    let run_over = CancellationToken::new();
    let interrupts = tokio::spawn(watch_interrupts(cancel.clone(), run_over.clone(), logs.clone()));

    let last_snapshot = prepared.subscribe();
    let result = prepared.run(context, args, cancel).await;
    run_over.cancel();
    stop_progress.cancel();
    let mut progress = progress_task.await.context("the progress display panicked")?;
    interrupts.await.context("the signal handler panicked")?;
    match result {
        Ok(report) => {
            progress.finish(&report);
            Ok((report, record))
        }
        Err(err) => {
            // Leave the bars at the last state seen, then report the error.
            progress.finish(&last_snapshot.borrow().clone());
            Err(err)
        }
    }
}

/// Cancels the run at the first SIGINT/SIGTERM and exits at the second.
pub(crate) async fn watch_interrupts(
    cancel: CancellationToken,
    run_over: CancellationToken,
    logs: LogOutput,
) {
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        tracing::warn!("cannot install the Ctrl-C handler; Ctrl-C ends the run at once");
        return;
    };
    tokio::select! {
        biased;
        () = run_over.cancelled() => return,
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    logs.note(
        "daisy: interrupted: no new blocks start; waiting for the blocks in flight (Ctrl-C again \
         to quit at once)",
    );
    cancel.cancel();
    tokio::select! {
        biased;
        () = run_over.cancelled() => {}
        _ = interrupt.recv() => quit_at_once(&logs),
        _ = terminate.recv() => quit_at_once(&logs),
    }
}

/// Exits now. Our user processes and the embedded nats-server run in
/// process groups of their own (so that the first Ctrl-C lets blocks in
/// flight finish), out of reach of the terminal's signal: they are killed
/// here, or they would run on as orphans still writing data.
fn quit_at_once(logs: &LogOutput) -> ! {
    daisy_worker::process::kill_all_children();
    nats::kill_embedded_server();
    logs.note(
        "daisy: interrupted again: quitting now; blocks in flight are not recorded and run again \
         next time",
    );
    std::process::exit(130)
}
