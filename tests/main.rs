//! In-process end-to-end suites: the real scheduler actor and worker slots
//! in one process, with Rust closures as process functions.

mod in_process;
