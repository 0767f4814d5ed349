//! Runs one block in a user's process, in any language, and reports how it went.
//!
//! # Ownership
//!
//! Owns the user's child processes (spawn, protocol, timeout, kill, restart) and the slot's
//! log files `<log_dir>/<task>/<host>-<pid>/worker_<n>.out|.err`: one directory per daisy
//! process, so two `daisy-worker`s started in one directory (or a `daisy-worker` beside
//! `daisy run`) never write into the same file. Every child start is headed in both files
//! by a line saying which daisy process wrote them ([`LogWriter`]). It does not own retry or restart
//! policy: [`BlockFailure::kind`] and [`WorkerProcess::restarts`] are inputs to the caller,
//! which enforces `max_retries` and `max_worker_restarts`.
//!
//! # Protocol (`worker = [..]`, one long-lived child per worker slot)
//!
//! ```text
//!  daisy worker                                   user process (e.g. daisy_worker.serve)
//!     │ {"task":"smooth","block_id":12,"read_roi":{..},"write_roi":{..},"attempt":1}\n
//!     ├────────────── stdin ─────────────────────────►│
//!     │ {"block_id":12,"status":"success"}\n          │  process(block)
//!     │ {"block_id":12,"status":"failed","error":".."}│
//!     │◄───────────── stdout ─────────────────────────┤  other stdout lines → worker_<n>.out
//!     │                                stderr ────────┴─► worker_<n>.err (direct, append)
//! ```
//!
//! One block is in flight per child. A reply for another block id, or a JSON object with a
//! `block_id` that is not a valid reply (`"status": "sucess"`), is a protocol error: the
//! block fails at once with the line as its error and the child is restarted, instead of the
//! block waiting for its timeout. Any other stdout line is appended to the `.out` log. At EOF on stdin the child
//! should exit. `command = [..]` runs one process per block with the same JSON in the
//! `DAISY_BLOCK` env var (exit 0 = success); `check = [..]` likewise (exit 0 = already done).
//!
//! Environment of every child: `DAISY_TASK_ID`, `DAISY_WORKER_ID` (slot index),
//! `DAISY_LOG_DIR` (the base log dir), `PYTHONUNBUFFERED=1` unless already set (so output
//! of a child that is killed on timeout is not lost in a buffer). Worker children also get
//! `DAISY_STDOUT_LOG` (path of the slot's `.out` log, where `daisy_worker.py` sends user
//! prints); command and check children get `DAISY_BLOCK` and `DAISY_BLOCK_ID`. The slot's
//! [`SlotConfig::env`] comes on top, and children start in [`SlotConfig::current_dir`].
//!
//! # Invariants
//!
//! * Every child runs in its own process group, and a kill is a `SIGKILL` of the whole
//!   group, so grandchildren (a shell's children, multiprocessing pools) die with it.
//! * A child is always reaped by a waiter thread; nothing here leaves zombies behind.
//! * Every child's group is recorded from spawn to reap, so [`kill_all_children`] can kill
//!   them all when daisy exits without waiting for its blocks: the terminal's Ctrl-C does
//!   not reach a child in its own group.
//!
//! # Why
//!
//! Threads plus `recv_timeout` instead of async: see the crate docs. The child writes its
//! stderr straight into the log file instead of through a pipe we copy, so C-level writes
//! and output produced while we are busy land in the log without a copier thread, and the
//! "last stderr lines" of an error are read back from the file.

mod command;
mod group;
mod logs;
mod worker;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use command::{CheckProcess, CommandProcess};
/// Why a block did not succeed: the wire type itself, so a [`BlockFailure`] goes into an
/// outcome report unchanged. This module produces `Failed`, `Timeout`, `ProcessDied` and
/// `SpawnFailed`; `Panicked` and `DeliveriesExhausted` come from elsewhere.
pub use daisy_proto::FailureKind;
pub use group::kill_all_children;
pub use worker::WorkerProcess;

/// Source of `python/daisy_worker.py`, the stdlib-only Python side of the worker protocol.
///
/// A caller can write it next to a user's script (or into a directory on `PYTHONPATH`) so
/// that `import daisy_worker` works without a checkout of daisy-rs.
pub const PYTHON_HELPER_SOURCE: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../python/daisy_worker.py"));

/// Offset and shape of a ROI as they travel in the JSON protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRoi {
    /// Begin of the ROI in world units, one entry per dimension.
    pub offset: Vec<i64>,
    /// Extent of the ROI in world units, one entry per dimension.
    pub shape: Vec<i64>,
}

/// The JSON object sent to user code for one block (one line on a worker's stdin, or the
/// `DAISY_BLOCK` env var of a command or check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLine {
    /// Task id; with `block_id` it forms Daisy's `(task_id, block_id)` pair.
    pub task: String,
    /// Daisy's block id (the Cantor number of the block's grid index).
    pub block_id: u64,
    /// What the block may read: the write ROI grown by the task's context.
    pub read_roi: BlockRoi,
    /// What the block writes.
    pub write_roi: BlockRoi,
    /// Which attempt at this block this is, counting from 1.
    pub attempt: u32,
}

/// How user code says a block went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyStatus {
    /// The block was processed.
    Success,
    /// The block could not be processed; `error` says why.
    Failed,
}

/// One reply line on a worker's stdout: `{"block_id": N, "status": "success"}` or
/// `{"block_id": N, "status": "failed", "error": "..."}`. Unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReply {
    /// The block the reply is for; a reply for any other block than the one in flight fails
    /// the block in flight as a protocol error.
    pub block_id: u64,
    /// Outcome reported by user code.
    pub status: ReplyStatus,
    /// The user's error (with the Python helper: the tail of the traceback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A block that did not succeed: a kind to decide on and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BlockFailure {
    /// What happened; the caller's retry and restart policy reads this, never the message.
    pub kind: FailureKind,
    /// Diagnostic text: the user's error, or the exit status and the last stderr lines.
    pub message: String,
}

impl BlockFailure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A command line from the pipeline (`worker`, `command` or `check` key): a program and its
/// arguments, never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine {
    program: String,
    args: Vec<String>,
}

/// The pipeline gave an empty command list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("empty command: give at least the program, e.g. [\"python3\", \"process.py\"]")]
pub struct EmptyCommand;

impl CommandLine {
    /// Builds a command line from `[program, args...]`.
    ///
    /// # Errors
    ///
    /// [`EmptyCommand`] when `argv` is empty.
    pub fn new(argv: Vec<String>) -> Result<Self, EmptyCommand> {
        let mut argv = argv.into_iter();
        let program = argv.next().ok_or(EmptyCommand)?;
        Ok(Self { program, args: argv.collect() })
    }

    /// The program to run, looked up on `PATH` when it has no slash.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// The daisy process that writes a slot's logs: names their directory and heads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWriter {
    /// What the process is, as a user started it: `daisy run`, `daisy-worker`.
    pub program: String,
    /// The host it runs on, as `hostname` prints it.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// `<host>-<pid>` with characters unfit for a file name replaced: the log directory.
    pub directory: String,
}

impl LogWriter {
    /// This process: its program from `argv` (`daisy run` for the `run` subcommand of
    /// `daisy`, the binary's name otherwise), host and pid.
    pub fn this_process() -> Self {
        let (host, directory) = daisy_nats::process_identity();
        let mut args = std::env::args();
        let binary = args
            .next()
            .map(|argv0| {
                std::path::Path::new(&argv0)
                    .file_name()
                    .map_or(argv0.clone(), |name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "daisy".to_owned());
        // A subcommand (`daisy run`) says more than the binary; a flag or a path does not
        // belong in a header (it may be a password).
        let program = match args.next() {
            Some(sub) if !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_lowercase()) => {
                format!("{binary} {sub}")
            }
            _ => binary,
        };
        Self { program, host, pid: std::process::id(), directory }
    }
}

/// Where a processor runs: which task, which worker slot, where its logs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    /// Task whose blocks this slot processes; names the log sub-directory and is passed as
    /// `DAISY_TASK_ID`.
    pub task_id: String,
    /// Index of the worker slot within the task (`DAISY_WORKER_ID`); names the log files,
    /// so a restarted child of the same slot appends to the same files.
    pub worker_id: u32,
    /// Base log dir (`DAISY_LOG_DIR`); logs go to
    /// `<log_dir>/<task>/<host>-<pid>/worker_<n>.out|.err`, created on first use. Give an
    /// absolute path if children change directory.
    pub log_dir: PathBuf,
    /// The daisy process running the slot: names the logs' directory and heads them.
    pub writer: LogWriter,
    /// Extra environment variables of every child (e.g. a `PYTHONPATH` that makes
    /// `import daisy_worker` work), set after the `DAISY_*` ones.
    pub env: Vec<(String, String)>,
    /// Working directory of the children; `None` inherits the caller's. A relative program
    /// path is then best given absolute, since its resolution depends on the platform.
    pub current_dir: Option<PathBuf>,
}

impl SlotConfig {
    /// Path of the slot's stdout log, `<log_dir>/<task>/<host>-<pid>/worker_<n>.out`.
    pub fn out_log_path(&self) -> PathBuf {
        self.process_log_dir().join(format!("worker_{}.out", self.worker_id))
    }

    /// Path of the slot's stderr log, `<log_dir>/<task>/<host>-<pid>/worker_<n>.err`.
    pub fn err_log_path(&self) -> PathBuf {
        self.process_log_dir().join(format!("worker_{}.err", self.worker_id))
    }

    fn process_log_dir(&self) -> PathBuf {
        self.log_dir.join(&self.task_id).join(&self.writer.directory)
    }
}

/// Either way of running a block, so a caller can hold whichever the pipeline asked for.
#[derive(Debug)]
pub enum Processor {
    /// `worker = [..]`: a long-lived child speaking JSON lines.
    Worker(WorkerProcess),
    /// `command = [..]`: one process per block.
    Command(CommandProcess),
}

impl Processor {
    /// Runs one block, waiting at most `timeout` for it.
    ///
    /// # Errors
    ///
    /// A [`BlockFailure`] whose kind says what went wrong; see [`WorkerProcess::process`]
    /// and [`CommandProcess::process`].
    pub fn process(&mut self, block: &BlockLine, timeout: Duration) -> Result<(), BlockFailure> {
        match self {
            Processor::Worker(worker) => worker.process(block, timeout),
            Processor::Command(command) => command.process(block, timeout),
        }
    }

    /// How many times a worker child was restarted after its first start (0 for commands).
    pub fn restarts(&self) -> u64 {
        match self {
            Processor::Worker(worker) => worker.restarts(),
            Processor::Command(_) => 0,
        }
    }

    /// Stops a worker child gracefully (EOF on stdin, then a kill after `grace`); nothing to
    /// do for commands.
    pub fn shutdown(&mut self, grace: Duration) {
        if let Processor::Worker(worker) = self {
            worker.shutdown(grace);
        }
    }
}

/// Encodes the protocol line (without the newline).
fn encode_block_line(block: &BlockLine) -> Result<String, BlockFailure> {
    serde_json::to_string(block).map_err(|err| {
        BlockFailure::new(
            FailureKind::Failed,
            format!("cannot encode block {} as json: {err}", block.block_id),
        )
    })
}

/// Default time to wait for a killed child to be reaped before giving up on it.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processors_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Processor>();
        assert_send::<CheckProcess>();
    }

    #[test]
    fn block_line_and_replies_have_the_documented_json_shape() {
        let line = BlockLine {
            task: "smooth".to_owned(),
            block_id: 12,
            read_roi: BlockRoi { offset: vec![0], shape: vec![8] },
            write_roi: BlockRoi { offset: vec![2], shape: vec![4] },
            attempt: 1,
        };
        assert_eq!(
            serde_json::to_string(&line).ok().as_deref(),
            Some(
                r#"{"task":"smooth","block_id":12,"read_roi":{"offset":[0],"shape":[8]},"write_roi":{"offset":[2],"shape":[4]},"attempt":1}"#
            )
        );
        let failed: BlockReply = serde_json::from_str(
            r#"{"block_id": 3, "status": "failed", "error": "x", "extra": 1}"#,
        )
        .expect("valid reply");
        assert_eq!(failed.status, ReplyStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("x"));
        assert_eq!(CommandLine::new(Vec::new()), Err(EmptyCommand));
    }
}
