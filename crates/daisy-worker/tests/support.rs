//! Shared fixtures: temp dirs, scripts next to a copy of the Python helper, blocks, pids.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daisy_worker::process::{
    BlockLine, BlockRoi, CommandLine, LogWriter, PYTHON_HELPER_SOURCE, SlotConfig, WorkerProcess,
};
use tempfile::TempDir;

/// Generous per-block timeout for blocks that are expected to answer quickly.
pub const QUICK: Duration = Duration::from_secs(10);

pub const TASK: &str = "smooth";

pub fn slot(dir: &TempDir, worker_id: u32) -> SlotConfig {
    SlotConfig {
        task_id: TASK.to_owned(),
        worker_id,
        log_dir: dir.path().join("logs"),
        writer: LogWriter::this_process(),
        env: Vec::new(),
        current_dir: None,
    }
}

pub fn block(block_id: u64) -> BlockLine {
    BlockLine {
        task: TASK.to_owned(),
        block_id,
        read_roi: BlockRoi { offset: vec![0, 0], shape: vec![8, 8] },
        write_roi: BlockRoi { offset: vec![2, 2], shape: vec![4, 4] },
        attempt: 1,
    }
}

pub fn argv(args: &[&str]) -> CommandLine {
    CommandLine::new(args.iter().map(|arg| (*arg).to_owned()).collect()).expect("non-empty argv")
}

/// Writes `body` as `<dir>/<name>` next to a copy of `daisy_worker.py` (the documented way of
/// making the helper importable) and returns the script path.
pub fn write_script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    fs::write(dir.path().join("daisy_worker.py"), PYTHON_HELPER_SOURCE).expect("write helper");
    let path = dir.path().join(name);
    fs::write(&path, body).expect("write script");
    path
}

/// A `worker = ["python3", <script>]` processor in slot 0.
pub fn python_worker(dir: &TempDir, body: &str) -> WorkerProcess {
    let script = write_script(dir, "worker.py", body);
    let script = script.to_str().expect("utf-8 temp path");
    WorkerProcess::new(argv(&["python3", script]), slot(dir, 0))
}

/// Reads a log file; bytes that are not UTF-8 (a worker may print anything) become U+FFFD.
pub fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads a pid that a child wrote to `path`.
pub fn read_pid(path: &Path) -> u32 {
    read(path).trim().parse().expect("pid file holds a number")
}

/// Whether `pid` no longer runs: no such process, or a zombie waiting for its reaper.
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// Polls `predicate` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut predicate: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if predicate() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
