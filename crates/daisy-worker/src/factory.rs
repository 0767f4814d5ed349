//! Builds the processors of worker slots: the one [`ProcessorFactory`] type
//! every runtime takes, and the factory for a pipeline file's `worker`,
//! `command` and `check` keys ([`pipeline_processors`]).
//!
//! # Ownership
//! This module owns how a task's keys become processes: where they start,
//! how a relative program path resolves, which environment they get. It
//! does not run them ([`crate::process`]) nor decide what a failure means
//! (the scheduler).
//!
//! # Where user processes run
//! A pipeline file names its scripts the way its author sees them, next to
//! the file: `worker = ["python3", "square.py"]` in `examples/x/pipeline.toml`
//! means `examples/x/square.py`, wherever the run is started from. So every
//! child starts in [`ChildEnvironment::current_dir`] (the pipeline file's
//! directory for `daisy run`, `--workdir` for `daisy-worker`), and a
//! relative program path with a slash (`./process.sh`) is made absolute
//! against that directory too (how `std::process` resolves a relative
//! program after a directory change is platform-specific). Log paths handed
//! to the children are absolute for the same reason.
//!
//! # The Python helper
//! `import daisy_worker` must work from an installed binary, without a
//! checkout of daisy-rs: [`ChildEnvironment::with_python_helper`] writes the
//! compiled-in helper to `<state-dir>/python/daisy_worker.py` and puts that
//! directory first on the children's `PYTHONPATH`.
//!
//! # Why one factory type
//! The in-process and NATS runtimes, the library's closures and the
//! binaries' pipeline files all hand worker slots their processors the same
//! way, so one signature serves them all: the pipeline is an argument
//! because a NATS worker learns it from the run only after it started.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use daisy_core::{Pipeline, ProcessSpec, TaskId, TaskIndex, TaskSpec};
use daisy_proto::FailureKind;

use crate::process::{
    CheckProcess, CommandLine, CommandProcess, EmptyCommand, LogWriter, PYTHON_HELPER_SOURCE,
    Processor, SlotConfig, WorkerProcess,
};
use crate::runner::{BlockProcessor, CommandProcessor, ProcessError, WorkBlock};

/// Builds the processor of one worker slot: `(pipeline, task, slot index)`.
pub type ProcessorFactory =
    dyn Fn(&Arc<Pipeline>, TaskIndex, u32) -> Box<dyn BlockProcessor> + Send + Sync;

/// The file name of the Python helper, as `import daisy_worker` finds it.
const PYTHON_HELPER_FILE: &str = "daisy_worker.py";

/// What every child process of a run shares: where it starts, where its
/// logs go, extra environment.
#[derive(Debug, Clone)]
pub struct ChildEnvironment {
    /// The base log dir, absolute: `<log_dir>/<task>/<host>-<pid>/worker_<n>.out|err`.
    pub log_dir: PathBuf,
    /// This process, which names the logs' directory and heads them.
    pub writer: LogWriter,
    /// Where children start and relative program paths resolve, absolute.
    pub current_dir: PathBuf,
    /// Extra variables of every child (`PYTHONPATH` and friends).
    pub env: Vec<(String, String)>,
}

impl ChildEnvironment {
    /// Children starting in `current_dir`, logging under `log_dir`, with no
    /// extra environment.
    pub fn new(log_dir: impl Into<PathBuf>, current_dir: impl Into<PathBuf>) -> Self {
        Self {
            log_dir: log_dir.into(),
            writer: LogWriter::this_process(),
            current_dir: current_dir.into(),
            env: Vec::new(),
        }
    }

    /// Writes the Python helper into `<state_dir>/python/` (unless an
    /// identical copy is there) and puts that directory first on the
    /// children's `PYTHONPATH`, before whatever this process has.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn with_python_helper(mut self, state_dir: &Path) -> std::io::Result<Self> {
        let helper_dir = install_python_helper(state_dir)?;
        self.env.push(("PYTHONPATH".to_owned(), python_path(&helper_dir)));
        Ok(self)
    }
}

/// Why a task's keys name no process to run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessSpecError {
    /// The task has neither `worker` nor `command` (a task built in Rust
    /// without one; the pipeline parser refuses such a file).
    #[error(
        "task '{task}': nothing processes its blocks: set worker = [\"python3\", \
         \"process.py\"] or command = [\"./process-block\"]"
    )]
    NoProcess {
        /// The task.
        task: TaskId,
    },
    /// A `worker`, `command` or `check` list is empty.
    #[error("task '{task}': {key}")]
    EmptyCommand {
        /// The task.
        task: TaskId,
        /// The key: `worker`, `command` or `check`.
        key: &'static str,
        /// Why the list is not a command.
        #[source]
        source: EmptyCommand,
    },
}

/// How a task's blocks are processed.
#[derive(Debug, Clone)]
enum ProcessKind {
    /// `worker = [..]`: a long-lived process per slot.
    Worker(CommandLine),
    /// `command = [..]`: one process per block.
    Command(CommandLine),
}

/// The processes of one task, with program paths resolved.
#[derive(Debug, Clone)]
pub struct TaskProcesses {
    task_id: String,
    process: ProcessKind,
    check: Option<CommandLine>,
}

impl TaskProcesses {
    /// The processes of `task`, a relative program path with a slash
    /// resolved against `dir` (a bare name is looked up on `PATH`).
    ///
    /// # Errors
    /// [`ProcessSpecError`] for a task with nothing to process its blocks
    /// or an empty command.
    pub fn resolve(task: &TaskSpec, dir: &Path) -> Result<Self, ProcessSpecError> {
        let command_line = |key: &'static str, argv: &[String]| {
            let mut argv = argv.to_vec();
            if let Some(program) = argv.first_mut() {
                *program = resolve_program(program, dir);
            }
            CommandLine::new(argv).map_err(|source| ProcessSpecError::EmptyCommand {
                task: task.id.clone(),
                key,
                source,
            })
        };
        let process = match &task.process {
            Some(ProcessSpec::Worker(argv)) => ProcessKind::Worker(command_line("worker", argv)?),
            Some(ProcessSpec::Command(argv)) => {
                ProcessKind::Command(command_line("command", argv)?)
            }
            None => return Err(ProcessSpecError::NoProcess { task: task.id.clone() }),
        };
        let check = task.check.as_deref().map(|argv| command_line("check", argv)).transpose()?;
        Ok(Self { task_id: task.id.to_string(), process, check })
    }

    /// The processor of worker slot `slot` of this task.
    pub fn processor(&self, slot: u32, environment: &ChildEnvironment) -> CommandProcessor {
        let slot_config = SlotConfig {
            task_id: self.task_id.clone(),
            worker_id: slot,
            log_dir: environment.log_dir.clone(),
            writer: environment.writer.clone(),
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
        let logs = [slot_config.out_log_path(), slot_config.err_log_path()];
        let check = self
            .check
            .as_ref()
            .map(|command_line| CheckProcess::new(command_line.clone(), slot_config));
        CommandProcessor::new(processor, check).with_logs(logs)
    }
}

/// Checks that every task of `pipeline` names processes to run, resolved
/// against `dir`, before anything starts.
///
/// # Errors
/// The first task whose keys are not a process ([`ProcessSpecError`]).
pub fn check_processes(pipeline: &Pipeline, dir: &Path) -> Result<(), ProcessSpecError> {
    for task in pipeline.tasks() {
        TaskProcesses::resolve(&task.spec, dir)?;
    }
    Ok(())
}

/// The factory of a pipeline file's processes: each slot runs its task's
/// `worker` or `command` process (with its `check`) in `environment`. A
/// task with no process to run gets a [`NoProcessor`], which fails its
/// blocks with the reason (check first with [`check_processes`] to refuse
/// such a pipeline instead).
pub fn pipeline_processors(environment: ChildEnvironment) -> Arc<ProcessorFactory> {
    Arc::new(
        move |pipeline: &Arc<Pipeline>, task: TaskIndex, slot: u32| -> Box<dyn BlockProcessor> {
            let spec = &pipeline.task(task).spec;
            match TaskProcesses::resolve(spec, &environment.current_dir) {
                Ok(processes) => Box::new(processes.processor(slot, &environment)),
                Err(err) => Box::new(NoProcessor::new(error_chain(&err))),
            }
        },
    )
}

/// The processor of a task this worker cannot process: every block fails
/// as [`FailureKind::SpawnFailed`] with the reason, so the run shows why
/// instead of a worker guessing.
#[derive(Debug, Clone)]
pub struct NoProcessor {
    reason: String,
}

impl NoProcessor {
    /// Fails every block with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }
}

impl BlockProcessor for NoProcessor {
    fn process(&mut self, _block: &WorkBlock) -> Result<(), ProcessError> {
        Err(ProcessError { kind: FailureKind::SpawnFailed, message: self.reason.clone() })
    }
}

/// `err` and its sources, joined by `": "` (for an error text that names every cause).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A relative program path with a slash is relative to `dir`; a bare name
/// is looked up on `PATH`.
fn resolve_program(program: &str, dir: &Path) -> String {
    let path = Path::new(program);
    if program.contains('/') && path.is_relative() {
        dir.join(path).to_string_lossy().into_owned()
    } else {
        program.to_owned()
    }
}

/// Writes the Python helper into `<state_dir>/python/` (unless an identical
/// copy is there) and returns that directory.
fn install_python_helper(state_dir: &Path) -> std::io::Result<PathBuf> {
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
/// whatever this process has.
fn python_path(helper_dir: &Path) -> String {
    let helper_dir = helper_dir.to_string_lossy();
    match std::env::var("PYTHONPATH") {
        Ok(existing) if !existing.is_empty() => format!("{helper_dir}:{existing}"),
        _ => helper_dir.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daisy_core::parse_pipeline;

    fn pipeline(keys: &str) -> Arc<Pipeline> {
        let text = format!(
            "[[task]]\nid = \"a\"\ntotal_roi = {{ offset = [0], shape = [4] }}\nread_roi = {{ \
             offset = [0], shape = [1] }}\nwrite_roi = {{ offset = [0], shape = [1] }}\n{keys}\n"
        );
        Arc::new(Pipeline::new(parse_pipeline(&text).unwrap()).unwrap())
    }

    #[test]
    fn relative_programs_with_a_slash_resolve_against_the_directory() {
        let dir = Path::new("/pipelines/x");
        assert_eq!(resolve_program("./run.sh", dir), "/pipelines/x/./run.sh");
        assert_eq!(resolve_program("bin/run", dir), "/pipelines/x/bin/run");
        assert_eq!(resolve_program("python3", dir), "python3");
        assert_eq!(resolve_program("/usr/bin/env", dir), "/usr/bin/env");
    }

    #[test]
    fn every_key_becomes_a_process() {
        let dir = Path::new("/p");
        for keys in [
            "worker = [\"python3\", \"w.py\"]",
            "command = [\"./c\"]",
            "command = [\"./c\"]\ncheck = [\"./done\"]",
        ] {
            let pipeline = pipeline(keys);
            assert!(check_processes(&pipeline, dir).is_ok(), "{keys}");
            let processes = TaskProcesses::resolve(&pipeline.task(TaskIndex(0)).spec, dir).unwrap();
            assert_eq!(processes.task_id, "a");
            assert_eq!(processes.check.is_some(), keys.contains("check"));
        }
    }

    #[test]
    fn a_task_without_a_process_is_refused_or_fails_its_blocks() {
        let mut spec = pipeline("command = [\"true\"]").task(TaskIndex(0)).spec.clone();
        spec.process = None;
        let without = Arc::new(Pipeline::new(vec![spec.clone()]).unwrap());
        assert!(matches!(
            check_processes(&without, Path::new("/")),
            Err(ProcessSpecError::NoProcess { .. })
        ));
        let mut empty = spec.clone();
        empty.process = Some(ProcessSpec::Command(Vec::new()));
        assert!(matches!(
            TaskProcesses::resolve(&empty, Path::new("/")),
            Err(ProcessSpecError::EmptyCommand { key: "command", .. })
        ));
        let factory = pipeline_processors(ChildEnvironment::new("/tmp/logs", "/"));
        let mut processor = factory(&without, TaskIndex(0), 0);
        let block = WorkBlock {
            task_id: "a".into(),
            block_id: daisy_core::BlockId(1),
            index: daisy_core::BlockIndex(0),
            read_roi: spec.read_roi,
            write_roi: spec.write_roi,
            attempt: 1,
            timeout: spec.timeout,
        };
        let err = processor.process(&block).unwrap_err();
        assert_eq!(err.kind, FailureKind::SpawnFailed);
        assert!(err.message.contains("nothing processes its blocks"), "{}", err.message);
    }

    #[test]
    fn the_python_helper_goes_first_on_the_path() {
        let state = tempfile::tempdir().unwrap();
        let environment =
            ChildEnvironment::new("/logs", "/").with_python_helper(state.path()).unwrap();
        let helper = state.path().join("python").join(PYTHON_HELPER_FILE);
        assert_eq!(std::fs::read_to_string(helper).unwrap(), PYTHON_HELPER_SOURCE);
        let (key, value) = &environment.env[0];
        assert_eq!(key, "PYTHONPATH");
        assert!(value.starts_with(&state.path().join("python").to_string_lossy().into_owned()));
    }
}
