//! `daisy-worker`: processes blocks of runs over NATS JetStream, anywhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use daisy_proto::RunId;
use daisy_worker::factory::{ChildEnvironment, pipeline_processors};
use daisy_worker::nats::{NatsWorkerOptions, run_nats_worker};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::input::BadInput;
use crate::metrics_args::MetricsArgs;
use crate::nats_args::NatsArgs;

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy-worker --nats nats://nats-host:4222 --run pipeline
      learns the pipeline of run 'pipeline' from NATS, processes its blocks with the
      pipeline's worker/command/check processes, exits when the run is finished
  daisy-worker --nats nats://nats-host:4222 --run pipeline --task smooth --slots 8
      only blocks of task 'smooth', 8 at a time
  daisy-worker --nats nats://nats-host:4222 --forever
      serves whichever run is unfinished, one after the other, and keeps waiting

User processes start in --workdir (default: the current directory), so relative
script paths of the pipeline file must exist there. Logs:
<log-dir>/<task>/<host>-<pid>/worker_<n>.out|err, a directory per daisy-worker process.

Ctrl-C (or SIGTERM) stops taking blocks, finishes and records the blocks in flight, then
exits 0. A second one kills the block processes and exits 130 at once; their blocks are
redelivered to other workers after the AckWait.

",
    exit_codes_help!(),
    "
For daisy-worker: 0 the run finished or the worker was stopped (it does not judge blocks)."
);

/// Processes blocks of daisy-rs runs over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "daisy-worker", version, after_help = AFTER_HELP)]
struct WorkerCli {
    #[command(flatten)]
    nats: NatsArgs,
    /// The run to serve. Default: an unfinished run on the server (waiting
    /// for one if there is none yet).
    #[arg(long, value_name = "ID")]
    run: Option<String>,
    /// Only blocks of this task (repeatable). Default: every task.
    #[arg(long = "task", value_name = "TASK")]
    tasks: Vec<String>,
    /// How many blocks to process at once. Default: the number of cores.
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Keep serving runs after the current one finished.
    #[arg(long)]
    forever: bool,
    /// Where user processes start.
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Where worker logs go: <log-dir>/<task>/<host>-<pid>/worker_<n>.out|err.
    #[arg(long, value_name = "DIR", default_value = "daisy_logs")]
    log_dir: PathBuf,
    /// Where the Python helper is installed (and the embedded server's URL
    /// is looked up when --nats is not given).
    #[arg(long, value_name = "DIR", default_value = ".daisy")]
    state_dir: PathBuf,
    /// More log lines on stderr: -v info, -vv debug.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The `daisy-worker` binary.
pub fn worker_main() -> ExitCode {
    let cli = WorkerCli::parse();
    let telemetry = match cli.telemetry.init("daisy-worker", cli.verbose.max(1)) {
        Ok(telemetry) => telemetry,
        Err(err) => return crate::exit_code(Err(err.into())),
    };
    let result = run(cli);
    // Flushes the spans still queued before the process ends.
    drop(telemetry);
    crate::exit_code(result)
}

fn run(cli: WorkerCli) -> anyhow::Result<ExitCode> {
    let url = cli.nats.resolve_url(&cli.state_dir, "daisy-worker")?;
    let workdir = std::path::absolute(cli.workdir.clone().unwrap_or_else(|| PathBuf::from(".")))
        .map_err(|err| BadInput(format!("--workdir: {err}")))?;
    let log_dir =
        std::path::absolute(&cli.log_dir).map_err(|err| BadInput(format!("--log-dir: {err}")))?;
    let state_dir = std::path::absolute(&cli.state_dir)
        .map_err(|err| BadInput(format!("--state-dir: {err}")))?;
    let children =
        ChildEnvironment::new(log_dir, workdir).with_python_helper(&state_dir).map_err(|err| {
            BadInput(format!("cannot write the Python helper into {}: {err}", state_dir.display()))
        })?;
    cli.metrics.serve()?;
    let slots = cli
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let nats = cli.nats.connect(url.clone(), "daisy-worker").await?;
        let cancel = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(cancel.clone()));
        loop {
            let Some(run) = choose_run(&nats, cli.run.as_deref(), &cancel).await? else { break };
            let factory = pipeline_processors(children.clone());
            let options = NatsWorkerOptions {
                tasks: cli.tasks.clone(),
                ..NatsWorkerOptions::new(run.clone(), slots)
            };
            info!(run = %run, slots, url = %url, "serving run");
            run_nats_worker(nats.clone(), options, factory, cancel.clone()).await?;
            if !cli.forever || cancel.is_cancelled() {
                break;
            }
        }
        signals.abort();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The run to serve: the given one, or an unfinished one on the server.
async fn choose_run(
    nats: &daisy_nats::Nats,
    wanted: Option<&str>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<RunId>> {
    if let Some(id) = wanted {
        return Ok(Some(
            RunId::new(id).ok_or_else(|| BadInput(format!("--run {id:?} is not a run id")))?,
        ));
    }
    let mut announced = false;
    loop {
        for run in nats.list_runs().await.context("listing runs")? {
            let Ok(streams) = nats.open_run(&run).await else { continue };
            let finished = matches!(
                streams.get_status().await,
                Ok(Some(status)) if status.finished || status.cancelled
            );
            if !finished && matches!(streams.get_spec().await, Ok(Some(_))) {
                return Ok(Some(run));
            }
        }
        if !announced {
            info!("no unfinished run yet: waiting for a scheduler");
            announced = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) =
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    info!("stopping: finishing the blocks in flight, returning the rest (again to quit at once)");
    cancel.cancel();
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    // The block processes run in their own process groups: the signal did not reach them.
    daisy_worker::process::kill_all_children();
    daisy_telemetry::flush_before_exit();
    eprintln!(
        "daisy-worker: interrupted again: quitting now; its blocks in flight are redelivered \
         to other workers"
    );
    std::process::exit(130)
}
