//! Task specifications and the pipeline file format (TOML).
//!
//! ```toml
//! [[task]]
//! id = "smooth"                                  # unique; [A-Za-z0-9_-]+
//! total_roi = { offset = [0, 0, 0], shape = [1024, 1024, 1024] }
//! read_roi  = { offset = [0, 0, 0], shape = [72, 72, 72] }
//! write_roi = { offset = [4, 4, 4], shape = [64, 64, 64] }
//! fit = "valid"                                  # valid | overhang | shrink
//! read_write_conflict = true
//! max_workers = 8
//! max_retries = 2
//! timeout = "10m"
//! upstream = ["raw"]
//! worker = ["python3", "smooth.py"]              # or: command = ["./process-block"]
//! check = ["python3", "is_done.py"]              # optional
//! ```
//!
//! Parsing checks the *form* (unknown keys and wrong types are errors with
//! line and column); [`Pipeline::new`](crate::Pipeline::new) checks the
//! *meaning* (ROIs that tile, upstream tasks that exist, no cycles).
//! Defaults are Daisy's: fit valid, conflicts on, two retries, one worker,
//! and (Daisy 2.0's) a 10 minute block timeout and ten worker restarts.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Coordinate, Fit, Roi};

/// A task's unique name within a pipeline: `[A-Za-z0-9_-]+`.
///
/// The restriction keeps ids safe as log directory names and as NATS
/// subject tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Checks and wraps a task id.
    ///
    /// # Errors
    /// [`InvalidTaskId`] if the id is empty, longer than 64 characters, or
    /// has a character outside `[A-Za-z0-9_-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTaskId> {
        let id = id.into();
        let valid_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if id.is_empty() || id.len() > 64 || !valid_chars {
            return Err(InvalidTaskId { id });
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task id with characters outside `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task id {id:?} is not valid: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-' (it \
     names log directories and message subjects)"
)]
pub struct InvalidTaskId {
    /// The rejected id.
    pub id: String,
}

/// What processes a task's blocks when the task comes from a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessSpec {
    /// A long-lived process per worker slot, one JSON line per block in and
    /// one out (`worker = [cmd, args...]`).
    Worker(Vec<String>),
    /// One process per block, the block in the environment
    /// (`command = [cmd, args...]`).
    Command(Vec<String>),
}

/// Everything that defines a task, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Unique name of the task.
    pub id: TaskId,
    /// The region tiled by blocks, including the context of the outer blocks.
    pub total_roi: Roi,
    /// The template of a block's read ROI (only its offset relative to
    /// `write_roi` matters).
    pub read_roi: Roi,
    /// The template of a block's write ROI.
    pub write_roi: Roi,
    /// What happens to blocks at the boundary.
    pub fit: Fit,
    /// Whether blocks whose read and write ROIs overlap must not run at the
    /// same time.
    pub read_write_conflict: bool,
    /// How many blocks of this task may be processed at once.
    pub max_workers: u32,
    /// How many times a failed block is tried again (so `max_retries + 1`
    /// attempts in all).
    pub max_retries: u32,
    /// How many times the task's worker processes may be restarted after
    /// dying before the task is abandoned.
    pub max_worker_restarts: u32,
    /// How long one attempt at a block may run before it is killed and
    /// counted as failed.
    #[serde(with = "duration_seconds")]
    pub timeout: Duration,
    /// Tasks whose output this task reads: a block waits for every block of
    /// these tasks whose write ROI intersects its read ROI.
    pub upstream: Vec<TaskId>,
    /// What processes a block; `None` when the library user supplies a
    /// closure.
    pub process: Option<ProcessSpec>,
    /// An optional command that says whether a block is already done
    /// (exit status 0 = done, skip it).
    pub check: Option<Vec<String>>,
}

/// The default number of retries of a failed block (Daisy's).
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// The default cap on worker restarts per task (Daisy 2.0's).
pub const DEFAULT_MAX_WORKER_RESTARTS: u32 = 10;
/// The default block timeout (Daisy 2.0's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

impl TaskSpec {
    /// A task with Daisy's defaults for everything but its id and ROIs.
    pub fn new(id: TaskId, total_roi: Roi, read_roi: Roi, write_roi: Roi) -> Self {
        Self {
            id,
            total_roi,
            read_roi,
            write_roi,
            fit: Fit::Valid,
            read_write_conflict: true,
            max_workers: 1,
            max_retries: DEFAULT_MAX_RETRIES,
            max_worker_restarts: DEFAULT_MAX_WORKER_RESTARTS,
            timeout: DEFAULT_TIMEOUT,
            upstream: Vec::new(),
            process: None,
            check: None,
        }
    }
}

mod duration_seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
    }
}

/// Why a pipeline file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file is not valid TOML, has an unknown key or a value of the
    /// wrong type. The message carries line and column.
    #[error("{message}")]
    Syntax {
        /// The parser's message, with line, column and the offending line.
        message: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
    },
    /// A task entry is well-formed TOML but not a valid task.
    #[error("task '{task}': {field}: {problem}")]
    Task {
        /// The task's id (or its position if the id is the problem).
        task: String,
        /// The key at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The file has no `[[task]]` entry.
    #[error("the pipeline has no tasks: add at least one [[task]] table")]
    NoTasks,
}

// The file structs below are both what `parse_pipeline` reads and what
// `pipeline_toml` writes: one definition of the format.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[serde(default)]
    task: Vec<TaskEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoiEntry {
    offset: Vec<i64>,
    shape: Vec<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TimeoutEntry {
    Seconds(f64),
    Text(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskEntry {
    id: String,
    total_roi: RoiEntry,
    read_roi: RoiEntry,
    write_roi: RoiEntry,
    #[serde(default)]
    fit: Fit,
    #[serde(default = "default_true")]
    read_write_conflict: bool,
    #[serde(default = "default_one", alias = "num_workers")]
    max_workers: u32,
    #[serde(default = "default_max_retries")]
    max_retries: u32,
    #[serde(default = "default_max_worker_restarts")]
    max_worker_restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<TimeoutEntry>,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<Vec<String>>,
}

fn default_true() -> bool {
    true
}
fn default_one() -> u32 {
    1
}
fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_max_worker_restarts() -> u32 {
    DEFAULT_MAX_WORKER_RESTARTS
}

/// Parses a pipeline file's text into task specs (form only; see
/// [`Pipeline::new`](crate::Pipeline::new) for the meaning).
///
/// # Errors
/// [`SpecError`] with line and column for syntax, unknown keys and types,
/// or naming the task and key for values that are not valid.
pub fn parse_pipeline(text: &str) -> Result<Vec<TaskSpec>, SpecError> {
    let file: PipelineFile = toml::from_str(text).map_err(|err| {
        let (line, column) = match err.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        let mut message = err.to_string().trim_end().to_owned();
        if let (Some(span), Some(line)) = (err.span(), line)
            && let Some(hint) = unclosed_bracket_hint(text, span.start, line)
        {
            message.push('\n');
            message.push_str(&hint);
        }
        SpecError::Syntax { message, line, column }
    })?;
    if file.task.is_empty() {
        return Err(SpecError::NoTasks);
    }
    file.task
        .into_iter()
        .enumerate()
        .map(|(position, entry)| task_from_entry(position, entry))
        .collect()
}

/// Says which `{` or `[` opened on an earlier line than `error_line` is still
/// open at byte `error_at`. The parser reports a missing `}` where the next
/// line begins ("missing comma between key-value pairs"), which points away
/// from the mistake; the bracket that was never closed points at it.
fn unclosed_bracket_hint(text: &str, error_at: usize, error_line: usize) -> Option<String> {
    let mut open: Vec<(char, usize, usize)> = Vec::new();
    let mut in_string: Option<char> = None;
    let mut escaped = false;
    let (mut line, mut column) = (1, 0);
    let mut chars = text[..error_at.min(text.len())].chars();
    while let Some(c) = chars.next() {
        column += 1;
        match (in_string, c) {
            (_, '\n') => {
                (line, column) = (line + 1, 0);
                in_string = None;
            }
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(quote), c) if c == quote && !escaped => in_string = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => in_string = Some(c),
            (None, '#') => {
                // A comment runs to the end of the line.
                for rest in chars.by_ref() {
                    if rest == '\n' {
                        (line, column) = (line + 1, 0);
                        break;
                    }
                }
            }
            (None, '{' | '[') => open.push((c, line, column)),
            (None, '}' | ']') => {
                open.pop();
            }
            (None, _) => {}
        }
        escaped = false;
    }
    let &(bracket, line, column) = open.last()?;
    if line >= error_line {
        return None;
    }
    let (what, close) = if bracket == '{' { ("inline table", '}') } else { ("array", ']') };
    let source = text.lines().nth(line - 1).unwrap_or("").trim_end();
    Some(format!(
        "the {what} `{bracket}` opened at line {line}, column {column} is not closed: \
         `{source}`; add `{close}` where it ends"
    ))
}

/// Writes task specs in the pipeline file format, the inverse of
/// [`parse_pipeline`]. A task without a process (a Rust closure) gets
/// `placeholder` as its `command`, so the text parses.
///
/// The text is the `toml` crate's serialization of the same file structs
/// that [`parse_pipeline`] reads, so every string (quotes, backslashes,
/// control characters, any Unicode) is escaped as TOML requires, and every
/// key is spelled as the parser expects. The timeout is written as text
/// (`"1s 500ms"`), which parses back to the same [`Duration`] exactly.
///
/// # Panics
/// Never: the file structs hold only strings, integers, booleans, arrays
/// and tables, which TOML can always represent.
pub fn pipeline_toml(tasks: &[TaskSpec], placeholder: &str) -> String {
    let roi = |roi: &Roi| RoiEntry {
        offset: roi.offset().as_slice().to_vec(),
        shape: roi.shape().as_slice().to_vec(),
    };
    let file = PipelineFile {
        task: tasks
            .iter()
            .map(|task| {
                let (worker, command) = match &task.process {
                    Some(ProcessSpec::Worker(argv)) => (Some(argv.clone()), None),
                    Some(ProcessSpec::Command(argv)) => (None, Some(argv.clone())),
                    None => (None, Some(vec![placeholder.to_owned()])),
                };
                TaskEntry {
                    id: task.id.to_string(),
                    total_roi: roi(&task.total_roi),
                    read_roi: roi(&task.read_roi),
                    write_roi: roi(&task.write_roi),
                    fit: task.fit,
                    read_write_conflict: task.read_write_conflict,
                    max_workers: task.max_workers,
                    max_retries: task.max_retries,
                    max_worker_restarts: task.max_worker_restarts,
                    timeout: Some(TimeoutEntry::Text(
                        humantime::format_duration(task.timeout).to_string(),
                    )),
                    upstream: task.upstream.iter().map(TaskId::to_string).collect(),
                    worker,
                    command,
                    check: task.check.clone(),
                }
            })
            .collect(),
    };
    // Strings, integers, booleans, arrays and tables: TOML represents them all.
    toml::to_string(&file).expect("the pipeline file structs hold only TOML-representable data")
}

fn task_from_entry(position: usize, entry: TaskEntry) -> Result<TaskSpec, SpecError> {
    let id = TaskId::new(entry.id.clone()).map_err(|err| SpecError::Task {
        task: format!("#{} ({:?})", position + 1, entry.id),
        field: "id",
        problem: err.to_string(),
    })?;
    let task_error = |field: &'static str, problem: String| SpecError::Task {
        task: id.to_string(),
        field,
        problem,
    };
    let roi = |field: &'static str, roi: &RoiEntry| -> Result<Roi, SpecError> {
        if roi.offset.len() != roi.shape.len() {
            return Err(task_error(
                field,
                format!(
                    "offset has {} values but shape has {}: give one value per axis in both",
                    roi.offset.len(),
                    roi.shape.len()
                ),
            ));
        }
        let offset = Coordinate::new(&roi.offset).map_err(|e| task_error(field, e.to_string()))?;
        let shape = Coordinate::new(&roi.shape).map_err(|e| task_error(field, e.to_string()))?;
        Ok(Roi::new(offset, shape))
    };
    let total_roi = roi("total_roi", &entry.total_roi)?;
    let read_roi = roi("read_roi", &entry.read_roi)?;
    let write_roi = roi("write_roi", &entry.write_roi)?;
    let timeout = match entry.timeout {
        None => DEFAULT_TIMEOUT,
        Some(TimeoutEntry::Seconds(seconds)) => {
            Duration::try_from_secs_f64(seconds).map_err(|_| {
                task_error("timeout", format!("{seconds} is not a valid number of seconds"))
            })?
        }
        Some(TimeoutEntry::Text(text)) => humantime::parse_duration(&text).map_err(|err| {
            task_error(
                "timeout",
                format!(
                    "{text:?} is not a duration ({err}): write e.g. \"90s\", \"10m\" or \"2h\""
                ),
            )
        })?,
    };
    let process = match (entry.worker, entry.command) {
        (Some(_), Some(_)) => {
            return Err(task_error(
                "worker",
                "both worker and command are set: keep worker (one long-lived process per \
                 worker, JSON lines) or command (one process per block)"
                    .into(),
            ));
        }
        (Some(worker), None) => {
            Some(ProcessSpec::Worker(non_empty(worker, "worker", &task_error)?))
        }
        (None, Some(command)) => {
            Some(ProcessSpec::Command(non_empty(command, "command", &task_error)?))
        }
        (None, None) => {
            return Err(task_error(
                "worker",
                "nothing processes the blocks: set worker = [\"python3\", \"process.py\"] (a \
                 long-lived process speaking JSON lines) or command = [\"./process-block\"] (one \
                 process per block)"
                    .into(),
            ));
        }
    };
    let check = entry.check.map(|check| non_empty(check, "check", &task_error)).transpose()?;
    let upstream = entry
        .upstream
        .into_iter()
        .map(|up| TaskId::new(up).map_err(|err| task_error("upstream", err.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(TaskSpec {
        id,
        total_roi,
        read_roi,
        write_roi,
        fit: entry.fit,
        read_write_conflict: entry.read_write_conflict,
        max_workers: entry.max_workers,
        max_retries: entry.max_retries,
        max_worker_restarts: entry.max_worker_restarts,
        timeout,
        upstream,
        process,
        check,
    })
}

fn non_empty(
    argv: Vec<String>,
    field: &'static str,
    task_error: &impl Fn(&'static str, String) -> SpecError,
) -> Result<Vec<String>, SpecError> {
    if argv.first().is_none_or(|program| program.trim().is_empty()) {
        return Err(task_error(field, "the command is empty: give the program and its arguments, e.g. [\"python3\", \"script.py\"]".into()));
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[task]]
id = "a"
total_roi = { offset = [0, 0], shape = [6, 6] }
read_roi = { offset = [0, 0], shape = [3, 3] }
write_roi = { offset = [1, 1], shape = [1, 1] }
command = ["true"]
"#;

    #[test]
    fn written_pipelines_parse_back_to_the_same_specs() {
        let text =
            format!("{MINIMAL}upstream = []\ncheck = [\"./done\", \"x y\"]\ntimeout = 1.5\n");
        let tasks = parse_pipeline(&text).unwrap();
        let written = pipeline_toml(&tasks, "unused");
        assert_eq!(parse_pipeline(&written).unwrap(), tasks);
        let mut closure = tasks[0].clone();
        closure.process = None;
        let with_placeholder = parse_pipeline(&pipeline_toml(&[closure], "rust closure")).unwrap();
        assert_eq!(
            with_placeholder[0].process,
            Some(ProcessSpec::Command(vec!["rust closure".into()]))
        );
    }

    #[test]
    fn awkward_strings_survive_the_round_trip() {
        let mut task = parse_pipeline(MINIMAL).unwrap().remove(0);
        task.process = Some(ProcessSpec::Worker(vec![
            "python3".into(),
            r#"say "hi" \ C:\temp\x.py"#.into(),
            "\u{e9}t\u{e9} \u{1f33c} \u{7f}\t\n\r\u{0}\u{1b}[0m".into(),
            "'single' '''triple''' \"\"\"".into(),
            String::new(),
        ]));
        task.check = Some(vec!["sh".into(), "-c".into(), "test -e \"$1\" && echo '\\'".into()]);
        task.timeout = Duration::new(3, 1);
        let closure = TaskSpec { process: None, ..task.clone() };
        let written = pipeline_toml(std::slice::from_ref(&task), "unused");
        assert_eq!(parse_pipeline(&written).unwrap(), vec![task], "{written}");
        let placeholder = "<a \"closure\"\\ \u{2603}>";
        let with_placeholder = parse_pipeline(&pipeline_toml(&[closure], placeholder)).unwrap();
        assert_eq!(
            with_placeholder[0].process,
            Some(ProcessSpec::Command(vec![placeholder.into()]))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn any_spec_survives_the_round_trip(
            argv in proptest::collection::vec(".*", 1..4),
            check in proptest::option::of(proptest::collection::vec(".*", 1..3)),
            worker in proptest::bool::ANY,
            nanos in 0u64..=u64::MAX / 4,
            shape in 1i64..1000,
            offset in -1000i64..1000,
        ) {
            proptest::prop_assume!(!argv[0].trim().is_empty());
            proptest::prop_assume!(check.as_ref().is_none_or(|c| !c[0].trim().is_empty()));
            let mut task = parse_pipeline(MINIMAL).unwrap().remove(0);
            task.total_roi = Roi::new([offset, 0].into(), [shape, 6].into());
            task.process = Some(if worker {
                ProcessSpec::Worker(argv)
            } else {
                ProcessSpec::Command(argv)
            });
            task.check = check;
            task.timeout = Duration::from_nanos(nanos);
            let written = pipeline_toml(std::slice::from_ref(&task), "unused");
            proptest::prop_assert_eq!(parse_pipeline(&written).unwrap(), vec![task]);
        }
    }

    #[test]
    fn defaults_are_daisys() {
        let tasks = parse_pipeline(MINIMAL).unwrap();
        let task = &tasks[0];
        assert_eq!(task.fit, Fit::Valid);
        assert!(task.read_write_conflict);
        assert_eq!((task.max_workers, task.max_retries, task.max_worker_restarts), (1, 2, 10));
        assert_eq!(task.timeout, Duration::from_secs(600));
        assert_eq!(task.process, Some(ProcessSpec::Command(vec!["true".into()])));
    }

    #[test]
    fn timeouts_parse_as_text_or_seconds() {
        let with = |timeout: &str| {
            parse_pipeline(&format!("{MINIMAL}timeout = {timeout}\n")).map(|t| t[0].timeout)
        };
        assert_eq!(with("\"10m\""), Ok(Duration::from_secs(600)));
        assert_eq!(with("1.5"), Ok(Duration::from_millis(1500)));
        assert!(matches!(with("\"soon\""), Err(SpecError::Task { field: "timeout", .. })));
    }

    #[test]
    fn num_workers_is_an_alias() {
        let tasks = parse_pipeline(&format!("{MINIMAL}num_workers = 4\n")).unwrap();
        assert_eq!(tasks[0].max_workers, 4);
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let err = parse_pipeline(&format!("{MINIMAL}max_worker = 4\n")).unwrap_err();
        match err {
            SpecError::Syntax { line, message, .. } => {
                assert_eq!(line, Some(8));
                assert!(message.contains("max_worker"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Issue 14, item 10: a `}` missing at the end of a line was reported on
    /// the next line as a missing comma.
    #[test]
    fn regression_14_an_unclosed_inline_table_is_named_where_it_opens() {
        let text = "[[task]]\nid = \"a\" # {\ntotal_roi = { offset = [0], shape = [10]\n\
                    read_roi = { offset = [0], shape = [2] }\n";
        let Err(SpecError::Syntax { message, .. }) = parse_pipeline(text) else {
            panic!("a missing `}}` is a syntax error");
        };
        assert!(
            message.contains(
                "the inline table `{` opened at line 3, column 13 is not closed: `total_roi = \
                 { offset = [0], shape = [10]`; add `}` where it ends"
            ),
            "{message}"
        );
        // A bracket closed on its line is never blamed.
        let type_error = MINIMAL.replace("shape = [6, 6]", "shape = [6, \"6\"]");
        let Err(SpecError::Syntax { message, .. }) = parse_pipeline(&type_error) else {
            panic!("a string in a shape is a type error");
        };
        assert!(!message.contains("not closed"), "{message}");
    }

    #[test]
    fn type_errors_have_a_line() {
        let text = MINIMAL.replace("shape = [6, 6]", "shape = [6, \"6\"]");
        assert!(matches!(parse_pipeline(&text), Err(SpecError::Syntax { line: Some(4), .. })));
    }

    #[test]
    fn a_task_needs_exactly_one_way_to_process() {
        let none = MINIMAL.replace("command = [\"true\"]", "");
        assert!(matches!(parse_pipeline(&none), Err(SpecError::Task { field: "worker", .. })));
        let both = format!("{MINIMAL}worker = [\"python3\"]\n");
        assert!(matches!(parse_pipeline(&both), Err(SpecError::Task { field: "worker", .. })));
    }

    #[test]
    fn bad_ids_and_mismatched_rois() {
        let bad_id = MINIMAL.replace("id = \"a\"", "id = \"a:b\"");
        assert!(matches!(parse_pipeline(&bad_id), Err(SpecError::Task { field: "id", .. })));
        let ragged =
            MINIMAL.replace("offset = [0, 0], shape = [3, 3]", "offset = [0], shape = [3, 3]");
        assert!(matches!(parse_pipeline(&ragged), Err(SpecError::Task { field: "read_roi", .. })));
        assert_eq!(parse_pipeline(""), Err(SpecError::NoTasks));
    }
}
