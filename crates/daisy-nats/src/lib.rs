//! Connects daisy to NATS JetStream; the only crate that imports async-nats.
//!
//! Owns the JetStream side of a run: connecting, provisioning its streams and buckets,
//! typed publishing and consuming, the leader lease and worker liveness. It does not own the
//! names (they come from [`daisy_proto::subjects`]), the message shapes ([`daisy_proto`]), or
//! any scheduling decision (`daisy-scheduler`, `daisy-worker`).
//!
//! # Layout
//! * [`server`]: finds or installs a `nats-server` binary, runs a local server as a child
//!   process and waits until JetStream is ready (for `daisy run` and tests).
//! * [`connect()`]: every auth form async-nats supports, and a server version check (2.10+).
//! * `provision`: [`Nats::provision_run`] (idempotent), [`Nats::open_run`],
//!   [`Nats::delete_run`], [`Nats::list_runs`]; the [`RunStreams`] handle.
//! * `publish`: [`Nats::publish_dispatch`] and [`Nats::publish_event`] with `Nats-Msg-Id`
//!   dedupe, awaiting the PubAck.
//! * `blocks`: the worker's [`BlockConsumer`] (fetch, ack, nak, progress, term), and reading
//!   or deleting block messages by sequence.
//! * `events`: [`RunStreams::replay_events`], the scheduler's replay-then-tail of the event
//!   stream.
//! * `dlq`: [`RunStreams::dead_letters`], blocks that exhausted their deliveries.
//! * `lease`: [`Lease`], the scheduler leader lease with a fencing epoch.
//! * `meta`: the pipeline spec, [`RunStatus`] and worker liveness in KV.
//!
//! ```text
//!  scheduler ── publish_dispatch ─► DAISY_<run>_BLOCKS (WorkQueue) ─► BlockConsumer ─► worker
//!      ▲                                   │ max deliveries                               │
//!      │                                   ▼                                              │
//!      ├── dead_letters ◄──────── DAISY_<run>_DLQ (advisories)                            │
//!      └── replay_events ◄─────── DAISY_<run>_EVENTS (Limits) ◄──── publish_event ────────┘
//!  KV: DAISY_<run>_META (spec, status)  DAISY_<run>_LEASE (leader)  DAISY_<run>_WORKERS
//! ```
//!
//! # Why
//! The JetStream facts this relies on (WorkQueue retention, termed messages staying in the
//! stream, KV compare-and-set, advisories being core messages) were verified against real
//! servers (shared/jetstream-otel-notes.md, Part B) and are tested here against a real
//! `nats-server`, never a mock.
//!
//! # Example
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use daisy_core::TaskId;
//! use daisy_nats::{ConnectOptions, RunSettings};
//! use daisy_proto::subjects::MsgId;
//! use daisy_proto::{BlockWork, Dispatch, RunId};
//!
//! let nats = daisy_nats::connect(&ConnectOptions::new("nats://127.0.0.1:4222")).await?;
//! let run = RunId::new("cells").ok_or("invalid run id")?;
//! let streams = nats.provision_run(&run, &RunSettings::default()).await?;
//! let task = TaskId::new("smooth")?;
//! let dispatch = Dispatch { task: task.to_string(), epoch: 1, blocks: vec![BlockWork { index: 0, attempt: 1 }] };
//! nats.publish_dispatch(&run, &task, &dispatch, &MsgId::dispatch(&run, &task, 0, 1), None).await?;
//! # let _ = streams; Ok(()) }
//! ```

mod blocks;
mod connect;
mod dlq;
mod events;
pub mod fault;
mod identity;
mod lease;
mod meta;
mod provision;
mod publish;
mod running;
pub mod server;
pub mod trace;

/// Message headers, passed through on publish and handed out on receipt (`traceparent`).
pub use async_nats::HeaderMap;
pub use blocks::{
    AckError, BlockAcker, BlockConsumer, BlockMessage, BlockMessageError, BlockStreamState,
    ConsumerError, ConsumerSettings, ReceivedDispatch, StreamInfoError,
};
pub use connect::{ConnectError, ConnectOptions, FlushError, Nats, connect};
pub use dlq::{DeadLetter, DeadLetters};
pub use events::{
    BatchRecord, EventReplay, EventStreamSize, RecordedOutcomesError, ReplayError, ReplayedEvent,
};
pub use identity::process_identity;
pub use lease::{
    AcquireError, HolderError, Lease, LeaseHolder, LeaseLost, LeaseRecord, ReleaseError,
    current_holder, lease_bucket_ttl,
};
pub use meta::{DecodeValueError, MetaError, RunStatus, TaskStatus, WorkerInfo};
pub use provision::{
    DUPLICATE_WINDOW, DeleteRunError, ListRunsError, ProvisionError, RunSettings, RunStreams,
};
pub use publish::{PublishError, Published};
pub use running::{RunningPublishError, RunningReports, RunningSubscribeError};
