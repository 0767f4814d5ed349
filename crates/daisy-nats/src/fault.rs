//! Test-only fault points: a process stops itself (SIGSTOP) at a precise point of the NATS
//! protocol when an environment variable asks for it, so that a fault test hits a race window
//! every time instead of hoping a kill lands in it.
//!
//! | variable | who | where |
//! |---|---|---|
//! | `DAISY_FAULT_STOP_AFTER_RECORD=N` | worker | after its Nth outcome event is stored, before the batch is acked |
//! | `DAISY_FAULT_STOP_BEFORE_DISPATCH=N` | scheduler | its Nth dispatch passed the lease check, before it is published |
//! | `DAISY_FAULT_REPLAY_DELAY=<duration>` | scheduler | after winning the lease, before reading the record |
//!
//! Unset (always, outside tests) a point costs one relaxed atomic increment. The test then
//! SIGKILLs or SIGCONTs the stopped process.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fault point that stops the process the Nth time it is passed.
pub struct StopPoint {
    variable: &'static str,
    message: &'static str,
    at: OnceLock<Option<u64>>,
    passed: AtomicU64,
}

impl StopPoint {
    /// A point read from `variable`, logging `message` when it stops the process.
    pub const fn new(variable: &'static str, message: &'static str) -> Self {
        Self { variable, message, at: OnceLock::new(), passed: AtomicU64::new(0) }
    }

    /// Passes the point: stops the process (SIGSTOP) if this is the Nth pass asked for.
    pub fn pass(&self) {
        let at = self.at.get_or_init(|| {
            std::env::var(self.variable).ok().and_then(|value| value.trim().parse().ok())
        });
        let Some(at) = *at else { return };
        if self.passed.fetch_add(1, Ordering::Relaxed) + 1 == at {
            tracing::warn!(variable = self.variable, "fault point: {}", self.message);
            stop_this_process();
        }
    }
}

/// The worker's point between recording outcomes and acking their batch.
pub static STOP_AFTER_RECORD: StopPoint =
    StopPoint::new("DAISY_FAULT_STOP_AFTER_RECORD", "stopping after recording outcomes");

/// The scheduler's point between its lease check and publishing a dispatch.
pub static STOP_BEFORE_DISPATCH: StopPoint =
    StopPoint::new("DAISY_FAULT_STOP_BEFORE_DISPATCH", "stopping before a dispatch");

/// How long a scheduler that won the lease waits before reading the record
/// (`DAISY_FAULT_REPLAY_DELAY`, a humantime duration), if asked to.
pub fn replay_delay() -> Option<Duration> {
    let value = std::env::var("DAISY_FAULT_REPLAY_DELAY").ok()?;
    humantime::parse_duration(value.trim()).ok()
}

#[allow(unsafe_code)]
fn stop_this_process() {
    // SAFETY: raise only sends a signal to this process; SIGSTOP cannot be caught, so no
    // handler of ours runs and no memory is touched.
    let _ = unsafe { libc::raise(libc::SIGSTOP) };
}
