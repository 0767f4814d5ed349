//! Turns the `worker`, `command` and `check` keys of a pipeline file into
//! the processors of worker slots.
//!
//! # Where user processes run
//! A pipeline file names its scripts the way its author sees them, next to
//! the file: `worker = ["python3", "square.py"]` in `examples/x/pipeline.toml`
//! means `examples/x/square.py`, wherever `daisy run` is started from. So
//! every child starts in the pipeline file's directory, and a relative
//! program path with a slash (`./process.sh`) is made absolute against that
//! directory too (how `std::process` resolves a relative program after a
//! directory change is platform-specific). Log paths handed to the children
//! are absolute for the same reason.
//!
//! # The Python helper
//! `import daisy_worker` must work from an installed binary, without a
//! checkout of daisy-rs: the helper's source is compiled in, written to
//! `<state-dir>/python/daisy_worker.py`, and that directory is put first on
//! the children's `PYTHONPATH`.

use std::path::{Path, PathBuf};

use daisy_core::{Pipeline, ProcessSpec};
use daisy_worker::process::{
    CheckProcess, CommandLine, CommandProcess, PYTHON_HELPER_SOURCE, Processor, SlotConfig,
    WorkerProcess,
};
use daisy_worker::runner::CommandProcessor;

use crate::input::BadInput;

/// The file name of the Python helper, as `import daisy_worker` finds it.
const PYTHON_HELPER_FILE: &str = "daisy_worker.py";

/// How a task's blocks are processed.
#[derive(Debug, Clone)]
enum ProcessKind {
    /// `worker = [..]`: a long-lived process per slot.
    Worker(CommandLine),
    /// `command = [..]`: one process per block.
    Command(CommandLine),
}

/// The processes of one task, resolved against the pipeline file.
#[derive(Debug, Clone)]
pub struct TaskProcesses {
    task_id: String,
    process: ProcessKind,
    check: Option<CommandLine>,
}

/// What every child of a run shares: where it starts, where its logs go,
/// extra environment.
#[derive(Debug, Clone)]
pub struct ChildEnvironment {
    /// Absolute base log dir.
    pub log_dir: PathBuf,
    /// The pipeline file's directory, absolute.
    pub current_dir: PathBuf,
    /// `PYTHONPATH` and friends.
    pub env: Vec<(String, String)>,
}

impl TaskProcesses {
    /// The processor of worker slot `slot` of this task.
    pub fn processor(&self, slot: u32, environment: &ChildEnvironment) -> CommandProcessor {
        let slot_config = SlotConfig {
            task_id: self.task_id.clone(),
            worker_id: slot,
            log_dir: environment.log_dir.clone(),
            env: environment.env.clone(),
            current_dir: Some(environment.current_dir.clone()),
        };
        let processor = match &self.process {
            ProcessKind::Worker(command_line) => {
                Processor::Worker(WorkerProcess::new(command_line.clone(), slot_config.clone()))
            }
            ProcessKind::Command(command_line) => {
                Processor::Command(CommandProcess::new(command_line.clone(), slot_config.clone()))
            }
        };
        let check = self
            .check
            .as_ref()
            .map(|command_line| CheckProcess::new(command_line.clone(), slot_config));
        CommandProcessor::new(processor, check)
    }
}

/// The processes of every task (indexed like `pipeline.tasks()`), with
/// relative program paths resolved against `pipeline_dir`.
///
/// # Errors
/// [`BadInput`] for a task with nothing to process its blocks or an empty
/// command (the pipeline parser refuses both already; this keeps the
/// promise for pipelines built some other way).
pub fn task_processes(
    pipeline: &Pipeline,
    pipeline_file: &Path,
    pipeline_dir: &Path,
) -> Result<Vec<TaskProcesses>, BadInput> {
    pipeline
        .tasks()
        .iter()
        .map(|task| {
            let task_id = task.spec.id.to_string();
            let command_line = |key: &str, argv: &[String]| {
                let mut argv = argv.to_vec();
                if let Some(program) = argv.first_mut() {
                    *program = resolve_program(program, pipeline_dir);
                }
                CommandLine::new(argv).map_err(|err| {
                    BadInput(format!("{}: task '{task_id}': {key}: {err}", pipeline_file.display()))
                })
            };
            let process = match &task.spec.process {
                Some(ProcessSpec::Worker(argv)) => {
                    ProcessKind::Worker(command_line("worker", argv)?)
                }
                Some(ProcessSpec::Command(argv)) => {
                    ProcessKind::Command(command_line("command", argv)?)
                }
                None => {
                    return Err(BadInput(format!(
                        "{}: task '{task_id}': nothing processes its blocks: set worker = \
                         [\"python3\", \"process.py\"] or command = [\"./process-block\"]",
                        pipeline_file.display()
                    )));
                }
            };
            let check =
                task.spec.check.as_deref().map(|argv| command_line("check", argv)).transpose()?;
            Ok(TaskProcesses { task_id, process, check })
        })
        .collect()
}

/// A relative program path with a slash is relative to the pipeline file;
/// a bare name is looked up on `PATH`.
fn resolve_program(program: &str, pipeline_dir: &Path) -> String {
    let path = Path::new(program);
    if program.contains('/') && path.is_relative() {
        pipeline_dir.join(path).to_string_lossy().into_owned()
    } else {
        program.to_owned()
    }
}

/// Writes the Python helper into `<state_dir>/python/` (unless an identical
/// copy is there) and returns that directory.
///
/// # Errors
/// The directory or file cannot be written.
pub fn install_python_helper(state_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = state_dir.join("python");
    let path = dir.join(PYTHON_HELPER_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|text| text == PYTHON_HELPER_SOURCE) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    // Write and rename, so a concurrent run never imports half a file.
    let temporary = dir.join(format!("{PYTHON_HELPER_FILE}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, PYTHON_HELPER_SOURCE)?;
    std::fs::rename(&temporary, &path)?;
    Ok(dir)
}

/// `PYTHONPATH` for the children: the helper's directory first, then
/// whatever the user had.
pub fn python_path(helper_dir: &Path) -> String {
    let helper_dir = helper_dir.to_string_lossy();
    match std::env::var("PYTHONPATH") {
        Ok(existing) if !existing.is_empty() => format!("{helper_dir}:{existing}"),
        _ => helper_dir.into_owned(),
    }
}
