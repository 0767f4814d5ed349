//! The slot's append-only log files and reading back the tail of stderr.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::SystemTime;

use super::{BlockFailure, FailureKind, LogWriter, SlotConfig};

/// How much of the end of the stderr log an error message may quote.
const TAIL_MAX_BYTES: u64 = 8 * 1024;
/// How many stderr lines an error message quotes at most.
const TAIL_MAX_LINES: usize = 20;

/// Marks lines written by us into the logs, skipped when quoting stderr.
pub(super) const SEPARATOR_PREFIX: &str = "=== daisy-rs: ";

/// The slot's `.out` and `.err` log files, opened for appending.
pub(super) struct SlotLogFiles {
    pub(super) out: File,
    pub(super) err: File,
}

/// Opens (creating as needed) the slot's `.out` and `.err` logs in append mode.
pub(super) fn open_slot_logs(slot: &SlotConfig) -> io::Result<SlotLogFiles> {
    let out_path = slot.out_log_path();
    if let Some(dir) = out_path.parent() {
        fs::create_dir_all(dir)?;
    }
    Ok(SlotLogFiles { out: open_append(&out_path)?, err: open_append(&slot.err_log_path())? })
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The failure for log files that cannot be opened: the process cannot be started.
pub(super) fn log_open_failure(key: &str, slot: &SlotConfig, err: &io::Error) -> BlockFailure {
    BlockFailure::new(
        FailureKind::SpawnFailed,
        format!(
            "cannot open worker logs under `{}` for the {key} command of task `{}`: {err}; \
             check that the log dir is writable",
            slot.log_dir.display(),
            slot.task_id
        ),
    )
}

/// The line that heads a start in a slot's logs, with a newline: which daisy process wrote
/// what follows, for which task and slot, and `what` it started, e.g.
/// `=== daisy-rs: daisy-worker on node7 (pid 4242), task smooth slot 0: started `python3
/// smooth.py` as pid 4250 at 2026-11-29T22:00:00Z ===`.
pub(super) fn separator_line(slot: &SlotConfig, what: &str) -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let LogWriter { program, host, pid, .. } = &slot.writer;
    format!(
        "{SEPARATOR_PREFIX}{program} on {host} (pid {pid}), task {} slot {}: {what} at {now} \
         ===\n",
        slot.task_id, slot.worker_id
    )
}

/// Appends `line` to `file`; a log that cannot be written must not fail a block.
pub(super) fn append_line(file: &mut File, line: &str) {
    if let Err(error) = file.write_all(line.as_bytes()) {
        tracing::warn!(%error, "cannot write worker log separator");
    }
}

/// Current length of a log file, i.e. where the next appended output will start.
pub(super) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

/// The last lines (at most [`TAIL_MAX_LINES`], [`TAIL_MAX_BYTES`]) appended to `path` since
/// byte `since`, without our separator lines; empty when there are none or on a read error.
pub(super) fn tail_since(path: &Path, since: u64) -> String {
    match read_tail(path, since) {
        Ok(tail) => tail,
        Err(error) => {
            tracing::debug!(%error, path = %path.display(), "cannot read stderr log tail");
            String::new()
        }
    }
}

fn read_tail(path: &Path, since: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = since.max(len.saturating_sub(TAIL_MAX_BYTES));
    if start >= len {
        return Ok(String::new());
    }
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(len - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // When the byte cap cut into a line, drop that partial first line.
    let text =
        if start > since { text.split_once('\n').map_or("", |(_, rest)| rest) } else { &text };
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with(SEPARATOR_PREFIX) && !line.trim().is_empty())
        .collect();
    let first = lines.len().saturating_sub(TAIL_MAX_LINES);
    Ok(lines[first..].join("\n"))
}

/// `"<what>; last stderr lines:\n<tail>"`, or `"<what> (no stderr output)"`.
pub(super) fn with_stderr_tail(what: &str, tail: &str) -> String {
    if tail.is_empty() {
        format!("{what} (no stderr output)")
    } else {
        format!("{what}; last stderr lines:\n{tail}")
    }
}
