//! `worker = [..]`: one long-lived child per worker slot, one JSON line in and one out per
//! block.
//!
//! # Ownership
//!
//! [`WorkerProcess`] owns the child and two helper threads per child: a stdout reader
//! (replies → channel, anything else → the `.out` log) and a waiter (reaps the child and
//! reports its exit). The child's stderr goes straight to the `.err` log.
//!
//! ```text
//!   process() ── line ──► child stdin
//!      ▲                   child stdout ──► reader thread ──┬─ Reply ───────┐
//!      │                                                    └─ other → .out │
//!      │                   child exit ───► waiter thread ── Exited ─────────┤
//!      └──── recv_timeout(block timeout) ◄── sync_channel(EVENT_CAPACITY) ◄─┘
//! ```
//!
//! # Lifecycle
//!
//! Spawned lazily by the first [`WorkerProcess::process`]. After a timeout (killed), a
//! protocol error (killed), a death mid-block, or a death noticed between blocks, the old child is reaped and the next
//! `process` spawns a new one; [`WorkerProcess::restarts`] counts those respawns so the
//! caller can enforce `max_worker_restarts`. `shutdown` closes stdin, waits, then kills;
//! dropping kills.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, ChildStdout, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::command::{join_logged, kill_logged};
use super::group::{base_command, reap, spawn_failure, spawn_registered};
use super::logs::{
    SlotLogFiles, append_line, log_len, log_open_failure, open_slot_logs, separator_line,
    tail_since, with_stderr_tail,
};
use super::{
    BlockFailure, BlockLine, BlockReply, CommandLine, FailureKind, REAP_TIMEOUT, ReplyStatus,
    SlotConfig, encode_block_line,
};

/// Bound of the child → caller event channel. Replies only answer our lines, so a handful
/// suffices; a child spamming replies is slowed down (its stdout fills), never buffered
/// without limit.
const EVENT_CAPACITY: usize = 64;
/// Longest stdout line read in one piece; longer output is passed to the log in chunks.
const MAX_LINE_BYTES: u64 = 1 << 20;
/// Longest line searched for a reply glued to the end of unterminated output.
const MAX_SALVAGE_LINE_BYTES: usize = 64 * 1024;
/// How much of a line that broke the protocol a block's error quotes: enough to see the
/// mistake, short enough for a summary line.
const MAX_QUOTED_LINE_CHARS: usize = 200;
/// After the child exited, how long a reply it wrote just before may take to arrive.
const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(500);
/// After the child closed stdout (or died), how long it may take to exit before the kill.
const DEATH_GRACE: Duration = Duration::from_millis(500);

/// A long-lived `worker = [..]` child of one worker slot, speaking JSON lines.
#[derive(Debug)]
pub struct WorkerProcess {
    command: CommandLine,
    slot: SlotConfig,
    /// The current child; `None` before the first block and after it died or was killed.
    running: Option<RunningWorker>,
    /// How many children were started for this slot, including the first.
    spawn_count: u64,
}

impl WorkerProcess {
    /// A worker for `command` in `slot`; the child is started by the first [`Self::process`].
    pub fn new(command: CommandLine, slot: SlotConfig) -> Self {
        Self { command, slot, running: None, spawn_count: 0 }
    }

    /// Sends `block` to the child (starting or restarting it as needed) and waits at most
    /// `timeout` for its reply.
    ///
    /// # Errors
    ///
    /// * [`FailureKind::Failed`]: the child replied `"failed"`; the message is its `error`.
    ///   Also when it broke the protocol (a reply for another block, or a JSON object with a
    ///   `block_id` that is not a reply, e.g. `"status": "sucess"`): the message quotes the
    ///   line, and the child is killed so that the next call starts a fresh one.
    /// * [`FailureKind::Timeout`]: no reply within `timeout`; the child's process group was
    ///   killed and the next call starts a new child.
    /// * [`FailureKind::ProcessDied`]: the child exited or closed stdout before replying;
    ///   the message has the exit status and the last stderr lines. The next call restarts
    ///   it.
    /// * [`FailureKind::SpawnFailed`]: the child (or its log files) could not be started.
    ///
    /// A child that exits with status 0 without answering (a worker that quits after N
    /// blocks, noticed only after the next line was written) is restarted and the block
    /// resent once within the same `timeout`; a second clean exit is `ProcessDied`.
    pub fn process(&mut self, block: &BlockLine, timeout: Duration) -> Result<(), BlockFailure> {
        let mut line = encode_block_line(block)?;
        line.push('\n');
        let block_id = block.block_id;
        let err_path = self.slot.err_log_path();
        let stderr_start = log_len(&err_path);
        // The timeout covers the whole call, including a resend after a clean exit.
        let deadline = Instant::now().checked_add(timeout);
        let mut resent = false;
        loop {
            let mut worker = self.live_worker()?;
            let pid = worker.pid;
            let remaining = deadline
                .map_or(timeout, |deadline| deadline.saturating_duration_since(Instant::now()));
            match worker.exchange(&line, block_id, remaining, &self.slot) {
                Exchange::Replied(reply) => {
                    if worker.is_dead() {
                        worker.terminate(DEATH_GRACE, &self.slot);
                    } else {
                        self.running = Some(worker);
                    }
                    return match reply.status {
                        ReplyStatus::Success => Ok(()),
                        ReplyStatus::Failed => Err(BlockFailure::new(
                            FailureKind::Failed,
                            reply.error.unwrap_or_else(|| {
                                "worker reported failure without an error message".to_owned()
                            }),
                        )),
                    };
                }
                Exchange::TimedOut => {
                    worker.terminate(Duration::ZERO, &self.slot);
                    tracing::warn!(
                        task_id = %self.slot.task_id,
                        worker_id = self.slot.worker_id,
                        block_id,
                        pid,
                        "block timed out, worker process killed"
                    );
                    let what = format!(
                        "block {block_id} not done after {}; worker process (pid {pid}) killed",
                        humantime::format_duration(timeout)
                    );
                    let tail = tail_since(&err_path, stderr_start);
                    return Err(BlockFailure::new(
                        FailureKind::Timeout,
                        with_stderr_tail(&what, &tail),
                    ));
                }
                Exchange::ProtocolError(what) => {
                    // The child's side of the protocol is out of step: a later line cannot
                    // be trusted to answer the next block, so a fresh child takes over.
                    worker.terminate(Duration::ZERO, &self.slot);
                    return Err(BlockFailure::new(
                        FailureKind::Failed,
                        format!(
                            "worker process (pid {pid}) broke the reply protocol and was \
                             restarted: it {what}; expected one line {{\"block_id\": \
                             {block_id}, \"status\": \"success\"}} or {{\"block_id\": \
                             {block_id}, \"status\": \"failed\", \"error\": \"..\"}} (use \
                             daisy_worker.serve, or print other output to stderr)"
                        ),
                    ));
                }
                Exchange::Died => {
                    let termination = worker.terminate(DEATH_GRACE, &self.slot);
                    let clean_exit = !termination.killed
                        && matches!(termination.exit, Some(Ok(status)) if status.success());
                    if clean_exit && !resent {
                        // Most likely it exited between blocks (e.g. after N blocks, by
                        // design) and we wrote the line just before noticing: resend once.
                        tracing::info!(
                            task_id = %self.slot.task_id,
                            worker_id = self.slot.worker_id,
                            block_id,
                            pid,
                            "worker process exited cleanly without answering, resending block"
                        );
                        resent = true;
                        continue;
                    }
                    let what = match (termination.exit, termination.killed) {
                        (Some(Ok(status)), false) if status.success() => format!(
                            "worker process (pid {pid}) exited with {status} without answering \
                             block {block_id} (does the script call daisy_worker.serve?)"
                        ),
                        (Some(Ok(status)), false) => format!(
                            "worker process (pid {pid}) ended with {status} while processing \
                             block {block_id}"
                        ),
                        (Some(Err(reason)), _) => format!(
                            "worker process (pid {pid}) lost while processing block {block_id}: \
                             {reason}"
                        ),
                        _ => format!(
                            "worker process (pid {pid}) closed its stdout while processing \
                             block {block_id} and was killed"
                        ),
                    };
                    tracing::warn!(
                        task_id = %self.slot.task_id,
                        worker_id = self.slot.worker_id,
                        block_id,
                        pid,
                        "worker process died mid-block"
                    );
                    let tail = tail_since(&err_path, stderr_start);
                    return Err(BlockFailure::new(
                        FailureKind::ProcessDied,
                        with_stderr_tail(&what, &tail),
                    ));
                }
            }
        }
    }

    /// The running child if it is still alive, else a freshly started one.
    fn live_worker(&mut self) -> Result<RunningWorker, BlockFailure> {
        let Some(mut worker) = self.running.take() else {
            return self.spawn();
        };
        worker.drain_pending(&self.slot);
        if !worker.is_dead() {
            return Ok(worker);
        }
        tracing::info!(
            task_id = %self.slot.task_id,
            worker_id = self.slot.worker_id,
            pid = worker.pid,
            "worker process ended between blocks, restarting"
        );
        worker.terminate(DEATH_GRACE, &self.slot);
        self.spawn()
    }

    /// How many times a child was started again after the first one (after a timeout, a
    /// death, or an exit between blocks).
    pub fn restarts(&self) -> u64 {
        self.spawn_count.saturating_sub(1)
    }

    /// Pid (and process group id) of the current child, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|worker| worker.pid)
    }

    /// Stops the child gracefully: closes its stdin (the Python helper then exits), waits at
    /// most `grace`, then kills its process group. Returns the child's exit status when it
    /// was collected; `None` when no child was running.
    pub fn shutdown(&mut self, grace: Duration) -> Option<ExitStatus> {
        let worker = self.running.take()?;
        let pid = worker.pid;
        let termination = worker.terminate(grace, &self.slot);
        tracing::info!(
            task_id = %self.slot.task_id,
            worker_id = self.slot.worker_id,
            pid,
            killed = termination.killed,
            "worker process stopped"
        );
        termination.exit.and_then(Result::ok)
    }

    fn spawn(&mut self) -> Result<RunningWorker, BlockFailure> {
        let log_failure = |err: io::Error| log_open_failure("worker", &self.slot, &err);
        let SlotLogFiles { mut out, mut err } = open_slot_logs(&self.slot).map_err(log_failure)?;
        let child_stderr = err.try_clone().map_err(log_failure)?;
        let mut command = base_command(&self.command, &self.slot);
        command
            .env("DAISY_STDOUT_LOG", self.slot.out_log_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(child_stderr));
        let mut child = spawn_registered(&mut command)
            .map_err(|err| spawn_failure("worker", &self.slot, &self.command, &err))?;
        self.spawn_count += 1;
        let pid = child.id();
        // Written right after the start: a child that writes within microseconds of exec may
        // get a line in before it, which is harmless.
        let separator =
            separator_line(&self.slot, &format!("started `{}` as pid {pid}", self.command));
        append_line(&mut err, &separator);
        append_line(&mut out, &separator);
        drop(err);

        let internal_failure = |what: String| {
            kill_logged(pid);
            BlockFailure::new(FailureKind::SpawnFailed, what)
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let failure = internal_failure("worker child has no stdin/stdout pipe".to_owned());
            // Reap the killed child (SIGKILL makes this immediate).
            let _ = reap(&mut child);
            return Err(failure);
        };
        let (events_tx, events_rx) = mpsc::sync_channel(EVENT_CAPACITY);
        let waiter_tx = events_tx.clone();
        let waiter = thread::Builder::new()
            .name(format!("daisy-worker-{pid}-wait"))
            .spawn(move || {
                let status = reap(&mut child).map_err(|err| err.to_string());
                // The receiver is gone only when the worker was dropped; nobody listens then.
                let _ = waiter_tx.send(WorkerEvent::Exited(status));
            })
            .map_err(|err| internal_failure(format!("cannot start waiter thread: {err}")))?;
        let reader_context = ReaderContext {
            task_id: self.slot.task_id.clone(),
            worker_id: self.slot.worker_id,
            pid,
        };
        let reader = match thread::Builder::new()
            .name(format!("daisy-worker-{pid}-stdout"))
            .spawn(move || read_stdout(stdout, out, events_tx, reader_context))
        {
            Ok(reader) => reader,
            Err(err) => {
                let failure = internal_failure(format!("cannot start stdout reader: {err}"));
                join_logged(waiter);
                return Err(failure);
            }
        };
        tracing::info!(
            task_id = %self.slot.task_id,
            worker_id = self.slot.worker_id,
            pid,
            restarts = self.restarts(),
            command = %self.command,
            "worker process started"
        );
        Ok(RunningWorker {
            pid,
            stdin: Some(stdin),
            events: events_rx,
            reader: Some(reader),
            waiter: Some(waiter),
            exit: None,
            stdout_closed: false,
            last_answered: None,
        })
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(worker) = self.running.take() {
            worker.terminate(Duration::ZERO, &self.slot);
        }
    }
}

/// What the helper threads of one child report.
#[derive(Debug)]
enum WorkerEvent {
    /// A protocol reply line on stdout, with the line as written (shortened) for errors.
    Reply(BlockReply, String),
    /// A stdout line that looks like a reply but is not one (`"status": "sucess"`, a
    /// `block_id` that is not a number), shortened: a protocol error.
    Malformed(String),
    /// Stdout reached EOF (or failed): no more replies can come.
    StdoutClosed,
    /// The child was reaped, with its status or why waiting failed.
    Exited(Result<ExitStatus, String>),
}

/// How one block exchange with the child ended.
enum Exchange {
    Replied(BlockReply),
    TimedOut,
    Died,
    /// The child broke the protocol; the text says how, quoting the offending line.
    ProtocolError(String),
}

/// What `terminate` found out.
struct Termination {
    /// The exit status, if the child was reaped in time.
    exit: Option<Result<ExitStatus, String>>,
    /// Whether the child was still running when we killed it.
    killed: bool,
}

/// A started child and its helper threads.
#[derive(Debug)]
struct RunningWorker {
    /// Pid of the child, also the id of its process group.
    pid: u32,
    /// The protocol input; dropped to send EOF.
    stdin: Option<ChildStdin>,
    events: Receiver<WorkerEvent>,
    reader: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
    /// Set once the waiter reported the exit.
    exit: Option<Result<ExitStatus, String>>,
    /// Set once the reader reported EOF.
    stdout_closed: bool,
    /// The block the child answered last: a second reply for it (a script that replies
    /// and also lets the helper reply) is a harmless stray, logged, not a protocol error.
    last_answered: Option<u64>,
}

/// What to wait for in [`RunningWorker::wait_for`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    Exited,
    StdoutClosed,
    ExitedAndStdoutClosed,
}

impl RunningWorker {
    fn is_dead(&self) -> bool {
        self.exit.is_some() || self.stdout_closed
    }

    /// Records a lifecycle event; returns the reply (and its line) when it is one.
    fn note(&mut self, event: WorkerEvent, slot: &SlotConfig) -> Option<(BlockReply, String)> {
        match event {
            WorkerEvent::Reply(reply, line) => Some((reply, line)),
            WorkerEvent::Malformed(line) => {
                log_protocol_error(slot, self.pid, &line, None);
                None
            }
            WorkerEvent::StdoutClosed => {
                self.stdout_closed = true;
                None
            }
            WorkerEvent::Exited(status) => {
                self.exit = Some(status);
                None
            }
        }
    }

    /// Takes the events that arrived while no block was in flight.
    fn drain_pending(&mut self, slot: &SlotConfig) {
        while let Ok(event) = self.events.try_recv() {
            if let Some((_, line)) = self.note(event, slot) {
                log_protocol_error(slot, self.pid, &line, None);
            }
        }
    }

    fn send_line(&mut self, line: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "stdin already closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()
    }

    fn exchange(
        &mut self,
        line: &str,
        block_id: u64,
        timeout: Duration,
        slot: &SlotConfig,
    ) -> Exchange {
        let deadline = Instant::now().checked_add(timeout);
        if let Err(error) = self.send_line(line) {
            tracing::debug!(task_id = %slot.task_id, block_id, pid = self.pid, %error, "cannot write block to worker stdin");
            return Exchange::Died;
        }
        // One event decides: every event a child sends while a block is in flight either
        // answers it or ends the exchange (a protocol error, a death).
        loop {
            let event = match deadline {
                Some(deadline) => {
                    self.events.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
                None => self.events.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            if let Ok(WorkerEvent::Reply(reply, line)) = &event
                && reply.block_id != block_id
                && Some(reply.block_id) == self.last_answered
            {
                log_protocol_error(slot, self.pid, line, None);
                continue;
            }
            let exchange = self.decide(event, block_id, slot);
            if matches!(exchange, Exchange::Replied(_)) {
                self.last_answered = Some(block_id);
            }
            return exchange;
        }
    }

    /// What one event while `block_id` is in flight means for it.
    fn decide(
        &mut self,
        event: Result<WorkerEvent, RecvTimeoutError>,
        block_id: u64,
        slot: &SlotConfig,
    ) -> Exchange {
        match event {
            Ok(WorkerEvent::Reply(reply, _)) if reply.block_id == block_id => {
                Exchange::Replied(reply)
            }
            Ok(WorkerEvent::Reply(reply, line)) => {
                log_protocol_error(slot, self.pid, &line, Some(block_id));
                Exchange::ProtocolError(format!(
                    "replied for block {} while block {block_id} was in flight: {line}",
                    reply.block_id
                ))
            }
            Ok(WorkerEvent::Malformed(line)) => {
                log_protocol_error(slot, self.pid, &line, Some(block_id));
                Exchange::ProtocolError(format!("wrote a line that is not a valid reply: {line}"))
            }
            Ok(WorkerEvent::StdoutClosed) => {
                self.stdout_closed = true;
                Exchange::Died
            }
            Ok(WorkerEvent::Exited(status)) => {
                self.exit = Some(status);
                // A reply written just before exiting may still be in the pipe.
                match self.wait_for(EXIT_DRAIN_GRACE, Until::StdoutClosed, Some(block_id), slot) {
                    Some(reply) => Exchange::Replied(reply),
                    None => Exchange::Died,
                }
            }
            Err(RecvTimeoutError::Timeout) => Exchange::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Exchange::Died,
        }
    }

    /// Receives events for at most `within` until `until` holds. A reply for
    /// `expected_block` ends the wait and is returned; other replies are logged.
    fn wait_for(
        &mut self,
        within: Duration,
        until: Until,
        expected_block: Option<u64>,
        slot: &SlotConfig,
    ) -> Option<BlockReply> {
        let deadline = Instant::now().checked_add(within);
        loop {
            let done = match until {
                Until::Exited => self.exit.is_some(),
                Until::StdoutClosed => self.stdout_closed,
                Until::ExitedAndStdoutClosed => self.exit.is_some() && self.stdout_closed,
            };
            if done {
                return None;
            }
            let remaining = deadline
                .map_or(within, |deadline| deadline.saturating_duration_since(Instant::now()));
            match self.events.recv_timeout(remaining) {
                Ok(event) => {
                    if let Some((reply, line)) = self.note(event, slot) {
                        if Some(reply.block_id) == expected_block {
                            return Some(reply);
                        }
                        log_protocol_error(slot, self.pid, &line, expected_block);
                    }
                }
                // Disconnected: both threads are done and have sent their last event.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Ends the child: EOF on stdin, up to `grace` for it to exit, then SIGKILL of its
    /// process group (which also removes grandchildren of a child that already exited), and
    /// the helper threads joined.
    fn terminate(mut self, grace: Duration, slot: &SlotConfig) -> Termination {
        drop(self.stdin.take());
        if !grace.is_zero() {
            self.wait_for(grace, Until::Exited, None, slot);
        }
        let killed = self.exit.is_none();
        kill_logged(self.pid);
        self.wait_for(REAP_TIMEOUT, Until::ExitedAndStdoutClosed, None, slot);
        match (self.exit.is_some(), self.waiter.take()) {
            (true, Some(waiter)) => join_logged(waiter),
            (false, Some(_)) => {
                tracing::error!(pid = self.pid, "killed worker process not reaped in time");
            }
            (_, None) => {}
        }
        match (self.stdout_closed, self.reader.take()) {
            (true, Some(reader)) => join_logged(reader),
            (false, Some(_)) => tracing::warn!(
                pid = self.pid,
                "worker stdout still open after kill (a process outside its group holds it)"
            ),
            (_, None) => {}
        }
        Termination { exit: self.exit.take(), killed }
    }
}

/// Logs a line that broke the protocol; `in_flight` is the block it fails, if any (a line
/// written between blocks fails nothing and is only logged).
fn log_protocol_error(slot: &SlotConfig, pid: u32, line: &str, in_flight: Option<u64>) {
    tracing::warn!(
        task_id = %slot.task_id,
        worker_id = slot.worker_id,
        pid,
        block_id = in_flight,
        line,
        "worker process broke the reply protocol"
    );
}

/// `line` as text of at most [`MAX_QUOTED_LINE_CHARS`] characters, for an error message.
fn quoted_line(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line.trim_ascii());
    match text.char_indices().nth(MAX_QUOTED_LINE_CHARS) {
        Some((cut, _)) => format!("`{}…` (shortened)", &text[..cut]),
        None => format!("`{text}`"),
    }
}

/// Who the reader thread reads for, for its log lines.
struct ReaderContext {
    task_id: String,
    worker_id: u32,
    pid: u32,
}

impl fmt::Display for ReaderContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/worker_{} pid {}", self.task_id, self.worker_id, self.pid)
    }
}

/// Reads the child's stdout until EOF: replies go to `events`, everything else is appended
/// to the `.out` log. Always ends by sending [`WorkerEvent::StdoutClosed`].
fn read_stdout(
    stdout: ChildStdout,
    mut out_log: File,
    events: SyncSender<WorkerEvent>,
    context: ReaderContext,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    let mut log_broken = false;
    let mut receiver_gone = false;
    loop {
        line.clear();
        match reader.by_ref().take(MAX_LINE_BYTES).read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::warn!(worker = %context, %error, "cannot read worker stdout");
                break;
            }
        }
        let (event, passthrough) = match split_reply(&line) {
            Some((reply, [])) => (Some(WorkerEvent::Reply(reply, quoted_line(&line))), Vec::new()),
            Some((reply, prefix)) => {
                let quoted = quoted_line(&line[prefix.len()..]);
                (Some(WorkerEvent::Reply(reply, quoted)), [prefix, b"\n"].concat())
            }
            // Also logged: the user sees the bad line where the output of the child is.
            None if is_malformed_reply(&line) => {
                (Some(WorkerEvent::Malformed(quoted_line(&line))), std::mem::take(&mut line))
            }
            None => (None, std::mem::take(&mut line)),
        };
        if !passthrough.is_empty()
            && !log_broken
            && let Err(error) = out_log.write_all(&passthrough)
        {
            tracing::warn!(worker = %context, %error, "cannot append worker stdout to log");
            log_broken = true;
        }
        if let Some(event) = event
            && !receiver_gone
            && events.send(event).is_err()
        {
            // The worker is being dropped; keep draining so the child never blocks on a
            // full pipe before it is killed.
            receiver_gone = true;
        }
    }
    let _ = events.send(WorkerEvent::StdoutClosed);
}

/// Finds a protocol reply in a stdout line: the whole line, or a reply glued to the end of
/// output that was printed without a newline (`garbage{"block_id":1,...}`). Returns the
/// reply and the bytes before it.
fn split_reply(line: &[u8]) -> Option<(BlockReply, &[u8])> {
    let body = line.trim_ascii_end();
    if body.is_empty() {
        return None;
    }
    if let Ok(reply) = serde_json::from_slice::<BlockReply>(body) {
        return Some((reply, &[]));
    }
    if body.len() > MAX_SALVAGE_LINE_BYTES
        || !body.ends_with(b"}")
        || !contains(body, b"\"block_id\"")
    {
        return None;
    }
    body.iter().enumerate().skip(1).filter(|(_, byte)| **byte == b'{').find_map(|(start, _)| {
        serde_json::from_slice::<BlockReply>(&body[start..])
            .ok()
            .map(|reply| (reply, &body[..start]))
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Whether a line that is not a valid reply is a JSON object with a `block_id` and a
/// `status` (an echoed block line or a JSON log record has no `status`): a reply with a
/// mistake (`"status": "sucess"`, `"block_id": "12"`), i.e. a bug in the worker's
/// side of the protocol. Waiting for a valid reply then would only end at the block's
/// timeout, so the caller fails the block at once instead.
fn is_malformed_reply(line: &[u8]) -> bool {
    let body = line.trim_ascii();
    body.starts_with(b"{")
        && contains(body, b"\"block_id\"")
        && matches!(
            serde_json::from_slice(body),
            Ok(serde_json::Value::Object(object))
                if object.contains_key("block_id") && object.contains_key("status")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reply_finds_whole_and_glued_replies() {
        let whole = split_reply(b"{\"block_id\": 3, \"status\": \"success\"}\n");
        assert!(
            matches!(whole, Some((BlockReply { block_id: 3, .. }, prefix)) if prefix.is_empty())
        );

        let glued =
            split_reply(b"progress 50%{\"block_id\":4,\"status\":\"failed\",\"error\":\"x\"}\r\n");
        let (reply, prefix) = glued.expect("glued reply is found");
        assert_eq!(reply.status, ReplyStatus::Failed);
        assert_eq!(reply.error.as_deref(), Some("x"));
        assert_eq!(prefix, b"progress 50%");

        assert!(split_reply(b"hello world\n").is_none());
        assert!(split_reply(b"{\"block_id\": 3, \"status\": \"ok\"}\n").is_none());
        assert!(split_reply(b"{\"other\": 1}\n").is_none());
        assert!(split_reply(b"\n").is_none());
    }
}
