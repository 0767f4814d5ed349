//! `daisy-scheduler`: one scheduler replica of a run over NATS JetStream.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use daisy_nats::{LeaseHolder, RunSettings};
use daisy_proto::RunId;
use daisy_scheduler::nats::{ReplicaError, ReplicaOptions, run_replica};
use daisy_scheduler::{RunSnapshot, SchedulerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::input::{BadInput, load_pipeline};
use crate::nats_args::NatsArgs;
use crate::progress::{Progress, ProgressMode, follow};
use crate::summary::{RunPlaces, write_json, write_text};

const AFTER_HELP: &str = "\
Examples:
  daisy-scheduler --nats nats://nats-host:4222 pipeline.toml
      publishes the pipeline, takes the leader lease and dispatches blocks to the
      daisy-workers of the run; prints the summary at the end
  daisy-scheduler --nats nats://nats-host:4222 pipeline.toml     (on a second machine)
      stands by and takes over within seconds if the leader dies; no block that
      succeeded runs again, no block is dispatched twice

The run id (default: the pipeline file's name) names the run's streams; start
daisy-worker --nats URL --run <run-id> anywhere to process its blocks.

Exit codes: 0 every block succeeded or was skipped; 1 some failed or were orphaned, or
the run was interrupted; 2 bad input.";

/// One scheduler replica of a daisy-rs run over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "daisy-scheduler", version, about, after_help = AFTER_HELP)]
struct SchedulerCli {
    /// The pipeline file (TOML).
    file: PathBuf,
    #[command(flatten)]
    nats: NatsArgs,
    /// The run's name (its streams and buckets). Default: the file's name.
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// How long the leader lease lives without a renewal: a standby takes
    /// over this long after the leader died.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Where the embedded server's URL is looked up when --nats is not given.
    #[arg(long, value_name = "DIR", default_value = ".daisy")]
    state_dir: PathBuf,
    /// No progress bars or lines on stderr.
    #[arg(long)]
    no_progress: bool,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// More log lines on stderr: -v info, -vv debug.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The `daisy-scheduler` binary.
pub fn scheduler_main() -> ExitCode {
    let cli = SchedulerCli::parse();
    let logs = crate::telemetry::init(cli.verbose.max(1));
    crate::exit_code(run(cli, logs))
}

fn run(cli: SchedulerCli, logs: crate::telemetry::LogOutput) -> anyhow::Result<ExitCode> {
    let pipeline = load_pipeline(&cli.file)?;
    let spec_toml = std::fs::read_to_string(&cli.file)
        .map_err(|err| BadInput(format!("cannot read {}: {err}", cli.file.display())))?;
    let run_id = match &cli.run_id {
        Some(id) => RunId::new(id.clone())
            .ok_or_else(|| BadInput(format!("--run-id {id:?}: use letters, digits, '_' or '-'")))?,
        None => {
            RunId::sanitized(&cli.file.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default())
        }
    };
    let url = cli.nats.resolve_url(&cli.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let nats = cli.nats.connect(url.clone(), "daisy-scheduler").await?;
        let holder = LeaseHolder::this_process();
        let cancel = CancellationToken::new();
        let run_over = CancellationToken::new();
        let interrupts = tokio::spawn(crate::commands::run::watch_interrupts(
            cancel.clone(),
            run_over.clone(),
            logs.clone(),
        ));
        let tasks: Vec<(String, u64)> = pipeline
            .topological_order()
            .iter()
            .map(|&t| (pipeline.task(t).spec.id.to_string(), pipeline.task(t).grid.num_blocks()))
            .collect();
        let (snapshots, receiver) = watch::channel(RunSnapshot::default());
        let progress = Progress::new(ProgressMode::choose(cli.no_progress), &tasks, logs.clone());
        let stop_progress = CancellationToken::new();
        let progress_task = tokio::spawn(follow(progress, receiver, stop_progress.clone()));
        info!(run = %run_id, url = %url, replica = %holder.id, "scheduler replica started");
        let result = loop {
            let forward = snapshots.clone();
            let options = ReplicaOptions {
                run: run_id.clone(),
                spec_toml: spec_toml.clone(),
                pipeline: pipeline.clone(),
                settings: RunSettings { lease_ttl: cli.lease_ttl, ..RunSettings::default() },
                holder: holder.clone(),
                scheduler: SchedulerConfig::default(),
                replay_mode: daisy_scheduler::ReplayMode::Continue,
                on_leading: Some(daisy_scheduler::nats::forward_snapshots(forward)),
            };
            match run_replica(nats.clone(), options, cancel.clone()).await {
                Ok(report) => break Ok(report),
                Err(ReplicaError::LeaseLost { .. }) => warn!("lost the lease; standing by again"),
                Err(err @ ReplicaError::LayoutChanged { .. }) => {
                    break Err(anyhow::Error::new(BadInput(err.to_string())));
                }
                Err(err) => break Err(anyhow::Error::new(err)),
            }
        };
        run_over.cancel();
        stop_progress.cancel();
        let mut progress = progress_task.await.context("the progress display panicked")?;
        let _ = interrupts.await;
        let report = result?;
        progress.finish(&report);
        anyhow::Ok(report)
    })?;
    let record = PathBuf::from(format!(
        "event stream {} on {url}",
        daisy_proto::subjects::event_stream(&run_id)
    ));
    let places = RunPlaces {
        run_id: run_id.as_str(),
        journal: &record,
        log_dir: std::path::Path::new("daisy_logs (on each worker)"),
    };
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        write_json(&mut stdout, &report, &places)
    } else if report.tasks.is_empty() {
        writeln!(
            stdout,
            "this replica stopped while standing by: it never led run {run_id} (see `daisy status {run_id}`)"
        )
    } else {
        write_text(&mut stdout, &report, &pipeline, &places)
    }
    .context("writing the summary")?;
    stdout.flush().context("writing the summary")?;
    Ok(if report.all_succeeded() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
