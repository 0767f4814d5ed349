//! `daisy runs`: the runs on a NATS server, and deleting one with everything it stored.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use daisy_proto::RunId;
use serde::Serialize;
use tracing::warn;

use crate::input::BadInput;
use crate::operator::{Leader, RunState, ServerArgs, print_json, runtime};

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy runs                                the runs on the embedded server of ./.daisy
  daisy runs --nats nats://host:4222 --json
  daisy runs --delete cells                 delete run 'cells': its block, event and
                                            dead-letter streams and its KV buckets

--delete asks no question and does not stop a scheduler or workers still serving the run
(stop them first, e.g. with daisy cancel). A deleted run starts from scratch next time.

JSON: {\"runs\": [{\"run\", \"state\", \"finished\", \"succeeded\", \"completed\", \"total\",
\"workers\", \"leader\": {\"id\", \"host\", \"pid\"} | null}]};
with --delete: {\"deleted\": run, \"streams_and_buckets\": n}.

",
    exit_codes_help!(),
    "
For daisy runs: 0 listed or deleted, whatever the runs' outcomes; 2 no such run."
);

/// List the runs on the server, or delete one.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Delete this run: all its streams (with their messages) and KV buckets.
    #[arg(long, value_name = "RUN")]
    delete: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// One run in `daisy runs --json`.
#[derive(Debug, Serialize)]
struct RunJson {
    run: String,
    /// `new`, `running`, `stopped`, `cancelled`, `succeeded` or `failed`.
    state: &'static str,
    finished: bool,
    succeeded: bool,
    completed: u64,
    total: u64,
    workers: usize,
    leader: Option<Leader>,
}

/// Runs `daisy runs`.
pub fn run(args: RunsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let session = args.server.connect("daisy runs").await?;
        if let Some(id) = &args.delete {
            let run = RunId::new(id.clone()).ok_or_else(|| {
                BadInput(format!("{id:?} is not a run id (letters, digits, '_' and '-')"))
            })?;
            // Opening it says whether it exists and who still serves it.
            let streams = session.open(Some(run.as_str())).await?;
            if let Ok(state) = RunState::read(&streams).await
                && (state.leader.is_some() || state.workers > 0)
            {
                let leader = state.leader.map_or("none".to_owned(), |l| l.to_string());
                warn!(run = %run, %leader, workers = state.workers, "deleting a run that is still served");
            }
            let deleted = session
                .nats
                .delete_run(&run)
                .await
                .with_context(|| format!("deleting run '{run}' on {}", session.url))?;
            if args.json {
                #[derive(Serialize)]
                struct Deleted<'a> {
                    deleted: &'a str,
                    streams_and_buckets: usize,
                }
                print_json(&Deleted { deleted: run.as_str(), streams_and_buckets: deleted })?;
            } else {
                println!(
                    "deleted run {run} on {}: {deleted} streams and buckets (its blocks, events, \
                     dead letters, spec, status, lease and worker keys)",
                    session.url
                );
            }
            return anyhow::Ok(ExitCode::SUCCESS);
        }
        let mut runs = Vec::new();
        for run in session.runs().await? {
            let state = match session.nats.open_run(&run).await {
                Ok(streams) => RunState::read(&streams).await?,
                // Half deleted or half provisioned: list it, it can be deleted.
                Err(err) => {
                    warn!(run = %run, error = %err, "run is incomplete");
                    RunState { run, status: None, leader: None, workers: 0 }
                }
            };
            runs.push(state);
        }
        if args.json {
            #[derive(Serialize)]
            struct Runs {
                runs: Vec<RunJson>,
            }
            let runs = runs
                .iter()
                .map(|state| {
                    let (completed, total) = state.blocks();
                    RunJson {
                        run: state.run.to_string(),
                        state: state.state_word(),
                        finished: state.finished(),
                        succeeded: state.succeeded(),
                        completed,
                        total,
                        workers: state.workers,
                        leader: state.leader.clone(),
                    }
                })
                .collect();
            print_json(&Runs { runs })?;
        } else if runs.is_empty() {
            eprintln!("no runs on {}", session.url);
        } else {
            write_table(&mut std::io::stdout().lock(), &runs).context("writing the runs")?;
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn write_table(out: &mut impl Write, runs: &[RunState]) -> std::io::Result<()> {
    let width = runs.iter().map(|r| r.run.as_str().len()).max().unwrap_or(3).max(3);
    writeln!(out, "{:<width$}  {:<9}  {:>21}  {:>7}  leader", "run", "state", "blocks", "workers")?;
    for state in runs {
        let (completed, total) = state.blocks();
        let blocks = format!("{completed}/{total}");
        let leader = state.leader.as_ref().map_or("-".to_owned(), Leader::to_string);
        writeln!(
            out,
            "{:<width$}  {:<9}  {blocks:>21}  {:>7}  {leader}",
            state.run.as_str(),
            state.state_word(),
            state.workers
        )?;
    }
    out.flush()
}
