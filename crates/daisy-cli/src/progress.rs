//! Shows a run's progress on stderr: one bar per task on a terminal, a plain
//! line per task every few seconds otherwise (CI logs, `2> file`).
//!
//! # Ownership
//! Reads [`RunSnapshot`]s from the scheduler's watch channel; owns the bars
//! and attaches them to the log output so log lines never tear them. It does
//! not print the summary (stdout, `summary`).
//!
//! Symbols are Daisy's: ⧗ not started, ▶ processing (running now), ✔ completed
//! (including skipped), ✗ failed, ∅ orphaned; and ours: ⇢ dispatched (handed to a worker,
//! not started yet), which Daisy has no state for. A finished task's bar is marked ✗ if a
//! block failed, else ∅ if one was orphaned, else ✔.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use daisy_core::TaskCounters;
use daisy_scheduler::{RunSnapshot, TaskReport};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use daisy_telemetry::LogOutput;

/// Bars are redrawn about four times a second.
const BAR_INTERVAL: Duration = Duration::from_millis(250);
/// Without a terminal, a line per task at most this often (when it changed).
const LINE_INTERVAL: Duration = Duration::from_secs(2);

/// Blocks of a task that reached a final state.
fn done(counters: &TaskCounters) -> u64 {
    counters.completed + counters.failed + counters.orphaned
}

/// Blocks of a task not handed to a worker yet (waiting for upstream blocks or a worker).
fn not_started(counters: &TaskCounters) -> u64 {
    counters.total.saturating_sub(done(counters) + counters.in_flight())
}

/// The counts Daisy shows next to a bar.
pub fn counts(counters: &TaskCounters) -> String {
    format!(
        "⧗ {} ⇢ {} ▶ {} ✔ {} ✗ {} ∅ {}",
        not_started(counters),
        counters.dispatched,
        counters.processing,
        counters.completed,
        counters.failed,
        counters.orphaned
    )
}

/// The mark of a task: ✗ any failed, ∅ any orphaned, ✔ all completed, `…`
/// not finished (interrupted), blank while running.
pub fn task_symbol(task: &TaskReport, finished: bool) -> &'static str {
    let counters = &task.counters;
    if counters.failed > 0 {
        "✗"
    } else if counters.orphaned > 0 || task.abandoned.is_some() {
        "∅"
    } else if counters.is_done() {
        "✔"
    } else if finished {
        "…"
    } else {
        " "
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// indicatif bars (stderr is a terminal).
    Bars,
    /// Plain lines every few seconds.
    Lines,
    /// Nothing (`--no-progress`).
    Off,
}

impl ProgressMode {
    /// Bars on a terminal, lines elsewhere, nothing when asked.
    pub fn choose(no_progress: bool) -> Self {
        if no_progress {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// The progress display of one run.
pub struct Progress {
    mode: ProgressMode,
    logs: LogOutput,
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    task_width: usize,
    started: Instant,
    /// The lines (without their time) printed last in [`ProgressMode::Lines`].
    last_printed: Vec<String>,
}

impl Progress {
    /// A display for tasks `task_ids` (topological order) of `totals` blocks.
    pub fn new(mode: ProgressMode, tasks: &[(String, u64)], logs: LogOutput) -> Self {
        let task_width = tasks.iter().map(|(id, _)| id.chars().count()).max().unwrap_or(4);
        let bars = (mode == ProgressMode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let style = ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} blocks {rate:.dim} eta {eta} {msg}",
            )
            .expect("the progress template is valid")
            .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.1}/s", state.per_sec());
            })
            .progress_chars("█▉▊▋▌▍▎▏ ");
            let bars = tasks
                .iter()
                .map(|(id, total)| {
                    let bar = multi.add(ProgressBar::new(*total));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("  {id:<task_width$}"));
                    bar
                })
                .collect();
            logs.attach(multi.clone());
            (multi, bars)
        });
        Self { mode, logs, bars, task_width, started: Instant::now(), last_printed: Vec::new() }
    }

    /// Shows `snapshot`.
    pub fn update(&mut self, snapshot: &RunSnapshot) {
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::Bars => self.update_bars(snapshot),
            ProgressMode::Lines => self.print_lines(snapshot),
        }
    }

    /// Shows the final state and lets go of the terminal.
    pub fn finish(&mut self, report: &RunSnapshot) {
        match self.mode {
            ProgressMode::Off => {}
            ProgressMode::Bars => {
                self.update_bars(report);
                if let Some((_, bars)) = &self.bars {
                    for bar in bars {
                        bar.finish();
                    }
                }
                self.logs.detach();
            }
            ProgressMode::Lines => self.print_lines(report),
        }
    }

    fn update_bars(&mut self, snapshot: &RunSnapshot) {
        let Some((_, bars)) = &self.bars else { return };
        let width = self.task_width;
        for (bar, task) in bars.iter().zip(&snapshot.tasks) {
            bar.set_position(done(&task.counters));
            bar.set_prefix(format!("{} {:<width$}", task_symbol(task, snapshot.finished), task.id));
            bar.set_message(counts(&task.counters));
        }
    }

    /// Prints a line per task unless they would repeat the last ones: the
    /// final state is often printed by the last tick already, and a log that
    /// ends with the same lines twice reads as if the run did something in
    /// between.
    fn print_lines(&mut self, snapshot: &RunSnapshot) {
        let width = self.task_width;
        let lines: Vec<String> = snapshot
            .tasks
            .iter()
            .map(|task| {
                let counters = &task.counters;
                format!(
                    "{} {:<width$} {}/{} blocks  {}",
                    task_symbol(task, snapshot.finished),
                    task.id,
                    done(counters),
                    counters.total,
                    counts(counters),
                )
            })
            .collect();
        if lines.is_empty() || lines == self.last_printed {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        for line in &lines {
            self.logs.note(&format!("[{seconds:6.1}s] {line}"));
        }
        self.last_printed = lines;
    }
}

/// Shows snapshots from `snapshots` until `stop` fires, then returns the
/// display for its final update.
pub async fn follow(
    mut progress: Progress,
    mut snapshots: watch::Receiver<RunSnapshot>,
    stop: CancellationToken,
) -> Progress {
    let period = match progress.mode {
        ProgressMode::Off => {
            stop.cancelled().await;
            return progress;
        }
        ProgressMode::Bars => BAR_INTERVAL,
        ProgressMode::Lines => LINE_INTERVAL,
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return progress,
            _ = interval.tick() => {
                let snapshot = snapshots.borrow_and_update().clone();
                if !snapshot.tasks.is_empty() {
                    progress.update(&snapshot);
                }
            }
        }
    }
}
