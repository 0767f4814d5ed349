//! The wire contract of daisy-rs: what travels between scheduler and
//! workers, what is recorded about a run, how it is encoded, and the names
//! of every subject, stream, consumer and bucket.
//!
//! # Ownership
//! This crate owns the *shape* of messages and their encoding, for both
//! transports: the in-process journal file and the NATS JetStream streams
//! carry the same [`Event`] bytes. It does no I/O; `daisy-nats` and the
//! in-process transport move the bytes.
//!
//! # Encoding
//! One version byte ([`PROTOCOL_VERSION`]) followed by MessagePack with
//! named fields (rmp-serde), so that fields can be added compatibly. A
//! message with another version byte, or bytes that do not decode, is a
//! [`DecodeError`]: receivers log it and drop (terminate) the message; it
//! never panics anything.
//!
//! # Why
//! Outcomes are batched: one [`Event::Outcomes`] carries many blocks of one
//! task, so recording costs bytes per block, not a message per block (a
//! petabyte run has 10^9 blocks). Blocks are named by their dense index in
//! the task's grid; the [`layout_hash`] recorded with every run guarantees
//! that an index means the same block when a run resumes.
//!
//! # Example
//! ```
//! use daisy_proto::{BlockResult, Event, FailureKind, OutcomeKind, OutcomeReport, decode, encode};
//!
//! let event = Event::Outcomes(OutcomeReport {
//!     task: "smooth".into(),
//!     worker: "host-42-0".into(),
//!     results: vec![BlockResult {
//!         index: 7,
//!         attempt: 1,
//!         outcome: OutcomeKind::Failed { kind: FailureKind::Timeout },
//!         error: Some("exceeded the block timeout of 600s".into()),
//!         seconds: 600.0,
//!     }],
//!     worker_restarts: 0,
//!     epoch: 1,
//!     dispatch_sequence: 12,
//!     delivery: 1,
//!     ..Default::default()
//! });
//! let bytes = encode(&event);
//! assert_eq!(decode::<Event>(&bytes).unwrap(), event);
//! assert!(decode::<Event>(b"garbage").is_err());
//! ```
#![deny(missing_docs)]

mod codec;
mod layout;
mod messages;
pub mod subjects;

pub use codec::{DecodeError, PROTOCOL_VERSION, decode, encode};
pub use layout::layout_hash;
pub use messages::{
    BlockResult, BlockWork, Dispatch, EpochFence, Event, FailureKind, OutcomeKind, OutcomeReport,
    RunId, RunningBlock, RunningReport, Straggler, WorkerId,
};
