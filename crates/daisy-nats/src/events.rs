//! Replays a run's event stream from a sequence and keeps following it live (scheduler side).
//!
//! Owns the ordered consumer that reads the event stream; applying events to scheduling state
//! is the scheduler's business. An ordered consumer is ephemeral, unacknowledged and recreated
//! by the client on a gap, so a replay never skips or reorders events (notes B.8).
//!
//! ```text
//!  seq 1 ... seq N (= caught_up_at, the last sequence when the replay started) ... live tail
//!  └───────── catch-up: rebuild state ──────────┘  └── keep the standby's state current ──┘
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use daisy_proto::{DecodeError, Event, OutcomeReport, decode};
use futures::Stream;
use futures::stream::BoxStream;
use tracing::instrument;

use crate::RunStreams;

/// Why a replay could not start or broke off.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The event stream's state could not be read.
    #[error("could not read the state of event stream {stream}")]
    Info {
        /// The stream.
        stream: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::context::RequestError,
    },
    /// The ordered consumer could not be created.
    #[error("could not create a replay consumer on event stream {stream}")]
    Consumer {
        /// The stream.
        stream: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    /// The consumer's message stream could not be started.
    #[error("could not start replaying event stream {stream}")]
    Messages {
        /// The stream.
        stream: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::consumer::StreamError,
    },
    /// The replay broke off (the client gives up recreating the consumer after repeated
    /// failures, e.g. the stream was deleted).
    #[error("replay of event stream {stream} broke off")]
    Receive {
        /// The stream.
        stream: String,
        /// What JetStream said.
        #[source]
        source: async_nats::jetstream::consumer::pull::OrderedError,
    },
    /// A delivered message had no JetStream metadata.
    #[error("event stream {stream} delivered a message without jetstream metadata")]
    Metadata {
        /// The stream.
        stream: String,
        /// What the client said.
        #[source]
        source: async_nats::Error,
    },
}

/// One replayed event: its stream sequence and the event, or why the bytes are not one.
pub type ReplayedEvent = (u64, Result<Event, DecodeError>);

/// The events of a run in stream order, from a start sequence, then live as they arrive.
/// Never ends on its own; drop it to stop.
pub struct EventReplay {
    /// The last sequence in the stream when the replay started: once an event with this
    /// sequence (or a later one) arrived, the replay has caught up. 0 when the stream was
    /// empty.
    caught_up_at: u64,
    /// The decoded message stream.
    inner: BoxStream<'static, Result<ReplayedEvent, ReplayError>>,
}

impl std::fmt::Debug for EventReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReplay").field("caught_up_at", &self.caught_up_at).finish()
    }
}

impl EventReplay {
    /// The last stream sequence when the replay started; every event up to it was written
    /// before the replay began, so the replay has caught up once it yielded this sequence.
    /// Nothing to catch up on if it is 0 (empty stream) or below the start sequence.
    pub fn caught_up_at(&self) -> u64 {
        self.caught_up_at
    }
}

impl Stream for EventReplay {
    type Item = Result<ReplayedEvent, ReplayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// What the record holds for one dispatch message.
#[derive(Debug, Clone, Default)]
pub struct BatchRecord {
    /// Its outcome reports, in order.
    pub reports: Vec<OutcomeReport>,
    /// Its claims: (delivery, worker), in order.
    pub claims: Vec<(u64, daisy_proto::WorkerId)>,
    /// The event-stream sequence of the last event on its subject (0: none): a claim
    /// expects it.
    pub last_sequence: u64,
}

/// Why the recorded outcomes of a dispatch message could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not read the outcomes recorded for block message {dispatch_sequence} of task {task}"
)]
pub struct RecordedOutcomesError {
    /// The task.
    pub task: String,
    /// The dispatch message.
    pub dispatch_sequence: u64,
    /// What JetStream said.
    #[source]
    pub source: async_nats::jetstream::stream::RawMessageError,
}

/// How large a run's event stream is ([`RunStreams::event_stream_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventStreamSize {
    /// Events stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// The sequence of the last event recorded so far (0 for none).
    pub last_sequence: u64,
}

impl RunStreams {
    /// The sequence of the last event recorded so far (0 for none).
    ///
    /// # Errors
    /// [`ReplayError::Info`] if the stream state cannot be read.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err(level = "debug"))]
    pub async fn event_stream_last_sequence(&self) -> Result<u64, ReplayError> {
        let info = self.events.get_info().await.map_err(|source| ReplayError::Info {
            stream: daisy_proto::subjects::event_stream(&self.run),
            source,
        })?;
        Ok(info.state.last_sequence)
    }

    /// How large the event stream is: its events, bytes and last sequence, from one stream
    /// info request (read by the leader's metrics once a second, never per block).
    ///
    /// # Errors
    /// [`ReplayError::Info`] if the stream state cannot be read.
    #[instrument(level = "debug", skip_all, fields(run = %self.run), err(level = "debug"))]
    pub async fn event_stream_size(&self) -> Result<EventStreamSize, ReplayError> {
        let info = self.events.get_info().await.map_err(|source| ReplayError::Info {
            stream: daisy_proto::subjects::event_stream(&self.run),
            source,
        })?;
        Ok(EventStreamSize {
            messages: info.state.messages,
            bytes: info.state.bytes,
            last_sequence: info.state.last_sequence,
        })
    }

    /// What the record holds for the dispatch message at `dispatch_sequence` of `task`:
    /// every outcome report (all deliveries and parts) and claim, read by subject from the
    /// stream leader. Undecodable events are skipped.
    ///
    /// # Errors
    /// [`RecordedOutcomesError`] if a read failed.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, %task, dispatch_sequence), err(level = "debug"))]
    pub async fn batch_record(
        &self,
        task: &daisy_core::TaskId,
        dispatch_sequence: u64,
    ) -> Result<BatchRecord, RecordedOutcomesError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let subject = daisy_proto::subjects::event_subject(
            &self.run,
            daisy_proto::subjects::EventScope::Batch(task, dispatch_sequence),
        );
        let mut record = BatchRecord::default();
        let mut next = 1;
        loop {
            match self.events.get_first_raw_message_by_subject(&subject, next).await {
                Ok(message) => {
                    next = message.sequence + 1;
                    record.last_sequence = message.sequence;
                    match decode::<Event>(&message.payload) {
                        Ok(Event::Outcomes(report)) => record.reports.push(report),
                        Ok(Event::BatchClaimed { delivery, worker, .. }) => {
                            record.claims.push((delivery, worker));
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%subject, sequence = message.sequence, %error, "recorded event is not decodable");
                        }
                    }
                }
                Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => {
                    return Ok(record);
                }
                Err(source) => {
                    return Err(RecordedOutcomesError {
                        task: task.to_string(),
                        dispatch_sequence,
                        source,
                    });
                }
            }
        }
    }

    /// Every outcome report recorded for the dispatch message at `dispatch_sequence` of
    /// `task` (see [`RunStreams::batch_record`]).
    ///
    /// # Errors
    /// [`RecordedOutcomesError`] if a read failed.
    pub async fn recorded_outcomes(
        &self,
        task: &daisy_core::TaskId,
        dispatch_sequence: u64,
    ) -> Result<Vec<OutcomeReport>, RecordedOutcomesError> {
        Ok(self.batch_record(task, dispatch_sequence).await?.reports)
    }

    /// Replays the run's events from `start_sequence` (1, or 0, for the whole stream; the
    /// sequence after a snapshot's otherwise), then follows new events live.
    ///
    /// # Errors
    /// [`ReplayError`] if the stream state cannot be read or the consumer cannot be created.
    #[instrument(level = "debug", skip_all, fields(run = %self.run, start_sequence), err)]
    pub async fn replay_events(&self, start_sequence: u64) -> Result<EventReplay, ReplayError> {
        let stream_name = daisy_proto::subjects::event_stream(&self.run);
        let info = self
            .events
            .get_info()
            .await
            .map_err(|source| ReplayError::Info { stream: stream_name.clone(), source })?;
        let deliver_policy = if start_sequence <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence }
        };
        let consumer = self
            .events
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                ..pull::OrderedConfig::default()
            })
            .await
            .map_err(|source| ReplayError::Consumer { stream: stream_name.clone(), source })?;
        let messages = consumer
            .messages()
            .await
            .map_err(|source| ReplayError::Messages { stream: stream_name.clone(), source })?;
        let inner = futures::StreamExt::map(messages, move |message| {
            let message = message
                .map_err(|source| ReplayError::Receive { stream: stream_name.clone(), source })?;
            let sequence = message
                .info()
                .map_err(|source| ReplayError::Metadata { stream: stream_name.clone(), source })?
                .stream_sequence;
            let event = decode::<Event>(&message.payload);
            if let Err(error) = &event {
                tracing::warn!(
                    stream = %stream_name,
                    subject = %message.subject,
                    sequence,
                    %error,
                    "event is not decodable"
                );
            }
            Ok((sequence, event))
        });
        Ok(EventReplay { caught_up_at: info.state.last_sequence, inner: Box::pin(inner) })
    }
}
