//! Helpers to run the binaries, and the harness of the NATS tests (`faults`, `ops`) and of
//! the `daisy run` tests (`run`).
//!
//! [`Setup`] owns a test's `nats-server` (daisy-testkit), its directory and a client that
//! reads what a run recorded; [`Proc`] guards a spawned binary. Every block of a NATS test
//! runs [`BLOCK_SH`], and every user process of a `run` test records its attempts the same
//! way, so attempts are counted on the processor's side ([`read_attempts`]). Waiting is on a
//! condition under a deadline, never a fixed sleep (STYLE §2.7).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use daisy_nats::{ConnectOptions, Nats};
use daisy_proto::{Event, OutcomeKind, OutcomeReport, RunId};
use daisy_testkit::TestNats;
use serde_json::Value;
use tempfile::TempDir;

/// The `daisy` binary built for this test run.
pub fn daisy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_daisy"))
}

/// Runs a command and returns its output.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

/// Daisy's own plans, shared with daisy-core's tests.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../daisy-core/tests/fixtures/daisy-plans")
}

/// Stdout and stderr as text, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One attempt of a block: appends `<task> <block id> <attempt> <worker pid>` to `$ATTEMPTS`,
/// then dies with its daisy-worker if `$POISON` (`task:id,..`) names it, fails once (exit 3)
/// if `$FAIL_ONCE` (`task:id`) names it and no marker file says it did, else sleeps `$SLEEP`
/// seconds (so that a kill lands mid-run). Run by `sh`, or as an executable file.
pub const BLOCK_SH: &str = r#"#!/bin/sh
attempt=$(printf '%s' "$DAISY_BLOCK" | sed 's/.*"attempt":\([0-9]*\).*/\1/')
echo "$DAISY_TASK_ID $DAISY_BLOCK_ID $attempt $PPID" >> "$ATTEMPTS"
case ",$POISON," in *",$DAISY_TASK_ID:$DAISY_BLOCK_ID,"*) kill -9 "$PPID"; exit 1;; esac
if [ "$DAISY_TASK_ID:$DAISY_BLOCK_ID" = "$FAIL_ONCE" ] && [ ! -e "$ATTEMPTS.failed" ]; then
  touch "$ATTEMPTS.failed"
  echo "boom in $DAISY_BLOCK_ID" >&2
  exit 3
fi
sleep "${SLEEP:-0}"
"#;

/// How long a whole run may take on a loaded 2-core machine.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// How often deadline-bounded waits poll.
pub const POLL: Duration = Duration::from_millis(25);

/// A NATS test's server, directory (pipelines, `block.sh`, attempts files, logs, state) and
/// the runtime and client that read a run's streams.
pub struct Setup {
    pub nats: TestNats,
    pub dir: TempDir,
    /// One worker thread keeps the client's connection served between `block_on` calls.
    pub runtime: tokio::runtime::Runtime,
    pub client: Nats,
    /// Plain JetStream, to read a run's events without leaving consumers behind.
    pub jetstream: async_nats::jetstream::Context,
}

impl Setup {
    /// Starts the server, connects, and writes `block.sh`.
    pub fn new() -> Setup {
        let nats = TestNats::start().expect("nats-server starts");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(nats.wait_ready(Duration::from_secs(20))).expect("jetstream is ready");
        let client = runtime
            .block_on(daisy_nats::connect(&ConnectOptions::new(nats.url())))
            .expect("the test connects");
        let jetstream = runtime.block_on(async {
            async_nats::jetstream::new(
                async_nats::connect(nats.url()).await.expect("the test connects"),
            )
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("block.sh"), BLOCK_SH).unwrap();
        Setup { nats, dir, runtime, client, jetstream }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<run>.toml`, the pipeline of `run` (`daisy run` names a run after its file).
    pub fn pipeline_file(&self, run: &str) -> PathBuf {
        self.path(&format!("{run}.toml"))
    }

    /// Writes `<run>.toml`.
    pub fn pipeline(&self, run: &str, text: &str) {
        std::fs::write(self.pipeline_file(run), text).unwrap();
    }

    /// A [`task`] that runs `block.sh`; `extra` adds keys.
    pub fn task(&self, id: &str, blocks: u64, extra: &str) -> String {
        let command = format!("command = [\"sh\", \"{}\"]", self.path("block.sh").display());
        task(id, blocks, &format!("{command}\n{extra}"))
    }

    /// `daisy-scheduler` of `run` on `<run>.toml`, with a 2 s lease and a JSON summary.
    pub fn scheduler(&self, run: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy-scheduler"));
        command.arg("--nats").arg(self.nats.url()).arg(self.pipeline_file(run)).args([
            "--run-id",
            run,
            "--lease-ttl",
            "2s",
            "--json",
            "--no-progress",
        ]);
        self.block_env(&mut command, run);
        command
    }

    /// `daisy-worker` of `run` with one slot.
    pub fn worker(&self, run: &str) -> Command {
        self.worker_with_slots(run, 1)
    }

    /// `daisy-worker` of `run` with `slots` slots.
    pub fn worker_with_slots(&self, run: &str, slots: u32) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_daisy-worker"));
        command
            .arg("--nats")
            .arg(self.nats.url())
            .args(["--run", run, "--slots", &slots.to_string()])
            .arg("--log-dir")
            .arg(self.path("logs"))
            .arg("--state-dir")
            .arg(self.path("state"));
        self.block_env(&mut command, run);
        command
    }

    /// `daisy run <run>.toml --nats URL`, with state and logs in the directory.
    pub fn daisy_run(&self, run: &str) -> Command {
        let mut command =
            daisy_run(&self.pipeline_file(run), self.dir.path(), &self.attempts_file(run));
        command.arg("--nats").arg(self.nats.url()).arg("--no-progress");
        command
    }

    /// [`block_env`] with attempts in `attempts-<run>`, run from the directory.
    fn block_env(&self, command: &mut Command, run: &str) {
        block_env(command, &self.attempts_file(run), self.dir.path());
    }

    pub fn attempts_file(&self, run: &str) -> PathBuf {
        self.path(&format!("attempts-{run}"))
    }

    /// The attempts of `run`'s blocks, per (task, block id), in the order they started.
    pub fn attempts(&self, run: &str) -> BTreeMap<(String, u64), Vec<Attempt>> {
        read_attempts(&self.attempts_file(run))
    }

    /// How often each (task, block id) of `run` was attempted.
    pub fn attempt_counts(&self, run: &str) -> BTreeMap<(String, u64), usize> {
        self.attempts(run).into_iter().map(|(block, runs)| (block, runs.len())).collect()
    }

    pub fn attempt_lines(&self, run: &str) -> usize {
        line_count(&self.attempts_file(run))
    }

    /// Every outcome report recorded in `run`'s event stream so far.
    pub fn recorded_reports(&self, run: &str) -> Vec<OutcomeReport> {
        let events = self.recorded_events(run);
        events
            .into_iter()
            .filter_map(|event| match event {
                Event::Outcomes(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    /// Every decodable event in `run`'s event stream, oldest first; none if the stream does
    /// not exist (yet).
    pub fn recorded_events(&self, run: &str) -> Vec<Event> {
        self.stored_events(run).into_iter().filter_map(|stored| stored.event).collect()
    }

    /// Every message in `run`'s event stream, oldest first, with when the server stored it;
    /// none if the stream does not exist (yet).
    ///
    /// Reads message by message by sequence rather than through a replay: tests poll this
    /// every [`POLL`], and each replay leaves an ordered consumer on the server for 30 s,
    /// enough of them to hit the server's limit of 1000 consumers per stream.
    pub fn stored_events(&self, run: &str) -> Vec<StoredEvent> {
        let name = daisy_proto::subjects::event_stream(&RunId::new(run).unwrap());
        self.runtime.block_on(async {
            let Ok(stream) = self.jetstream.get_stream(&name).await else { return Vec::new() };
            let state = stream.get_info().await.expect("the event stream's state reads").state;
            let mut events = Vec::new();
            for sequence in state.first_sequence..=state.last_sequence {
                if sequence == 0 {
                    continue;
                }
                let message = stream.get_raw_message(sequence).await;
                let message = message.unwrap_or_else(|e| panic!("event {sequence} reads: {e}"));
                let stored = u64::try_from(message.time.unix_timestamp_nanos()).unwrap();
                events.push(StoredEvent {
                    sequence,
                    stored,
                    event: daisy_proto::decode(&message.payload).ok(),
                    fields: daisy_proto::decode(&message.payload).ok(),
                });
            }
            events
        })
    }

    /// The blocks (task, index) `run`'s event stream records as succeeded or skipped.
    pub fn recorded_done(&self, run: &str) -> BTreeSet<(String, u64)> {
        done_blocks(self.recorded_events(run))
    }

    /// Messages left in `run`'s block stream.
    pub fn block_message_count(&self, run: &str) -> u64 {
        let run = RunId::new(run).unwrap();
        self.runtime.block_on(async {
            let streams = self.client.open_run(&run).await.expect("the run exists");
            streams.block_message_count().await.expect("the block stream answers")
        })
    }

    /// Whether `daisy cancel`'s mark is in `run`'s KV status.
    pub fn cancelled(&self, run: &str) -> bool {
        let run = RunId::new(run).unwrap();
        self.runtime.block_on(async {
            let streams = self.client.open_run(&run).await.expect("the run exists");
            streams.get_status().await.expect("status reads").is_some_and(|s| s.cancelled)
        })
    }
}

/// With `DAISY_TEST_KEEP_TMP=1`, keeps the test's directory (pipelines, logs, timelines) and
/// prints its path, as daisy-testkit does with the server's.
impl Drop for Setup {
    fn drop(&mut self) {
        let keep = std::env::var_os(daisy_testkit::KEEP_TMP_ENV_VAR).is_some_and(|v| v == "1");
        if keep && let Ok(placeholder) = tempfile::tempdir() {
            let dir = std::mem::replace(&mut self.dir, placeholder);
            eprintln!("kept the test's dir {}", dir.keep().display());
        }
    }
}

/// A 1-D task of `blocks` blocks of 10 without context (block ids are grid indices) and
/// without a command or worker; `extra` adds keys.
pub fn task(id: &str, blocks: u64, extra: &str) -> String {
    format!(
        "[[task]]\nid = \"{id}\"\ntotal_roi = {{ offset = [0], shape = [{}] }}\n\
         read_roi = {{ offset = [0], shape = [10] }}\nwrite_roi = {{ offset = [0], shape = [10] }}\n\
         read_write_conflict = false\n{extra}\n",
        blocks * 10
    )
}

/// `daisy run <pipeline>` from `dir`, with state and logs in `dir` and [`block_env`]'s
/// environment (attempts go to `attempts`).
pub fn daisy_run(pipeline: &Path, dir: &Path, attempts: &Path) -> Command {
    let mut command = daisy();
    command
        .arg("run")
        .arg(pipeline)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--log-dir")
        .arg(dir.join("logs"));
    block_env(&mut command, attempts, dir);
    command
}

/// Sets the environment [`BLOCK_SH`] reads (attempts go to `attempts`; no poison, no failure,
/// no sleep unless the test sets them), keeps the caller's `RUST_LOG` and `NATS_URL` from
/// leaking in, and runs `command` from `dir`.
pub fn block_env(command: &mut Command, attempts: &Path, dir: &Path) {
    command
        .env("ATTEMPTS", attempts)
        .env("POISON", "")
        .env("FAIL_ONCE", "")
        .env("SLEEP", "0")
        .env_remove("RUST_LOG")
        .env_remove("NATS_URL")
        .current_dir(dir);
}

/// The attempts an attempts file records (lines `<task> <block id> <attempt> <pid>`), per
/// (task, block id), in the order they started; none if there is no file yet.
pub fn read_attempts(file: &Path) -> BTreeMap<(String, u64), Vec<Attempt>> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut attempts: BTreeMap<(String, u64), Vec<Attempt>> = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "attempt line {line:?}");
        attempts
            .entry((fields[0].to_owned(), fields[1].parse().unwrap()))
            .or_default()
            .push(Attempt { attempt: fields[2].parse().unwrap(), pid: fields[3].parse().unwrap() });
    }
    attempts
}

/// The lines in `file` so far (0 if there is no file yet).
pub fn line_count(file: &Path) -> usize {
    std::fs::read_to_string(file).unwrap_or_default().lines().count()
}

/// The blocks (task, index) that `events` record as succeeded or skipped.
pub fn done_blocks(events: impl IntoIterator<Item = Event>) -> BTreeSet<(String, u64)> {
    let mut done = BTreeSet::new();
    for event in events {
        if let Event::Outcomes(report) = event {
            for result in report.results {
                if matches!(result.outcome, OutcomeKind::Success | OutcomeKind::Skipped) {
                    done.insert((report.task.clone(), result.index));
                }
            }
        }
    }
    done
}

/// One message of a run's event stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: u64,
    /// When the server stored it, in nanoseconds since the Unix epoch (the wall clock of
    /// the test's machine, like the block scripts' `date +%s%N`).
    pub stored: u64,
    /// The event, if it decodes.
    pub event: Option<Event>,
    /// The event read as plain data (`{"<Variant>": {<field>: ..}}`), so that a test can
    /// look at a field whatever the version of the protocol it was built with.
    pub fields: Option<Value>,
}

/// One line of an attempts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt number the scheduler gave the block.
    pub attempt: u32,
    /// The daisy-worker that ran it (in a `run` test: the process that ran it).
    pub pid: u32,
}

/// A child process, SIGKILLed when dropped (its stderr tail is printed if the test panics);
/// its output is collected as it comes, each stderr line with the time it arrived.
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{name} starts: {err}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = out.read_to_end(&mut buffer);
            sink.lock().unwrap().extend(buffer);
        });
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            status: None,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`INT`, `TERM`, ...), as `kill -<name>` does.
    pub fn signal(&self, name: &str) {
        assert!(self.status.is_none(), "{} exited before kill -{name}", self.name);
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(status.unwrap().success(), "kill -{name} {}", self.name);
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().unwrap());
        }
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_some()
    }

    /// Waits for the exit, up to `timeout`; returns the exit code (`None`: a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while !self.exited() {
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.status.unwrap().code()
    }

    /// Stdout so far (all of it after [`Proc::wait`]).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        lines.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Exit status, stdout and stderr so far as text, for assertion messages.
    pub fn describe(&self) -> String {
        let code = self.status.map(|status| status.code());
        format!(
            "{} exit {code:?}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.stdout(),
            self.stderr()
        )
    }

    /// When a stderr line containing `needle` first arrived.
    fn line_time(&self, needle: &str) -> Option<Instant> {
        let lines = self.stderr.lock().unwrap();
        lines.iter().find(|(_, line)| line.contains(needle)).map(|(at, _)| *at)
    }

    /// Waits for a stderr line containing `needle`; returns when it arrived.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.line_time(needle) {
                return at;
            }
            assert!(
                Instant::now() < deadline && !self.exited(),
                "{} logged no {needle:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The `--json` summary on stdout (after [`Proc::wait`]).
    pub fn json(&self) -> Value {
        let stdout = self.stdout.lock().unwrap();
        serde_json::from_slice(&stdout).unwrap_or_else(|err| {
            panic!(
                "{} --json output: {err}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                String::from_utf8_lossy(&stdout),
                self.stderr()
            )
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let lines = self.stderr.lock().unwrap();
            // DAISY_TEST_STDERR_LINES=N shows more of a failed test's processes.
            let shown = std::env::var("DAISY_TEST_STDERR_LINES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(40);
            let tail: Vec<&str> =
                lines.iter().rev().take(shown).rev().map(|(_, line)| line.as_str()).collect();
            eprintln!(
                "--- {} (pid {}), last stderr lines:\n{}",
                self.name,
                self.pid(),
                tail.join("\n")
            );
        }
    }
}

/// Waits until `predicate` holds, polling every [`POLL`]; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, predicate: impl FnMut() -> bool) {
    daisy_testkit::wait_until(timeout, POLL, what, predicate).unwrap_or_else(|err| panic!("{err}"));
}

/// A task's entry in a `--json` summary.
pub fn task_report<'a>(report: &'a Value, task: &str) -> &'a Value {
    let tasks = report["tasks"].as_array().unwrap_or_else(|| panic!("no tasks in {report}"));
    tasks.iter().find(|t| t["id"] == task).unwrap_or_else(|| panic!("no task {task} in {report}"))
}

/// Counters of a task in a `--json` summary: blocks, completed, skipped, failed, orphaned.
pub fn counts(report: &Value, task: &str) -> [u64; 5] {
    let task = task_report(report, task);
    ["blocks", "completed", "skipped", "failed", "orphaned"].map(|key| task[key].as_u64().unwrap())
}

/// Asserts that every block of `tasks` (id, blocks) ran exactly once.
pub fn assert_each_ran_once(
    attempts: &BTreeMap<(String, u64), Vec<Attempt>>,
    tasks: &[(&str, u64)],
) {
    let expected: usize = tasks.iter().map(|(_, blocks)| *blocks as usize).sum();
    assert_eq!(attempts.len(), expected, "every block ran: {attempts:?}");
    for (task, blocks) in tasks {
        for index in 0..*blocks {
            let runs = attempts.get(&((*task).to_owned(), index));
            assert_eq!(runs.map(Vec::len), Some(1), "{task} {index} ran once: {runs:?}");
        }
    }
}

/// Asserts that each of `done` (the blocks recorded as done when a run was stopped) ran
/// exactly once: the run that resumed it did not run it again.
pub fn assert_none_ran_again(
    attempts: &BTreeMap<(String, u64), Vec<Attempt>>,
    done: &BTreeSet<(String, u64)>,
) {
    for block in done {
        let runs = attempts.get(block);
        assert_eq!(runs.map(Vec::len), Some(1), "{block:?} was done when stopped: {runs:?}");
    }
}

/// Processes a run started, by the pids its scripts recorded, with their
/// start times so that a reused pid is not taken for one of them. Those
/// still alive when this is dropped are killed: a failing test leaves no
/// orphans behind.
pub struct Watched(pub Vec<(u32, u64)>);

impl Watched {
    /// The live processes among the pids in `file` (separated by whitespace).
    pub fn read(file: &Path) -> Self {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let pids = text.split_whitespace().map(|pid| pid.parse::<u32>().unwrap());
        Self(pids.filter_map(|pid| Some((pid, start_time(pid)?))).collect())
    }

    pub fn alive(&self) -> Vec<u32> {
        let alive = self.0.iter().filter(|&&(pid, start)| start_time(pid) == Some(start));
        alive.map(|&(pid, _)| pid).collect()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for pid in self.alive() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    }
}

/// When `pid` started (clock ticks after boot, from `/proc/<pid>/stat`);
/// `None` once it is gone, or dead and not yet reaped (a zombie: an orphan
/// waits for init to reap it, and init in a container may never do so).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the `(comm)` field: state is field 3 of stat(5), starttime field 22.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), Some(&("Z" | "X"))) {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// A block command that starts a child, records both pids in `$PIDS`, and hangs for a minute.
pub const HANG_SH: &str = r#"#!/bin/sh
sleep 60 &
echo "$$ $!" >> "$PIDS"
wait
"#;
