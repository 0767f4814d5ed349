//! `daisy-scheduler`: one scheduler replica of a run over NATS JetStream.
//!
//! An adapter: it turns the flags into [`NatsRunOptions`] (no local
//! workers, recorded outcomes replayed as one long run), runs the library's
//! [`NatsRun`] in the foreground and prints the summary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use daisy::nats::{DEFAULT_LEASE_TTL, NatsRun, NatsRunOptions, ServerChoice};
use daisy_proto::RunId;
use daisy_scheduler::{ReplayMode, SchedulerConfig};

use crate::commands::run::nats_run_error;
use crate::foreground::run_in_foreground;
use crate::input::{BadInput, load_pipeline};
use crate::metrics_args::MetricsArgs;
use crate::nats_args::NatsArgs;
use crate::summary::{RunPlaces, write_json, write_text};

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy-scheduler --nats nats://nats-host:4222 pipeline.toml
      publishes the pipeline, takes the leader lease and dispatches blocks to the
      daisy-workers of the run; prints the summary at the end
  daisy-scheduler --nats nats://nats-host:4222 pipeline.toml     (on a second machine)
      stands by and takes over within seconds if the leader dies; no block that
      succeeded runs again, no block is dispatched twice

The run id (default: the pipeline file's name) names the run's streams; start
daisy-worker --nats URL --run <run-id> anywhere to process its blocks.

Without --nats and NATS_URL, it joins the server of the `daisy run` running in
--state-dir (it never starts a server of its own).

",
    exit_codes_help!()
);

/// One scheduler replica of a daisy-rs run over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "daisy-scheduler", version, after_help = AFTER_HELP)]
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
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_LEASE_TTL.into())]
    lease_ttl: humantime::Duration,
    /// The state dir of the `daisy run` whose live server to join when
    /// neither --nats nor NATS_URL is given.
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
    /// A block running K times its task's median block time (and at least a second) is a
    /// straggler: logged once, counted, listed by `daisy status`. 0 or "off" disables it.
    #[arg(long, value_name = "K", default_value = "5", value_parser = super::run::parse_straggler_factor)]
    straggler_factor: super::run::StragglerFactor,
    #[command(flatten)]
    telemetry: crate::telemetry::TelemetryArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The `daisy-scheduler` binary.
pub fn scheduler_main() -> ExitCode {
    let cli = SchedulerCli::parse();
    let telemetry = match cli.telemetry.init("daisy-scheduler", cli.verbose.max(1)) {
        Ok(telemetry) => telemetry,
        Err(err) => return crate::exit_code(Err(err.into())),
    };
    let result = run(cli, telemetry.logs());
    // Flushes the spans still queued before the process ends.
    drop(telemetry);
    crate::exit_code(result)
}

fn run(cli: SchedulerCli, logs: daisy_telemetry::LogOutput) -> anyhow::Result<ExitCode> {
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
    let url = cli.nats.resolve_url(&cli.state_dir, "daisy-scheduler")?;
    cli.metrics.serve()?;
    let options = NatsRunOptions {
        spec_toml: Some(spec_toml),
        lease_ttl: cli.lease_ttl.into(),
        replay_mode: ReplayMode::Continue,
        scheduler: SchedulerConfig {
            straggler_factor: cli.straggler_factor.0,
            ..SchedulerConfig::default()
        },
        ..NatsRunOptions::new(
            ServerChoice::Connect(cli.nats.options(url, "daisy-scheduler")),
            run_id.clone(),
        )
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (report, record) = runtime.block_on(async {
        let replica = NatsRun::prepare(pipeline.clone(), options).await.map_err(nats_run_error)?;
        let record = PathBuf::from(replica.record_place());
        let snapshots = replica.subscribe();
        let report =
            run_in_foreground(&pipeline, snapshots, cli.no_progress, &logs, |cancel| async {
                replica.run(None, cancel).await.map_err(nats_run_error)
            })
            .await?;
        anyhow::Ok((report, record))
    })?;
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
