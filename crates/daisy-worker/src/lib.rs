//! Runs blocks for a daisy-rs worker: takes a block and gets it processed by user code.
//!
//! # Layout
//!
//! * [`process`] runs one block in a user's process, in any language: a long-lived
//!   JSON-lines worker ([`process::WorkerProcess`], the pipeline's `worker = [..]` key), one
//!   process per block ([`process::CommandProcess`], `command = [..]`) and the optional
//!   "already done?" check ([`process::CheckProcess`], `check = [..]`). The Python side of
//!   the protocol is `python/daisy_worker.py`, also available as
//!   [`process::PYTHON_HELPER_SOURCE`].
//!
//! # Ownership
//!
//! This crate owns user processes and their log files. It does not decide what a failure
//! means (retry, give up, restart budget): the caller reads the [`process::FailureKind`] and
//! the restart counter and applies the task's policy.
//!
//! # Why synchronous
//!
//! Everything here is blocking std code (`std::process`, threads, `recv_timeout`). Block
//! processing runs on dedicated blocking threads of the worker runtime, never on an async
//! executor, so there is nothing to gain from async child handling and a lot of
//! cancellation subtlety to lose.

pub mod factory;
pub mod nats;
pub mod process;
pub mod runner;
pub mod running;
pub mod traces;
