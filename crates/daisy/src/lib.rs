//! daisy-rs for Rust users: cut a huge nD volume into blocks, process
//! every block in parallel with your function, respecting conflicts
//! between neighbours and dependencies between tasks.
//!
//! ```no_run
//! use daisy::{Roi, Task, run_blockwise};
//!
//! let smooth = Task::builder("smooth")
//!     .total_roi(Roi::new([0, 0, 0].into(), [1024, 1024, 1024].into()))
//!     .read_roi(Roi::new([0, 0, 0].into(), [80, 80, 80].into()))
//!     .write_roi(Roi::new([8, 8, 8].into(), [64, 64, 64].into()))
//!     .max_workers(8)
//!     .process(|block| -> Result<(), std::io::Error> {
//!         // read block.read_roi, write block.write_roi
//!         Ok(())
//!     })
//!     .build()?;
//! let report = run_blockwise([smooth])?;
//! assert!(report.all_succeeded());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout
//! * [`Task`], [`TaskBuilder`], [`run_blockwise`], [`Runner`]: the library
//!   API, with Rust closures as process functions.
//! * [`in_process`]: [`in_process::InProcessRun`], the in-process transport
//!   (bounded channels, a journal file for resume) that `daisy run
//!   --in-process` also uses.
//! * [`nats`]: [`nats::NatsRun`], a scheduler replica and local worker slots
//!   over NATS JetStream (an existing server or an embedded one), as
//!   `daisy run`, `daisy-scheduler` and `Runner::nats` run them; [`Worker`]
//!   joins such a run with this program's closures.
//! * [`journal`]: the append-only record of an in-process run.
//! * [`run_lock`]: the locks that keep two runs off one run directory and
//!   two servers off one store, naming the holder to the one refused.
//!
//! # Ownership
//! This crate wires the scheduler actor (`daisy-scheduler`) to worker slots
//! (`daisy-worker`) in one process, over channels or NATS; the binaries
//! only parse flags, call [`in_process::InProcessRun`] or [`nats::NatsRun`]
//! and print. It does not decide anything about blocks: `daisy-core` does.

pub mod in_process;
pub mod journal;
pub mod nats;
pub mod run_lock;
mod task;
mod worker;

pub use daisy_core::{BlockId, Coordinate, Fit, Roi, TaskCounters};
pub use daisy_scheduler::{RunReport, RunSnapshot, TaskReport};
pub use daisy_worker::factory::ProcessorFactory;
pub use daisy_worker::runner::WorkBlock as Block;
pub use nats::CLOSURE_PLACEHOLDER;
pub use task::{BoxError, Runner, Task, TaskBuilder, TaskError, run_blockwise};
pub use tokio_util::sync::CancellationToken;
pub use worker::Worker;
