//! Publishes dispatches and events to JetStream with a `Nats-Msg-Id`, awaiting the PubAck.

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use daisy_core::TaskId;
use daisy_proto::subjects::{self, EventScope, MsgId};
use daisy_proto::{Dispatch, Event, RunId, encode};
use tracing::instrument;

use crate::Nats;

/// What JetStream answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's sequence in its stream (of the first copy, for a duplicate).
    pub stream_sequence: u64,
    /// Whether the stream already held a message with this `Nats-Msg-Id` (inside the duplicate
    /// window) and dropped this one.
    pub duplicate: bool,
}

/// Why a publish was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message could not be sent (connection gone, too large, no stream on the subject).
    #[error("could not publish to {subject}")]
    Send {
        /// The subject.
        subject: String,
        /// What the client said.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// The stream did not acknowledge the message (timeout, stream full, no stream).
    #[error("publish to {subject} was not acknowledged")]
    Ack {
        /// The subject.
        subject: String,
        /// What the client said.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

impl Nats {
    /// Publishes a dispatch on the task's block subject and waits until the block stream
    /// stored it. `headers` (e.g. `traceparent`) are sent along; `Nats-Msg-Id` is set from
    /// `msg_id`.
    ///
    /// # Errors
    /// [`PublishError`] if it was not stored.
    #[instrument(level = "debug", skip_all, fields(%run, %task, %msg_id), err)]
    pub async fn publish_dispatch(
        &self,
        run: &RunId,
        task: &TaskId,
        dispatch: &Dispatch,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
    ) -> Result<Published, PublishError> {
        self.publish_encoded(subjects::block_subject(run, task), encode(dispatch), msg_id, headers)
            .await
    }

    /// Publishes an event on the run's or the task's event subject and waits until the event
    /// stream stored it. `headers` are sent along; `Nats-Msg-Id` is set from `msg_id`
    /// (usually [`MsgId::for_event`]).
    ///
    /// # Errors
    /// [`PublishError`] if it was not stored.
    #[instrument(level = "debug", skip_all, fields(%run, %msg_id), err)]
    pub async fn publish_event(
        &self,
        run: &RunId,
        scope: EventScope<'_>,
        event: &Event,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
    ) -> Result<Published, PublishError> {
        self.publish_encoded(subjects::event_subject(run, scope), encode(event), msg_id, headers)
            .await
    }

    /// Publishes raw bytes with a message id and awaits the PubAck.
    async fn publish_encoded(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
    ) -> Result<Published, PublishError> {
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        let publish = publish.message_id(msg_id.as_str());
        let ack_future = match self.jetstream.send_publish(subject.clone(), publish).await {
            Ok(ack_future) => ack_future,
            Err(source) => return Err(PublishError::Send { subject, source }),
        };
        let ack = match ack_future.await {
            Ok(ack) => ack,
            Err(source) => return Err(PublishError::Ack { subject, source }),
        };
        if ack.duplicate {
            tracing::debug!(%subject, %msg_id, sequence = ack.sequence, "duplicate publish dropped");
        }
        Ok(Published { stream_sequence: ack.sequence, duplicate: ack.duplicate })
    }
}
