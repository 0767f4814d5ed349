//! Takes dispatches from a task's block subject (worker side) and reads or deletes block
//! messages by sequence (scheduler side).
//!
//! Owns the durable pull consumer of one task and the acknowledgement of each delivery; what a
//! worker does with a block, and when it acks, is `daisy-worker`'s business.
//!
//! ```text
//!  fetch(max, expires) ──► ReceivedDispatch ──► ack()      done: the WorkQueue deletes it
//!                           (attempt =          nak(delay) redeliver (after delay)
//!                            delivered)         progress() restart the AckWait timer
//!                                               term()     never redeliver (2.15 removes it,
//!                                                          older servers keep it: delete it)
//!  no ack within AckWait ─► redelivered, up to max_deliver; then a MAX_DELIVERIES advisory
//!                           (see `dlq`) and the message STAYS
//! ```
//!
//! Invariant: a message that is not a [`Dispatch`] is never handed on as one: it arrives as
//! `Err(DecodeError)`, is logged at warn with its subject and sequence and counted
//! ([`BlockConsumer::undecodable_count`]); the caller terms it and deletes it with
//! [`RunStreams::delete_block_message`].
//!
//! Why every acknowledgement waits for the server (AckSync): a lost `+ACK` would redeliver a
//! finished block after AckWait; a confirmed one costs a round trip, which is nothing next to
//! a block's processing time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind};
use async_nats::jetstream::{AckKind, ErrorCode, consumer};
use daisy_core::TaskId;
use daisy_proto::{DecodeError, Dispatch, decode, subjects};
use futures::StreamExt;
use tracing::instrument;

use crate::RunStreams;

/// How a task's durable consumer redelivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// How long a delivery may go without ack or progress before it is redelivered (the
    /// block timeout; heartbeats with [`BlockAcker::progress`] extend it).
    pub ack_wait: Duration,
    /// How many deliveries a block message gets before it goes to the dead-letter stream.
    pub max_deliver: i64,
    /// How many deliveries may be unacknowledged at once across all workers of the task.
    pub max_ack_pending: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

/// Why a consumer could not be created or could not fetch.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Creating or updating the durable consumer failed.
    #[error("could not create or update consumer {consumer} on stream {stream}")]
    Ensure {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    /// A pull request failed.
    #[error("could not fetch from consumer {consumer}")]
    Fetch {
        /// The consumer.
        consumer: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::consumer::pull::BatchError,
    },
    /// A pull request ended with an error (e.g. the consumer was deleted meanwhile).
    #[error("pull from consumer {consumer} failed")]
    Receive {
        /// The consumer.
        consumer: String,
        /// What the client said.
        #[source]
        source: async_nats::Error,
    },
    /// A delivered message was broken (no JetStream reply subject).
    #[error("consumer {consumer} delivered a message without jetstream metadata")]
    Metadata {
        /// The consumer.
        consumer: String,
        /// What the client said.
        #[source]
        source: async_nats::Error,
    },
}

/// Why an acknowledgement was not confirmed.
#[derive(Debug, thiserror::Error)]
#[error("{kind} of block message {stream_sequence} was not confirmed")]
pub struct AckError {
    /// Which acknowledgement: `ack`, `nak`, `progress` or `term`.
    pub kind: &'static str,
    /// The block message's stream sequence.
    pub stream_sequence: u64,
    /// What the client said.
    #[source]
    pub source: async_nats::Error,
}

/// Why block messages could not be read or deleted.
#[derive(Debug, thiserror::Error)]
pub enum BlockMessageError {
    /// The queued messages of a task could not be purged.
    #[error("could not purge the block messages of task {task} from stream {stream}")]
    Purge {
        /// The stream.
        stream: String,
        /// The task.
        task: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::stream::PurgeError,
    },
    /// The message could not be read (it was acked or deleted already, or the request failed).
    #[error("could not read block message {stream_sequence} of stream {stream}")]
    Get {
        /// The stream.
        stream: String,
        /// The sequence.
        stream_sequence: u64,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::stream::RawMessageError,
    },
    /// The message could not be deleted.
    #[error("could not delete block message {stream_sequence} of stream {stream}")]
    Delete {
        /// The stream.
        stream: String,
        /// The sequence.
        stream_sequence: u64,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::stream::DeleteMessageError,
    },
}

/// The state of a stream could not be read.
#[derive(Debug, thiserror::Error)]
#[error("could not read the state of stream {stream}")]
pub struct StreamInfoError {
    /// The stream.
    pub stream: String,
    /// What JetStream said.
    #[source]
    pub source: async_nats::jetstream::context::RequestError,
}

/// How long past its expiry a pull may go on: the server ends a pull at its expiry, but one
/// it forgot (it restarted mid-pull) never ends.
const PULL_GRACE: Duration = Duration::from_secs(5);

/// A task's durable pull consumer on the run's block stream. Cheap to clone; clones share the
/// undecodable counter.
#[derive(Debug, Clone)]
pub struct BlockConsumer {
    /// The JetStream consumer handle.
    consumer: consumer::Consumer<pull::Config>,
    /// The consumer's name, for errors and logs.
    name: String,
    /// Messages that did not decode as a [`Dispatch`], since this handle was made.
    undecodable: Arc<AtomicU64>,
}

/// One delivery of a block message.
#[derive(Debug)]
pub struct ReceivedDispatch {
    /// The dispatch, or why the bytes are not one (then [`BlockAcker::term`] it and delete it).
    pub dispatch: Result<Dispatch, DecodeError>,
    /// Which delivery this is, from 1 (redeliveries after AckWait or nak count too).
    pub delivered: u64,
    /// The message's sequence in the block stream.
    pub stream_sequence: u64,
    /// The subject it was published on.
    pub subject: String,
    /// Its headers (`traceparent`, `Nats-Msg-Id`), if any.
    pub headers: Option<HeaderMap>,
    /// When the server stored it (where a block's queue wait starts).
    pub published: std::time::SystemTime,
    /// Acknowledges this delivery; can move to another task.
    pub acker: BlockAcker,
}

/// Acknowledges one delivery of a block message; every call waits for the server.
pub struct BlockAcker {
    /// The client's acker.
    acker: Acker,
    /// The message's stream sequence, for errors.
    stream_sequence: u64,
}

impl std::fmt::Debug for BlockAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockAcker").field("stream_sequence", &self.stream_sequence).finish()
    }
}

impl BlockAcker {
    /// The block is done: the WorkQueue stream deletes the message.
    ///
    /// # Errors
    /// [`AckError`] if the server did not confirm (the block may then be redelivered).
    pub async fn ack(&self) -> Result<(), AckError> {
        self.send("ack", AckKind::Ack).await
    }

    /// The block was not processed: redeliver it now, or after `delay`.
    ///
    /// # Errors
    /// [`AckError`] if the server did not confirm (it is redelivered after AckWait anyway).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), AckError> {
        self.send("nak", AckKind::Nak(delay)).await
    }

    /// The block is still being processed: restart the AckWait timer (send well within it).
    ///
    /// # Errors
    /// [`AckError`] if the server did not confirm.
    pub async fn progress(&self) -> Result<(), AckError> {
        self.send("progress", AckKind::Progress).await
    }

    /// Never redeliver this message. nats-server 2.15 then removes it from the WorkQueue
    /// stream; older servers keep it until [`RunStreams::delete_block_message`], so call that
    /// after a term.
    ///
    /// # Errors
    /// [`AckError`] if the server did not confirm.
    pub async fn term(&self) -> Result<(), AckError> {
        self.send("term", AckKind::Term).await
    }

    async fn send(&self, kind: &'static str, ack_kind: AckKind) -> Result<(), AckError> {
        self.acker.double_ack_with(ack_kind).await.map_err(|source| AckError {
            kind,
            stream_sequence: self.stream_sequence,
            source,
        })
    }
}

impl BlockConsumer {
    /// Creates the task's durable consumer (explicit ack, filtered on the task's block
    /// subject), or updates its settings if it exists.
    ///
    /// # Errors
    /// [`ConsumerError::Ensure`] if JetStream refused (e.g. the run is not provisioned).
    #[instrument(level = "debug", skip_all, fields(run = %streams.run, %task), err)]
    pub async fn ensure(
        streams: &RunStreams,
        task: &TaskId,
        settings: ConsumerSettings,
    ) -> Result<BlockConsumer, ConsumerError> {
        let name = subjects::block_consumer(task);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("daisy workers of task {task}")),
            filter_subject: subjects::block_subject(&streams.run, task),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: settings.max_ack_pending,
            ..pull::Config::default()
        };
        let consumer = streams.blocks.create_consumer(config).await.map_err(|source| {
            ConsumerError::Ensure {
                stream: subjects::block_stream(&streams.run),
                consumer: name.clone(),
                source,
            }
        })?;
        Ok(BlockConsumer { consumer, name, undecodable: Arc::new(AtomicU64::new(0)) })
    }

    /// Pulls up to `max` deliveries, waiting at most `expires` (returns early once `max`
    /// arrived; an empty batch means nothing came).
    ///
    /// # Errors
    /// [`ConsumerError::Fetch`] if the pull failed (connection, consumer deleted).
    #[instrument(level = "debug", skip_all, fields(consumer = %self.name, max), err)]
    pub async fn fetch(
        &self,
        max: usize,
        expires: Duration,
    ) -> Result<Vec<ReceivedDispatch>, ConsumerError> {
        let fetch_error = |source| ConsumerError::Fetch { consumer: self.name.clone(), source };
        let batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(expires)
            .messages()
            .await
            .map_err(fetch_error)?;
        self.collect(batch, max, expires).await
    }

    /// Pulls up to `max` deliveries that are available right now, without
    /// waiting for more to arrive (JetStream's `no_wait` pull).
    ///
    /// # Errors
    /// [`ConsumerError::Fetch`] if the pull failed (connection, consumer deleted).
    #[instrument(level = "debug", skip_all, fields(consumer = %self.name, max), err)]
    pub async fn fetch_now(&self, max: usize) -> Result<Vec<ReceivedDispatch>, ConsumerError> {
        let fetch_error = |source| ConsumerError::Fetch { consumer: self.name.clone(), source };
        let batch =
            self.consumer.fetch().max_messages(max).messages().await.map_err(fetch_error)?;
        self.collect(batch, max, Duration::ZERO).await
    }

    /// Collects a pull's deliveries until it ends, or until `expires` plus a grace period
    /// passed: a pull the server forgot (it restarted mid-pull) never ends by itself.
    async fn collect(
        &self,
        mut batch: pull::Batch,
        max: usize,
        expires: Duration,
    ) -> Result<Vec<ReceivedDispatch>, ConsumerError> {
        let deadline = tokio::time::Instant::now() + expires + PULL_GRACE;
        let mut received = Vec::with_capacity(max);
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, batch.next()).await else {
                tracing::debug!(consumer = %self.name, received = received.len(), "pull ended by its deadline");
                break;
            };
            let Some(message) = next else { break };
            let message = message
                .map_err(|source| ConsumerError::Receive { consumer: self.name.clone(), source })?;
            received.push(self.receive(message)?);
        }
        Ok(received)
    }

    /// Turns a delivered message into a [`ReceivedDispatch`], logging undecodable bytes.
    fn receive(
        &self,
        message: async_nats::jetstream::Message,
    ) -> Result<ReceivedDispatch, ConsumerError> {
        let (stream_sequence, delivered, published) = {
            let info = message.info().map_err(|source| ConsumerError::Metadata {
                consumer: self.name.clone(),
                source,
            })?;
            (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(0),
                std::time::SystemTime::from(info.published),
            )
        };
        let (message, acker) = message.split();
        let subject = message.subject.to_string();
        let dispatch = decode::<Dispatch>(&message.payload);
        if let Err(error) = &dispatch {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %subject,
                stream_sequence,
                delivered,
                %error,
                "block message is not a dispatch"
            );
        }
        Ok(ReceivedDispatch {
            dispatch,
            delivered,
            stream_sequence,
            subject,
            headers: message.headers,
            published,
            acker: BlockAcker { acker, stream_sequence },
        })
    }

    /// How many fetched messages did not decode as a [`Dispatch`] (through this handle and
    /// its clones).
    pub fn undecodable_count(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where the block stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStreamState {
    /// Messages in it (queued or delivered, not yet acked).
    pub messages: u64,
    /// The sequence of the first message in it.
    pub first_sequence: u64,
    /// The sequence of the last message ever stored (also when it is gone since): what a
    /// publish with `Nats-Expected-Last-Sequence` is checked against.
    pub last_sequence: u64,
}

/// A block message read by sequence, without consuming it.
#[derive(Debug)]
pub struct BlockMessage {
    /// The dispatch, or why the bytes are not one.
    pub dispatch: Result<Dispatch, DecodeError>,
    /// The subject it was published on (names the task).
    pub subject: String,
    /// Its headers, if any.
    pub headers: HeaderMap,
    /// Its sequence in the block stream.
    pub stream_sequence: u64,
}

impl RunStreams {
    /// Reads the block message at `stream_sequence` without consuming it (to learn which
    /// blocks a dead letter held).
    ///
    /// # Errors
    /// [`BlockMessageError::Get`] if it is gone or the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, stream_sequence), err(level = "debug"))]
    pub async fn get_block_message(
        &self,
        stream_sequence: u64,
    ) -> Result<BlockMessage, BlockMessageError> {
        let message = self.blocks.get_raw_message(stream_sequence).await.map_err(|source| {
            BlockMessageError::Get {
                stream: subjects::block_stream(&self.run),
                stream_sequence,
                source,
            }
        })?;
        Ok(BlockMessage {
            dispatch: decode::<Dispatch>(&message.payload),
            subject: message.subject.to_string(),
            headers: message.headers,
            stream_sequence: message.sequence,
        })
    }

    /// Deletes the block message at `stream_sequence`: a dead-lettered message (and, on
    /// servers before 2.11, a termed one) stays in the WorkQueue stream otherwise. Returns
    /// `false` if it was already gone, so calling it after every `term` is safe.
    ///
    /// # Errors
    /// [`BlockMessageError::Delete`] if the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, stream_sequence), err(level = "debug"))]
    pub async fn delete_block_message(
        &self,
        stream_sequence: u64,
    ) -> Result<bool, BlockMessageError> {
        let delete_error = |source| BlockMessageError::Delete {
            stream: subjects::block_stream(&self.run),
            stream_sequence,
            source,
        };
        match self.blocks.delete_message(stream_sequence).await {
            Ok(deleted) => Ok(deleted),
            Err(error) => {
                // The server reports a missing message as a generic delete failure (10057),
                // or another JetStream error; ask for the message to tell "already gone"
                // from a real failure.
                let answered = matches!(
                    error.kind(),
                    DeleteMessageErrorKind::JetStream(inner)
                        if inner.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                            || inner.error_code() == ErrorCode::NO_MESSAGE_FOUND
                );
                if answered {
                    match self.blocks.get_raw_message(stream_sequence).await {
                        Err(get_error)
                            if get_error.kind() == RawMessageErrorKind::NoMessageFound =>
                        {
                            return Ok(false);
                        }
                        _ => {}
                    }
                }
                Err(delete_error(error))
            }
        }
    }

    /// The first block message at or after `from_sequence` (`None` past the last one):
    /// walks what is queued without a round trip per deleted sequence.
    ///
    /// # Errors
    /// [`BlockMessageError::Get`] if the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, from_sequence), err(level = "debug"))]
    pub async fn next_block_message(
        &self,
        from_sequence: u64,
    ) -> Result<Option<BlockMessage>, BlockMessageError> {
        let subjects = subjects::block_subjects(&self.run);
        match self.blocks.get_first_raw_message_by_subject(&subjects, from_sequence).await {
            Ok(message) => Ok(Some(BlockMessage {
                dispatch: decode::<Dispatch>(&message.payload),
                subject: message.subject.to_string(),
                headers: message.headers,
                stream_sequence: message.sequence,
            })),
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(source) => Err(BlockMessageError::Get {
                stream: subjects::block_stream(&self.run),
                stream_sequence: from_sequence,
                source,
            }),
        }
    }

    /// Removes the fence markers of leaders stored before `before_sequence` (all of them
    /// with `u64::MAX`); returns how many.
    ///
    /// # Errors
    /// [`BlockMessageError::Purge`] if the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err(level = "debug"))]
    pub async fn purge_fences(&self, before_sequence: u64) -> Result<u64, BlockMessageError> {
        let purge = self.blocks.purge().filter(subjects::fence_subjects(&self.run));
        let purged = if before_sequence == u64::MAX {
            purge.await
        } else {
            purge.sequence(before_sequence).await
        };
        purged.map(|purged| purged.purged).map_err(|source| BlockMessageError::Purge {
            stream: subjects::block_stream(&self.run),
            task: "fence".to_owned(),
            source,
        })
    }

    /// Whether the block message at `stream_sequence` is still in the stream (queued or
    /// delivered and not yet acked).
    ///
    /// # Errors
    /// [`BlockMessageError::Get`] if the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, stream_sequence), err(level = "debug"))]
    pub async fn block_message_exists(
        &self,
        stream_sequence: u64,
    ) -> Result<bool, BlockMessageError> {
        match self.blocks.get_raw_message(stream_sequence).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(source) => Err(BlockMessageError::Get {
                stream: subjects::block_stream(&self.run),
                stream_sequence,
                source,
            }),
        }
    }

    /// Removes the block messages of `task` up to `through_sequence` (queued or delivered):
    /// the blocks of an abandoned task must not run. Messages published after it (by a later
    /// leader) are kept. Returns how many were removed.
    ///
    /// # Errors
    /// [`BlockMessageError::Purge`] if the request failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, task = %task), err)]
    pub async fn purge_task_blocks(
        &self,
        task: &TaskId,
        through_sequence: u64,
    ) -> Result<u64, BlockMessageError> {
        let subject = subjects::block_subject(&self.run, task);
        let purge = self.blocks.purge().filter(subject).sequence(through_sequence + 1);
        let purged = purge.await.map_err(|source| BlockMessageError::Purge {
            stream: subjects::block_stream(&self.run),
            task: task.to_string(),
            source,
        })?;
        Ok(purged.purged)
    }

    /// The block stream's message count and sequences: a leader taking over reads what is
    /// queued between the first and last, and fences from the last.
    ///
    /// # Errors
    /// [`StreamInfoError`] if the stream state cannot be read.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn block_stream_state(&self) -> Result<BlockStreamState, StreamInfoError> {
        let info = self.blocks.get_info().await.map_err(|source| StreamInfoError {
            stream: subjects::block_stream(&self.run),
            source,
        })?;
        Ok(BlockStreamState {
            messages: info.state.messages,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
        })
    }

    /// How many messages the block stream holds.
    ///
    /// # Errors
    /// [`StreamInfoError`] if the stream state cannot be read.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err)]
    pub async fn block_message_count(&self) -> Result<u64, StreamInfoError> {
        let info = self.blocks.get_info().await.map_err(|source| StreamInfoError {
            stream: subjects::block_stream(&self.run),
            source,
        })?;
        Ok(info.state.messages)
    }
}
