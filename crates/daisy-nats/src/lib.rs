//! Connects daisy to NATS JetStream; the only crate that imports async-nats.
//!
//! Layout:
//! * [`server`]: finds or installs a `nats-server` binary, runs a local server as a child
//!   process and waits until JetStream is ready (for `daisy run` and tests).
//!
//! Connecting, JetStream provisioning, typed publish/consume and trace-context headers will
//! live here too; subject and stream names come from `daisy-proto`, never from this crate.

pub mod server;
