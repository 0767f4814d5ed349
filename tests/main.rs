//! In-process end-to-end suites: the real scheduler actor and worker slots
//! in one process, with Rust closures as process functions, and a TOML
//! pipeline through `daisy::nats::NatsRun`.

mod in_process;
mod nats_run;
