//! Daisy's execution summary at the end of `daisy run`: a table per task,
//! the first error of each task that had failures, timeout and abandonment
//! hints, where the logs are, and one line saying how it went. Always
//! printed, also when every block was skipped (Daisy #62).
//!
//! `--json` prints the same facts as one JSON object instead.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use daisy_core::{Pipeline, TaskCounters};
use daisy_proto::FailureKind;
use daisy_scheduler::RunReport;
use daisy_worker::process::LogWriter;
use serde::Serialize;

use crate::progress::task_symbol;

/// Where the run keeps its state and logs, as the user would write them.
pub struct RunPlaces<'a> {
    /// The run id.
    pub run_id: &'a str,
    /// The journal file.
    pub journal: &'a Path,
    /// The base log dir.
    pub log_dir: &'a Path,
}

/// A failure kind as a word in JSON and text.
fn kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Failed => "failed",
        FailureKind::Timeout => "timeout",
        FailureKind::ProcessDied => "process_died",
        FailureKind::SpawnFailed => "spawn_failed",
        FailureKind::Panicked => "panicked",
        FailureKind::DeliveriesExhausted => "deliveries_exhausted",
    }
}

/// The worker slot in a worker id (`<task>-<pid>-<slot>` in-process,
/// `<host>-<pid>-<task>-<slot>` over NATS).
fn slot_of(worker: &str) -> Option<u32> {
    worker.rsplit_once('-').and_then(|(_, slot)| slot.parse().ok())
}

/// The `.err` log of the worker that reported an error:
/// `<log_dir>/<task>/<host>-<pid>/worker_<slot>.err`, as the worker's process
/// names it (`daisy_worker::process::SlotConfig::err_log_path`).
fn err_log(log_dir: &Path, task: &str, worker: &str) -> PathBuf {
    let slot = slot_of(worker);
    let this_process = LogWriter::this_process();
    let process = slot.and_then(|slot| {
        // Over NATS the id starts with the worker process's `<host>-<pid>`.
        if let Some(process) = worker.strip_suffix(&format!("-{task}-{slot}")) {
            return Some(process.to_owned());
        }
        // In-process slots run in this very process.
        let in_process = format!("{task}-{}-{slot}", this_process.pid);
        (worker == in_process).then(|| this_process.directory.clone())
    });
    let file = match slot {
        Some(slot) => format!("worker_{slot}.err"),
        None => "worker_<n>.err".to_owned(),
    };
    log_dir.join(task).join(process.unwrap_or_else(|| "<host>-<pid>".to_owned())).join(file)
}

/// A duration as the pipeline file writes it: `90s`, `10m`, `2h`, `1.5s`.
fn duration_text(seconds: f64) -> String {
    let whole = seconds.round();
    if (seconds - whole).abs() > 1e-9 {
        return format!("{seconds}s");
    }
    let whole = whole as u64;
    if whole >= 3600 && whole.is_multiple_of(3600) {
        format!("{}h", whole / 3600)
    } else if whole >= 60 && whole.is_multiple_of(60) {
        format!("{}m", whole / 60)
    } else {
        format!("{whole}s")
    }
}

fn blocks(n: u64) -> String {
    if n == 1 { "1 block".to_owned() } else { format!("{n} blocks") }
}

#[derive(Serialize)]
struct JsonFirstError<'a> {
    block_id: u64,
    attempt: u32,
    kind: &'static str,
    worker: &'a str,
    message: &'a str,
    log: String,
}

#[derive(Serialize)]
struct JsonTask<'a> {
    id: &'a str,
    blocks: u64,
    completed: u64,
    skipped: u64,
    failed: u64,
    orphaned: u64,
    /// Running when the run stopped (only an interrupted run ends with any).
    processing: u64,
    /// Handed to a worker but not started when the run stopped.
    dispatched: u64,
    failed_attempts: u64,
    timeouts: u64,
    worker_restarts: u64,
    timeout_seconds: f64,
    abandoned: Option<&'a str>,
    first_error: Option<JsonFirstError<'a>>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    run_id: &'a str,
    journal: String,
    log_dir: String,
    all_succeeded: bool,
    interrupted: bool,
    blocks: u64,
    tasks: Vec<JsonTask<'a>>,
}

/// Writes the report as one JSON object (and a newline).
///
/// # Errors
/// Writing failed.
pub fn write_json(out: &mut impl Write, report: &RunReport, places: &RunPlaces) -> io::Result<()> {
    let tasks = report
        .tasks
        .iter()
        .map(|task| {
            let counters = &task.counters;
            JsonTask {
                id: &task.id,
                blocks: counters.total,
                completed: counters.completed,
                skipped: counters.skipped,
                failed: counters.failed,
                orphaned: counters.orphaned,
                processing: counters.processing,
                dispatched: counters.dispatched,
                failed_attempts: task.failed_attempts,
                timeouts: task.timeouts,
                worker_restarts: task.worker_restarts,
                timeout_seconds: task.timeout_seconds,
                abandoned: task.abandoned.as_deref(),
                first_error: task.first_error.as_ref().map(|error| JsonFirstError {
                    block_id: error.block_id.0,
                    attempt: error.attempt,
                    kind: kind_name(error.kind),
                    worker: &error.worker,
                    message: &error.message,
                    log: err_log(places.log_dir, &task.id, &error.worker).display().to_string(),
                }),
            }
        })
        .collect();
    let json = JsonReport {
        run_id: places.run_id,
        journal: places.journal.display().to_string(),
        log_dir: places.log_dir.display().to_string(),
        all_succeeded: report.all_succeeded(),
        interrupted: report.interrupted,
        blocks: report.tasks.iter().map(|t| t.counters.total).sum(),
        tasks,
    };
    serde_json::to_writer(&mut *out, &json)?;
    writeln!(out)
}

/// Writes the human summary.
///
/// # Errors
/// Writing failed.
pub fn write_text(
    out: &mut impl Write,
    report: &RunReport,
    pipeline: &Pipeline,
    places: &RunPlaces,
) -> io::Result<()> {
    write_table(out, report)?;
    let mut any_failure = false;
    for task in &report.tasks {
        let max_retries =
            pipeline.task_index(&task.id).map_or(0, |index| pipeline.task(index).spec.max_retries);
        if let Some(error) = &task.first_error {
            any_failure = true;
            writeln!(out)?;
            if task.counters.failed > 0 {
                writeln!(
                    out,
                    "task '{}': {} failed after {} attempt(s) each; the first error:",
                    task.id,
                    blocks(task.counters.failed),
                    max_retries + 1
                )?;
            } else {
                writeln!(
                    out,
                    "task '{}': {} failed attempt(s); the first error:",
                    task.id, task.failed_attempts
                )?;
            }
            writeln!(
                out,
                "  block {} (attempt {}, {}, worker {}):",
                error.block_id,
                error.attempt,
                kind_name(error.kind).replace('_', " "),
                error.worker
            )?;
            for line in error.message.trim_end().lines() {
                writeln!(out, "    {line}")?;
            }
            writeln!(out, "  see {}", err_log(places.log_dir, &task.id, &error.worker).display())?;
        }
        if task.timeouts > 0 {
            any_failure = true;
            writeln!(
                out,
                "{} block attempt(s) of task '{}' exceeded the block timeout ({}); if blocks \
                 need longer, set timeout = \"{}\" (or more) in the task '{}' of the pipeline file",
                task.timeouts,
                task.id,
                duration_text(task.timeout_seconds),
                duration_text(task.timeout_seconds * 2.0),
                task.id
            )?;
        }
        if let Some(reason) = &task.abandoned {
            any_failure = true;
            writeln!(out, "task '{}' was abandoned: {reason}", task.id)?;
        }
    }
    if any_failure {
        writeln!(
            out,
            "worker logs: {}",
            places
                .log_dir
                .join("<task>")
                .join("<host>-<pid>")
                .join("worker_<n>.{out,err}")
                .display()
        )?;
    }
    writeln!(out)?;
    writeln!(out, "{}", verdict(report))
}

fn write_table(out: &mut impl Write, report: &RunReport) -> io::Result<()> {
    let header = ["task", "blocks", "completed", "skipped", "failed", "orphaned"];
    let rows: Vec<[String; 6]> = report
        .tasks
        .iter()
        .map(|task| {
            let c: &TaskCounters = &task.counters;
            [
                format!("{} {}", task_symbol(task, true), task.id),
                c.total.to_string(),
                c.completed.to_string(),
                c.skipped.to_string(),
                c.failed.to_string(),
                c.orphaned.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line =
        |cells: &[&str]| {
            cells
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(column, (cell, width))| {
                    if column == 0 { format!("{cell:<width$}") } else { format!("{cell:>width$}") }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        writeln!(out, "{}", line(&row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

/// The last line: how it went and what to do.
fn verdict(report: &RunReport) -> String {
    let sum =
        |f: fn(&TaskCounters) -> u64| report.tasks.iter().map(|t| f(&t.counters)).sum::<u64>();
    let total = sum(|c| c.total);
    let completed = sum(|c| c.completed);
    let skipped = sum(|c| c.skipped);
    let failed = sum(|c| c.failed);
    let orphaned = sum(|c| c.orphaned);
    if report.all_succeeded() {
        let skipped = if skipped > 0 {
            format!(" ({skipped} skipped: done in an earlier session or by the check)")
        } else {
            String::new()
        };
        return format!("all {} processed successfully{skipped}", blocks(total));
    }
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{} failed", blocks(failed)));
    }
    if orphaned > 0 {
        problems.push(format!("{} orphaned", blocks(orphaned)));
    }
    if report.interrupted {
        let left = total - completed - failed - orphaned;
        let processing = sum(|c| c.processing);
        let dispatched = sum(|c| c.dispatched);
        let in_flight = if processing + dispatched > 0 {
            format!(" ({processing} still processing, {dispatched} dispatched and not started)")
        } else {
            String::new()
        };
        problems.push(format!("interrupted with {} not processed{in_flight}", blocks(left)));
    }
    format!(
        "{} of {total} completed; {}. Run the same command again to go on: completed blocks are \
         skipped, the others run again",
        completed,
        problems.join(", ")
    )
}
