//! `daisy status`: where a run on NATS stands, from another shell.
//!
//! Reads what the leader writes to the run's KV status every second (per-task counters, the
//! first errors), who holds the leader lease, and how many worker processes are live.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use daisy_nats::TaskStatus;
use serde::Serialize;

use crate::operator::{Leader, RunState, ServerArgs, Session, print_json, runtime};

const AFTER_HELP: &str = concat!(
    "\
Examples:
  daisy status                              the only run on the embedded server of ./.daisy
  daisy status cells --nats nats://host:4222
  daisy status cells --watch                redraw every second until the run finishes
  daisy status cells --json                 one JSON object (one per second with --watch)

The JSON schema is stable (the README quotes it):
  {\"run\", \"finished\", \"succeeded\", \"leader\": {\"id\", \"host\", \"pid\"} | null, \"workers\",
   \"status_age_seconds\": f64 | null, \"tasks\": [{\"id\", \"total\", \"ready\", \"dispatched\",
   \"processing\", \"completed\", \"skipped\", \"failed\", \"orphaned\", \"pending\", \"first_error\",
   \"abandoned\", \"stragglers\": [{\"block_id\", \"attempt\", \"worker\", \"running_seconds\",
   \"median_seconds\", \"trace_id\"}]}]}

",
    exit_codes_help!(),
    "
For daisy status: 0 shown and no block failed, 1 shown and the run has failed or orphaned
blocks (with --watch: as of the last status shown), 2 unknown run or several and none named."
);

/// Show a run's progress: per-task counters, leader, live workers, first errors.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct StatusArgs {
    /// The run. Default: the only run on the server.
    run: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// Redraw every second until the run finishes (plain lines when stdout
    /// is not a terminal).
    #[arg(long)]
    watch: bool,
    /// Print the status as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

/// The stable JSON form of `daisy status --json`, one object per line:
///
/// ```text
/// {"run": str, "finished": bool, "succeeded": bool,
///  "leader": {"id": str, "host": str, "pid": u32} | null,
///  "workers": u64, "status_age_seconds": f64 | null,
///  "tasks": [{"id": str, "total": u64, "ready": u64, "dispatched": u64, "processing": u64,
///             "completed": u64, "skipped": u64, "failed": u64, "orphaned": u64, "pending": u64,
///             "first_error": str | null, "abandoned": str | null,
///             "stragglers": [{"block_id": u64, "attempt": u32, "worker": str,
///                             "running_seconds": f64, "median_seconds": f64,
///                             "trace_id": str}]}]}
/// ```
///
/// * `finished`: every block has an outcome; `succeeded`: every block succeeded or was
///   skipped (false until finished).
/// * `leader`: the scheduler holding the run's lease, `null` when none runs.
/// * `workers`: live `daisy-worker` processes (and `daisy run`s) serving the run.
/// * `status_age_seconds`: since the leader last wrote the status (every second while it
///   leads), by this machine's clock; `null` before any scheduler wrote one (`tasks` is
///   empty then).
/// * `tasks`, in topological order: `processing` blocks run now (Daisy's meaning: at most
///   the task's `max_workers`); `dispatched` blocks were handed to a worker in a batch and
///   have not started; `completed` includes `skipped`; `pending` blocks wait
///   for upstream blocks; `orphaned` blocks will not run because an upstream block failed;
///   `first_error` is `"block <id> attempt <n> (<kind>): <message>"`; `abandoned` says why a
///   task was given up; `stragglers` are blocks running now for longer than
///   `--straggler-factor` times the task's median block time, with the worker slot running
///   them and their trace id. After a leader change the last counters written stay until
///   the new leader writes its own.
///
/// Fields may be added; none is removed or changes meaning.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    run: String,
    finished: bool,
    succeeded: bool,
    leader: Option<Leader>,
    workers: usize,
    status_age_seconds: Option<f64>,
    tasks: Vec<TaskStatus>,
}

impl StatusJson {
    fn of(state: &RunState) -> StatusJson {
        let tasks = state.status.iter().flat_map(|status| &status.tasks).cloned().collect();
        StatusJson {
            run: state.run.to_string(),
            finished: state.finished(),
            succeeded: state.succeeded(),
            leader: state.leader.clone(),
            workers: state.workers,
            status_age_seconds: state.status_age_seconds().map(|s| (s * 1000.0).round() / 1000.0),
            tasks,
        }
    }
}

/// Runs `daisy status`.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut session = args.server.connect("daisy status").await?;
        let mut streams = session.open(args.run.as_deref()).await?;
        let terminal = std::io::stdout().is_terminal();
        let mut first = true;
        // Set once the `daisy run` whose server this command watched has ended: the status
        // it left was read from the store, and is the last one shown.
        let mut ended = false;
        loop {
            // The server of a local run goes with its `daisy run` (when it finished, or on
            // Ctrl-C there): read what it left from the store, on a server of this command's.
            let run_ended = |session: &Session| {
                session.local.as_ref().is_some_and(|local| local.run_ended())
            };
            let read = if first || !run_ended(&session) {
                RunState::read(&streams).await
            } else {
                Err(anyhow::anyhow!("the daisy run ended"))
            };
            let state = match read {
                Ok(state) => state,
                Err(err) if !first && !ended && session.local.is_some() => {
                    let run = streams.run().clone();
                    drop(streams);
                    drop(session);
                    // The run's server stops a moment after its `daisy run` wrote the last
                    // status; connecting waits for its lock and starts one on the store.
                    session = args.server.connect("daisy status").await.with_context(|| {
                        format!("reading run '{run}' after its daisy run ended ({err:#})")
                    })?;
                    streams = session.open(Some(run.as_str())).await?;
                    ended = true;
                    continue;
                }
                Err(err) => return Err(err),
            };
            if args.json {
                print_json(&StatusJson::of(&state))?;
            } else {
                let mut text = Vec::new();
                if args.watch && terminal {
                    // Clear the screen and go home: a redraw in place.
                    text.extend_from_slice(b"\x1b[2J\x1b[H");
                } else if args.watch && !first {
                    text.push(b'\n');
                }
                let resume = session.resume_hint(&state.run);
                // A local `daisy run` re-runs failed blocks by itself when resuming.
                let rerun = match &session.local {
                    Some(_) => format!("re-run the failed and orphaned blocks with:\n{resume}"),
                    None => format!(
                        "re-run the failed and orphaned blocks with `daisy retry {}`, then:\n{resume}",
                        state.run
                    ),
                };
                write_text(&mut text, &state, &session.url, &resume, &rerun)
                    .context("formatting the status")?;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&text).context("writing the status")?;
                stdout.flush().context("writing the status")?;
            }
            first = false;
            let over = state.finished() || (state.cancelled() && state.leader.is_none());
            if ended && !over {
                eprintln!(
                    "daisy: the daisy run of '{}' ended before the run finished, and its server \
                     with it; resume it with:\n{}",
                    state.run,
                    session.resume_hint(&state.run)
                );
                break anyhow::Ok(ExitCode::from(crate::EXIT_FAILED));
            }
            // No daisy run runs here, and none can start while this command holds the
            // store: nothing would change.
            let idle = session.local.as_ref().is_some_and(|local| local.idle());
            if args.watch && idle && !over {
                eprintln!("daisy: nothing to watch: no daisy run is running; shown once");
            }
            if !args.watch || over || idle {
                let (failed, orphaned) = state.failed_and_orphaned();
                let blocks_failed = failed + orphaned > 0 || (state.finished() && !state.succeeded());
                break anyhow::Ok(if blocks_failed {
                    ExitCode::from(crate::EXIT_FAILED)
                } else {
                    ExitCode::SUCCESS
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// The human-readable status.
/// `resume` resumes the run ([`crate::operator::Session::resume_hint`]); `rerun` says how
/// to re-run its failed blocks.
fn write_text(
    out: &mut impl Write,
    state: &RunState,
    url: &str,
    resume: &str,
    rerun: &str,
) -> std::io::Result<()> {
    let age = state
        .status_age_seconds()
        .map_or("no status written yet".to_owned(), |age| format!("status {age:.1}s old"));
    writeln!(out, "run {} on {url}: {} ({age})", state.run, state.state_word())?;
    match &state.leader {
        Some(leader) => writeln!(out, "leader:  {leader}")?,
        None => writeln!(out, "leader:  none")?,
    }
    writeln!(out, "workers: {} live", state.workers)?;
    let Some(status) = &state.status else {
        return writeln!(out, "no scheduler has led this run yet");
    };
    let width = status.tasks.iter().map(|t| t.id.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "\n{:<width$}  {:>9}  {:>9}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        "task",
        "total",
        "ready",
        "dispatched",
        "processing",
        "completed",
        "skipped",
        "failed",
        "orphaned",
        "pending"
    )?;
    for t in &status.tasks {
        writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            t.id,
            t.counters.total,
            t.counters.ready,
            t.counters.dispatched,
            t.counters.processing,
            t.counters.completed,
            t.counters.skipped,
            t.counters.failed,
            t.counters.orphaned,
            t.pending
        )?;
    }
    let stragglers: Vec<_> =
        status.tasks.iter().flat_map(|t| t.stragglers.iter().map(move |s| (&t.id, s))).collect();
    if !stragglers.is_empty() {
        writeln!(out, "\nstragglers (running far longer than their task's median block time):")?;
        for (task, s) in stragglers {
            writeln!(
                out,
                "  {task}: block {} attempt {} on {}, running {:.1}s (median {:.2}s), trace {}",
                s.block_id, s.attempt, s.worker, s.running_seconds, s.median_seconds, s.trace_id
            )?;
        }
    }
    let errors: Vec<_> =
        status.tasks.iter().filter(|t| t.first_error.is_some() || t.abandoned.is_some()).collect();
    if !errors.is_empty() {
        writeln!(out, "\nfirst errors:")?;
        for t in errors {
            if let Some(error) = &t.first_error {
                // The header and the last line (of a traceback, of stderr).
                let mut lines = error.lines().filter(|line| !line.trim().is_empty());
                writeln!(out, "  {}: {}", t.id, lines.next().unwrap_or(""))?;
                if let Some(last) = lines.next_back() {
                    writeln!(out, "    ... {}", last.trim())?;
                }
            }
            if let Some(reason) = &t.abandoned {
                writeln!(out, "  {}: abandoned: {reason}", t.id)?;
            }
        }
    }
    if state.cancelled() {
        writeln!(out, "\ncancelled with daisy cancel; resume it with:\n{resume}")?;
    } else if state.finished() && !state.succeeded() {
        writeln!(out, "\n{rerun}")?;
    }
    Ok(())
}
