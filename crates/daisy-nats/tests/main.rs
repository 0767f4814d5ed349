//! Tests of daisy's JetStream layer against a real nats-server: one server per test.

mod blocks;
mod common;
mod connect;
mod dlq;
mod events;
mod lease;
mod meta;
mod provision;
mod publish;
