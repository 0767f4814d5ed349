//! Helpers to run the binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
