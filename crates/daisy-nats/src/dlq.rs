//! Reads the dead-letter stream: which block messages exhausted their deliveries.
//!
//! Owns the durable consumer of `DAISY_<run>_DLQ`, which captures the server's
//! `MAX_DELIVERIES` advisories for the run's block stream (core NATS messages, lost if nobody
//! listens, hence a stream). Deciding what a dead block means (failed, retried) is the
//! scheduler's business.
//!
//! ```text
//!  block redelivered max_deliver times ──► advisory {stream_seq, deliveries} ──► DLQ stream
//!  scheduler: fetch_dead_letters ─► get_block_message(seq) ─► record failure
//!             ─► delete_block_message(seq) ─► DeadLetter::ack (the WorkQueue DLQ drops it)
//! ```
//!
//! Why a WorkQueue DLQ with one durable consumer: an acknowledged dead letter is handled and
//! gone; one the scheduler did not get to (it crashed) is delivered again to its successor.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{AckKind, consumer};
use daisy_proto::subjects;
use futures::StreamExt;
use serde::Deserialize;
use tracing::instrument;

use crate::RunStreams;
use crate::blocks::ConsumerError;

/// How long a fetched dead letter may go unacknowledged before it is delivered again.
const DLQ_ACK_WAIT: Duration = Duration::from_secs(60);

/// The fields daisy reads from a `io.nats.jetstream.advisory.v1.max_deliver` advisory.
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    /// The consumer that gave up.
    consumer: String,
    /// The block message's sequence in the block stream.
    stream_seq: u64,
    /// How many times it was delivered.
    deliveries: u64,
}

/// A block message that exhausted its deliveries.
pub struct DeadLetter {
    /// The block message's sequence in the block stream: read it with
    /// [`RunStreams::get_block_message`], then delete it with
    /// [`RunStreams::delete_block_message`].
    pub block_stream_sequence: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The consumer (task) that gave up on it.
    pub consumer: String,
    /// Acknowledges the advisory once handled.
    acker: Acker,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("block_stream_sequence", &self.block_stream_sequence)
            .field("deliveries", &self.deliveries)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl DeadLetter {
    /// Marks the dead letter handled; the DLQ stream drops it.
    ///
    /// # Errors
    /// [`crate::AckError`] if the server did not confirm (it is delivered again later).
    pub async fn ack(&self) -> Result<(), crate::AckError> {
        self.acker.double_ack_with(AckKind::Ack).await.map_err(|source| crate::AckError {
            kind: "ack",
            stream_sequence: self.block_stream_sequence,
            source,
        })
    }
}

impl DeadLetter {
    /// Asks for the advisory again after `delay`: it could not be handled now (the block
    /// message could not be read, or the failure not recorded).
    ///
    /// # Errors
    /// [`crate::AckError`] if the server did not confirm (it is delivered again later anyway).
    pub async fn retry_later(&self, delay: std::time::Duration) -> Result<(), crate::AckError> {
        self.acker.double_ack_with(AckKind::Nak(Some(delay))).await.map_err(|source| {
            crate::AckError { kind: "nak", stream_sequence: self.block_stream_sequence, source }
        })
    }
}

/// The durable consumer of a run's dead-letter stream.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// The JetStream consumer handle.
    consumer: consumer::Consumer<pull::Config>,
}

impl RunStreams {
    /// Opens (creating if needed) the durable consumer of the run's dead-letter stream.
    ///
    /// # Errors
    /// [`ConsumerError::Ensure`] if JetStream refused.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn dead_letters(&self) -> Result<DeadLetters, ConsumerError> {
        let config = pull::Config {
            durable_name: Some(subjects::DLQ_CONSUMER.to_owned()),
            description: Some("daisy scheduler reading dead block messages".to_owned()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: DLQ_ACK_WAIT,
            ..pull::Config::default()
        };
        let consumer =
            self.dlq.create_consumer(config).await.map_err(|source| ConsumerError::Ensure {
                stream: subjects::dlq_stream(&self.run),
                consumer: subjects::DLQ_CONSUMER.to_owned(),
                source,
            })?;
        Ok(DeadLetters { consumer })
    }
}

impl DeadLetters {
    /// Pulls up to `max` dead letters, waiting at most `expires`. Advisories that cannot be
    /// read are logged, acknowledged and skipped.
    ///
    /// # Errors
    /// [`ConsumerError::Fetch`] or [`ConsumerError::Receive`] if the pull failed.
    #[instrument(level = "debug", skip_all, fields(max), err)]
    pub async fn fetch(
        &self,
        max: usize,
        expires: Duration,
    ) -> Result<Vec<DeadLetter>, ConsumerError> {
        let mut batch =
            self.consumer.batch().max_messages(max).expires(expires).messages().await.map_err(
                |source| ConsumerError::Fetch {
                    consumer: subjects::DLQ_CONSUMER.to_owned(),
                    source,
                },
            )?;
        let mut letters = Vec::new();
        // A pull the server forgot (it restarted mid-pull) never ends by itself.
        let deadline = tokio::time::Instant::now() + expires + Duration::from_secs(5);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, batch.next()).await {
            let message = message.map_err(|source| ConsumerError::Receive {
                consumer: subjects::DLQ_CONSUMER.to_owned(),
                source,
            })?;
            let (message, acker) = message.split();
            match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
                Ok(advisory) => letters.push(DeadLetter {
                    block_stream_sequence: advisory.stream_seq,
                    deliveries: advisory.deliveries,
                    consumer: advisory.consumer,
                    acker,
                }),
                Err(error) => {
                    tracing::warn!(
                        subject = %message.subject,
                        %error,
                        "dead-letter advisory is not readable, dropping it"
                    );
                    if let Err(error) = acker.double_ack_with(AckKind::Ack).await {
                        tracing::warn!(error = %error, "could not drop unreadable advisory");
                    }
                }
            }
        }
        Ok(letters)
    }
}
