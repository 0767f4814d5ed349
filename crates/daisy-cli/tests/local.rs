//! A local run's lifecycle from the user's seat (issue 14): `daisy run pipeline.toml` in a
//! directory, then the operator commands in the same directory with no `--nats` and no
//! `NATS_URL` — while the run runs (they use its live server) and after it ended (they start
//! its server on the same store for their own duration); one run per run directory; `NATS_URL`
//! honoured by `daisy run`; one exit-code rule.
//!
//! Every test runs from its own directory with the default `.daisy` and `daisy_logs`, as a
//! user does. Blocks run `util::BLOCK_SH`, which records every attempt, so "ran again" is
//! counted on the processor's side. Waiting is on a condition under a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{
    BLOCK_SH, Proc, RUN_DEADLINE, Setup, block_env, counts, daisy, describe, line_count,
    read_attempts, run, task, wait_until,
};

/// A user's directory: `p.toml`, `block.sh`, and what `daisy run p.toml` leaves there.
struct Workstation {
    dir: TempDir,
}

impl Workstation {
    /// A directory with `p.toml` of one task `t` of `blocks` blocks (`extra`: more keys).
    fn new(blocks: u64, extra: &str) -> Workstation {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("block.sh"), BLOCK_SH).unwrap();
        let station = Workstation { dir };
        station.pipeline(blocks, extra);
        station
    }

    fn pipeline(&self, blocks: u64, extra: &str) {
        let command = format!("command = [\"sh\", \"{}\"]", self.path("block.sh").display());
        std::fs::write(self.path("p.toml"), task("t", blocks, &format!("{command}\n{extra}")))
            .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `daisy <args>` from the directory, with no `NATS_URL` (blocks record their attempts).
    fn daisy(&self, args: &[&str]) -> Command {
        let mut command = daisy();
        command.args(args);
        block_env(&mut command, &self.path("attempts"), self.dir.path());
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        run(&mut self.daisy(args))
    }

    fn attempt_counts(&self) -> Vec<usize> {
        read_attempts(&self.path("attempts")).values().map(Vec::len).collect()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("--json output: {err}\n{}", describe(output)))
}

/// A URL where nothing listens: a port the OS gave out and that was closed again.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

fn url_file(dir: &Path) -> PathBuf {
    dir.join(".daisy/nats/url")
}

#[test]
fn operator_commands_work_after_the_local_run_ended() {
    let station = Workstation::new(4, "max_retries = 0");
    let first = station.output(&["run", "p.toml", "--no-progress"]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    // The embedded server is gone, and so is its address: nobody may dial a dead server.
    assert!(!url_file(station.dir.path()).try_exists().unwrap());

    let text = station.output(&["status"]);
    assert_eq!(text.status.code(), Some(0), "a succeeded run: {}", describe(&text));
    assert!(stdout(&text).contains("run p on nats://127.0.0.1:"), "{}", describe(&text));
    assert!(stdout(&text).contains("succeeded"), "{}", describe(&text));
    assert!(stderr(&text).contains("started its NATS server"), "{}", describe(&text));
    let watch = station.output(&["status", "--watch"]);
    assert_eq!(watch.status.code(), Some(0), "a finished run ends the watch: {}", describe(&watch));

    let runs = station.output(&["runs", "--json"]);
    assert_eq!(runs.status.code(), Some(0), "{}", describe(&runs));
    assert_eq!(json(&runs)["runs"][0]["state"], "succeeded", "{}", describe(&runs));
    // A worker or a scheduler joins a running daisy run only: they never start a server.
    for (binary, args) in [
        (env!("CARGO_BIN_EXE_daisy-worker"), ["--run", "p"]),
        (env!("CARGO_BIN_EXE_daisy-scheduler"), ["p.toml", "--no-progress"]),
    ] {
        let mut command = Command::new(binary);
        command.args(args);
        block_env(&mut command, &station.path("attempts"), station.dir.path());
        let output = run(&mut command);
        assert_eq!(output.status.code(), Some(2), "{binary}: {}", describe(&output));
        assert!(stderr(&output).contains("no daisy run is running"), "{}", describe(&output));
    }

    // Requests that do not apply to a finished, successful run are bad input.
    let retry = station.output(&["retry", "p"]);
    assert_eq!(retry.status.code(), Some(2), "{}", describe(&retry));
    assert!(stderr(&retry).contains("no failed or orphaned"), "{}", describe(&retry));
    let cancel = station.output(&["cancel", "p"]);
    assert_eq!(cancel.status.code(), Some(2), "{}", describe(&cancel));

    // A layout change names the fix for this very command; the delete works too.
    station.pipeline(5, "max_retries = 0");
    let changed = station.output(&["run", "p.toml", "--no-progress"]);
    assert_eq!(changed.status.code(), Some(2), "{}", describe(&changed));
    assert!(stderr(&changed).contains("`daisy run p.toml --fresh`"), "{}", describe(&changed));
    let delete = station.output(&["runs", "--delete", "p"]);
    assert_eq!(delete.status.code(), Some(0), "{}", describe(&delete));
    assert!(stdout(&delete).contains("deleted run p"), "{}", describe(&delete));
    let gone = station.output(&["status", "p"]);
    assert_eq!(gone.status.code(), Some(2), "no such run: {}", describe(&gone));
    assert_eq!(station.attempt_counts(), [1, 1, 1, 1], "no block ran meanwhile");
}

#[test]
fn a_failed_local_run_is_retried_and_resumed_with_the_daisy_run_its_hints_name() {
    let station = Workstation::new(4, "max_retries = 0");
    let failed = run(station.daisy(&["run", "p.toml", "--no-progress"]).env("FAIL_ONCE", "t:2"));
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));

    let text = station.output(&["status"]);
    assert_eq!(text.status.code(), Some(1), "a failed run: {}", describe(&text));
    let hint = stdout(&text);
    assert!(hint.contains("failed") && hint.contains("\n  daisy run p.toml\n"), "{hint}");
    assert!(!hint.contains("daisy-scheduler"), "{hint}");

    let retry = station.output(&["retry", "p"]);
    assert_eq!(retry.status.code(), Some(0), "{}", describe(&retry));
    let hint = stdout(&retry);
    assert!(hint.contains("\n  daisy run p.toml") && !hint.contains("--nats"), "{hint}");

    let resumed = station.output(&["run", "p.toml", "--no-progress", "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    assert_eq!(counts(&json(&resumed), "t"), [4, 4, 3, 0, 0]);
    let mut attempts = station.attempt_counts();
    attempts.sort();
    assert_eq!(attempts, [1, 1, 1, 2], "only the failed block ran again");
    let status = station.output(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", describe(&status));
    assert_eq!(json(&status)["succeeded"], true);
}

#[test]
fn operator_commands_use_the_live_server_of_a_running_local_run_and_cancel_names_daisy_run() {
    let station = Workstation::new(20, "max_workers = 2");
    let mut running = Proc::spawn(
        "daisy run",
        station.daisy(&["run", "p.toml", "--no-progress"]).env("SLEEP", "0.3"),
    );
    wait_until("blocks to start", RUN_DEADLINE, || line_count(&station.path("attempts")) >= 2);

    let status = station.output(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", describe(&status));
    let status = json(&status);
    assert_eq!(status["leader"]["pid"], running.pid(), "{status}");
    let url = std::fs::read_to_string(url_file(station.dir.path())).unwrap();
    let text = station.output(&["status"]);
    assert!(stdout(&text).contains(&format!("on {}", url.trim())), "{}", describe(&text));
    assert!(!stderr(&text).contains("started its NATS server"), "{}", describe(&text));

    let cancel = station.output(&["cancel", "p"]);
    assert_eq!(cancel.status.code(), Some(0), "{}", describe(&cancel));
    let hint = stdout(&cancel);
    assert!(hint.contains("Resume it with:\n  daisy run p.toml"), "{hint}");
    assert!(!hint.contains("daisy-scheduler") && !hint.contains("--nats"), "{hint}");
    assert_eq!(running.wait(RUN_DEADLINE), Some(1), "{}", running.describe());

    let resumed = station.output(&["run", "p.toml", "--no-progress", "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    assert_eq!(counts(&json(&resumed), "t")[..2], [20, 20]);
    assert!(station.attempt_counts().iter().all(|&n| n == 1), "no block ran twice");
}

#[test]
fn a_second_run_of_a_run_dir_is_refused_naming_the_first_until_it_dies() {
    let station = Workstation::new(40, "max_workers = 2");
    let mut first = Proc::spawn(
        "daisy run",
        station.daisy(&["run", "p.toml", "--no-progress"]).env("SLEEP", "0.3"),
    );
    wait_until("blocks to start", RUN_DEADLINE, || line_count(&station.path("attempts")) >= 2);

    // Another mode, same run directory: it would run every block a second time.
    let second = station.output(&["run", "p.toml", "--in-process", "--no-progress"]);
    assert_eq!(second.status.code(), Some(2), "{}", describe(&second));
    let message = stderr(&second);
    for expected in [
        "in use by another daisy run".to_owned(),
        "`daisy run p.toml` (embedded NATS".to_owned(),
        format!("pid {}", first.pid()),
        "since 20".to_owned(),
    ] {
        assert!(message.contains(&expected), "{expected}: {message}");
    }
    let before = line_count(&station.path("attempts"));
    assert!(
        read_attempts(&station.path("attempts"))
            .values()
            .flatten()
            .all(|attempt| attempt.pid == first.pid()),
        "the refused run ran no block"
    );

    // SIGKILL: the OS releases the lock, and the next run takes over the store.
    first.kill();
    let resumed = station.output(&["run", "p.toml", "--no-progress", "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    assert_eq!(counts(&json(&resumed), "t")[..2], [40, 40]);
    assert!(line_count(&station.path("attempts")) >= before);
}

#[test]
fn daisy_run_uses_nats_url_names_it_first_and_embedded_forces_the_embedded_server() {
    let setup = Setup::new();
    let station = Workstation::new(3, "");
    let output =
        run(station.daisy(&["run", "p.toml", "--no-progress"]).env("NATS_URL", setup.nats.url()));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let first_line = stderr(&output).lines().next().unwrap_or_default().to_owned();
    assert!(
        first_line.contains(setup.nats.url()) && first_line.contains("NATS_URL"),
        "{first_line}"
    );
    assert_eq!(setup.recorded_done("p").len(), 3, "recorded on the NATS_URL server");
    assert!(!station.path(".daisy/nats").try_exists().unwrap(), "no embedded server started");

    let embedded = run(station
        .daisy(&["run", "p.toml", "--embedded", "--no-progress"])
        .env("NATS_URL", setup.nats.url()));
    assert_eq!(embedded.status.code(), Some(0), "{}", describe(&embedded));
    let first_line = stderr(&embedded).lines().next().unwrap_or_default().to_owned();
    assert!(first_line.contains("embedded NATS server"), "{first_line}");

    // --in-process wins over the environment too.
    let in_process = run(station
        .daisy(&["run", "p.toml", "--in-process", "--no-progress"])
        .env("NATS_URL", setup.nats.url()));
    assert_eq!(in_process.status.code(), Some(0), "{}", describe(&in_process));

    // A NATS_URL that leads nowhere: exit code 3, and the message names where it came from.
    let dead = run(station.daisy(&["run", "p.toml", "--no-progress"]).env("NATS_URL", dead_url()));
    assert_eq!(dead.status.code(), Some(3), "{}", describe(&dead));
    assert!(stderr(&dead).contains("NATS_URL") && stderr(&dead).contains("--embedded"));
}

#[test]
fn exit_codes_tell_bad_input_from_an_unreachable_server_in_every_binary() {
    let station = Workstation::new(2, "");
    let dead = dead_url();
    for args in [
        vec!["status", "--nats", &dead],
        vec!["runs", "--nats", &dead],
        vec!["retry", "p", "--nats", &dead],
        vec!["cancel", "p", "--nats", &dead],
        vec!["run", "p.toml", "--nats", &dead, "--no-progress"],
    ] {
        let output = station.output(&args);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {}", describe(&output));
        assert!(stderr(&output).contains("cannot connect to NATS"), "{}", describe(&output));
    }
    let output = run(station.daisy(&["runs"]).env("NATS_URL", &dead));
    assert_eq!(output.status.code(), Some(3), "NATS_URL: {}", describe(&output));

    // No server at all in a directory without runs: bad input, naming the ways to give one.
    let output = station.output(&["status"]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(stderr(&output).contains("--nats") && stderr(&output).contains("NATS_URL"));
    std::fs::write(station.path("p.toml"), "[[task]]\nid = \"t\"\n").unwrap();
    let output = station.output(&["run", "p.toml"]);
    assert_eq!(output.status.code(), Some(2), "a bad pipeline: {}", describe(&output));

    for binary in [
        env!("CARGO_BIN_EXE_daisy"),
        env!("CARGO_BIN_EXE_daisy-scheduler"),
        env!("CARGO_BIN_EXE_daisy-worker"),
    ] {
        let help = run(Command::new(binary).arg("--help"));
        let help = stdout(&help);
        assert!(help.contains("3  the NATS server cannot be reached"), "{binary}: {help}");
    }
    for command in ["run", "status", "runs", "retry", "cancel"] {
        let help = stdout(&station.output(&[command, "--help"]));
        assert!(help.contains("2  bad input") && help.contains("3  the NATS"), "{command}: {help}");
    }
    let help = stdout(&station.output(&["run", "--help"]));
    assert!(help.contains("$NATS_URL") && help.contains("--embedded"), "{help}");
}

#[test]
fn status_watch_of_a_local_run_ends_with_its_daisy_run_and_names_the_resume() {
    let station = Workstation::new(40, "max_workers = 2");
    let mut running = Proc::spawn(
        "daisy run",
        station.daisy(&["run", "p.toml", "--no-progress"]).env("SLEEP", "0.3"),
    );
    wait_until("blocks to start", RUN_DEADLINE, || line_count(&station.path("attempts")) >= 2);
    // Output to files, to see when the watch has shown its first status.
    let (shown, said) = (station.path("watch.out"), station.path("watch.err"));
    let mut watch = station.daisy(&["status", "--watch"]);
    watch.stdout(std::fs::File::create(&shown).unwrap());
    watch.stderr(std::fs::File::create(&said).unwrap());
    let mut watch = KillOnDrop(watch.spawn().unwrap());
    wait_until("the first status", RUN_DEADLINE, || {
        std::fs::read_to_string(&shown).is_ok_and(|text| text.contains("running"))
    });

    running.signal("INT");
    assert_eq!(running.wait(RUN_DEADLINE), Some(1), "{}", running.describe());
    let mut code = None;
    wait_until("the watch to end", RUN_DEADLINE, || {
        code = watch.0.try_wait().unwrap().map(|status| status.code());
        code.is_some()
    });
    let said = std::fs::read_to_string(&said).unwrap();
    assert_eq!(code, Some(Some(1)), "{said}");
    assert!(said.contains("ended before the run finished"), "{said}");
    assert!(said.contains("resume it with:\n  daisy run p.toml"), "{said}");
}

/// A child whose output goes to files, SIGKILLed if the test ends first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
