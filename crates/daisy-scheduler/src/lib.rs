//! The scheduler actor: drives the daisy-core state machine over a
//! transport, one implementation for both transports.
//!
//! ```text
//!               dispatch(batch)                     ┌─────────────┐
//!  Scheduler ──────────────────────► transport ───► │ worker slots│
//!  (this actor)                       (in-process    └──────┬──────┘
//!     ▲   owns daisy_core::Scheduler   channels or          │ OutcomeReport
//!     │                                JetStream)           │ (recorded durably
//!     └──────────── next_report() ◄─────────────────────────┘  before it arrives)
//!     │
//!     └── watch::Sender<RunSnapshot>  (progress bars, `daisy status`)
//! ```
//!
//! # Ownership
//! The actor owns every block's state (one `daisy_core::Scheduler`); nothing
//! else mutates it. The transport owns the wire and the durable record
//! (journal file or event stream); it hands over only outcomes that are
//! already recorded, so acting on them can never outrun the record.
//!
//! # Task policy
//! The actor runs as one task (`task = "scheduler"`). A transport error
//! stops the run with an error (non-zero exit); bad or stale reports are
//! logged, counted and dropped. Cancellation stops dispatching at once and
//! waits for the blocks in flight, up to a deadline.
//!
//! # Batching
//! One message per tiny block would cap throughput at the transport's
//! message rate, so blocks of one task go out in batches sized to take
//! about [`SchedulerConfig::target_batch_seconds`] of measured block time
//! (one block at a time for slow blocks), never more than a fair share of
//! the ready blocks per worker.

mod actor;
#[cfg(test)]
mod actor_tests;
mod batch;
mod clock;
mod metrics;
pub mod nats;
mod replay;
mod report;
mod straggler;
mod transport;

pub use actor::{RunScheduler, SchedulerConfig, SchedulerError};
pub use clock::unix_ms_now;
pub use report::{FirstError, RunReport, RunSnapshot, TaskReport};
pub use straggler::DEFAULT_STRAGGLER_FACTOR;
pub use transport::{
    BatchId, Input, QueuedBatch, ReplayMode, ReplayedOutcomes, SchedulerTransport, TransportError,
};
