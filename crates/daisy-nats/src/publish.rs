//! Publishes dispatches and events to JetStream with a `Nats-Msg-Id`, awaiting the PubAck.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
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

impl PublishError {
    /// Whether the stream refused the message because its last sequence was not the one
    /// expected (`Nats-Expected-Last-Sequence`): someone else published in between.
    pub fn is_wrong_last_sequence(&self) -> bool {
        let source = match self {
            PublishError::Send { source, .. } | PublishError::Ack { source, .. } => source,
        };
        source.kind() == PublishErrorKind::WrongLastSequence
    }

    /// Whether the message is larger than the server accepts.
    pub fn is_too_large(&self) -> bool {
        let source = match self {
            PublishError::Send { source, .. } | PublishError::Ack { source, .. } => source,
        };
        source.kind() == PublishErrorKind::MaxPayloadExceeded
    }
}

impl Nats {
    /// Publishes a dispatch on the task's block subject and waits until the block stream
    /// stored it. `headers` (e.g. `traceparent`) are sent along; `Nats-Msg-Id` is set from
    /// `msg_id`.
    ///
    /// # Errors
    /// [`PublishError`] if it was not stored.
    #[instrument(level = "debug", skip_all, fields(%run, %task, %msg_id), err(level = "debug"))]
    pub async fn publish_dispatch(
        &self,
        run: &RunId,
        task: &TaskId,
        dispatch: &Dispatch,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
    ) -> Result<Published, PublishError> {
        let subject = subjects::block_subject(run, task);
        self.publish_expecting(subject, encode(dispatch), Some(msg_id), headers, None, None).await
    }

    /// [`Nats::publish_dispatch`], stored only if the block stream's last message is
    /// `expected_last_sequence` (the leader's fence: see the scheduler's docs).
    ///
    /// # Errors
    /// [`PublishError`] if it was not stored; [`PublishError::is_wrong_last_sequence`] tells
    /// that someone else published in between.
    #[instrument(level = "debug", skip_all, fields(%run, %task, %msg_id), err(level = "debug"))]
    pub async fn publish_dispatch_fenced(
        &self,
        run: &RunId,
        task: &TaskId,
        dispatch: &Dispatch,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
        expected_last_sequence: u64,
    ) -> Result<Published, PublishError> {
        let subject = subjects::block_subject(run, task);
        let expected = Some(expected_last_sequence);
        self.publish_expecting(subject, encode(dispatch), Some(msg_id), headers, expected, None)
            .await
    }

    /// Publishes the fence marker of a new leader of `epoch` in the block stream, stored only
    /// if the stream's last message is `expected_last_sequence` (see
    /// [`subjects::fence_subject`]). Returns where it was stored.
    ///
    /// # Errors
    /// As [`Nats::publish_dispatch`].
    #[instrument(level = "debug", skip_all, fields(%run, epoch), err(level = "debug"))]
    pub async fn publish_fence(
        &self,
        run: &RunId,
        epoch: u64,
        expected_last_sequence: u64,
    ) -> Result<Published, PublishError> {
        let subject = subjects::fence_subject(run, epoch);
        let expected = Some(expected_last_sequence);
        self.publish_expecting(subject, Vec::new(), None, None, expected, None).await
    }

    /// Publishes a worker's claim of a dispatch message on the message's event subject,
    /// stored only if the subject's last event is still `expected_last_subject_sequence`
    /// (0: none): of two workers handed the same delivery, one claim is stored.
    ///
    /// # Errors
    /// [`PublishError`]; [`PublishError::is_wrong_last_sequence`] tells that another event
    /// (another worker's claim) got there first.
    #[instrument(level = "debug", skip_all, fields(%run, %task, dispatch_sequence), err(level = "debug"))]
    pub async fn publish_claim(
        &self,
        run: &RunId,
        task: &TaskId,
        dispatch_sequence: u64,
        claim: &Event,
        expected_last_subject_sequence: u64,
    ) -> Result<Published, PublishError> {
        let scope = EventScope::Batch(task, dispatch_sequence);
        let msg_id = MsgId::for_event(run, claim);
        self.publish_event_fenced(run, scope, claim, &msg_id, None, expected_last_subject_sequence)
            .await
    }

    /// [`Nats::publish_event`], stored only if the last event on its subject is still
    /// `expected_last_subject_sequence`: a worker records the outcomes of a batch only while
    /// nobody else claimed it since its own claim (or its own previous part).
    ///
    /// # Errors
    /// [`PublishError`]; [`PublishError::is_wrong_last_sequence`] tells that another event
    /// got there first (or that a retried copy was stored already).
    #[instrument(level = "debug", skip_all, fields(%run, %msg_id), err(level = "debug"))]
    pub async fn publish_event_fenced(
        &self,
        run: &RunId,
        scope: EventScope<'_>,
        event: &Event,
        msg_id: &MsgId,
        headers: Option<HeaderMap>,
        expected_last_subject_sequence: u64,
    ) -> Result<Published, PublishError> {
        let subject = subjects::event_subject(run, scope);
        let expected = Some(expected_last_subject_sequence);
        self.publish_expecting(subject, encode(event), Some(msg_id), headers, None, expected).await
    }

    /// The most bytes one message may carry on this server.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
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
        let subject = subjects::event_subject(run, scope);
        self.publish_expecting(subject, encode(event), Some(msg_id), headers, None, None).await
    }

    /// Publishes raw bytes with optional expectations on the stream's or the subject's last
    /// sequence, and awaits the PubAck.
    async fn publish_expecting(
        &self,
        subject: String,
        payload: Vec<u8>,
        msg_id: Option<&MsgId>,
        headers: Option<HeaderMap>,
        expected_last_sequence: Option<u64>,
        expected_last_subject_sequence: Option<u64>,
    ) -> Result<Published, PublishError> {
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        if let Some(msg_id) = msg_id {
            publish = publish.message_id(msg_id.as_str());
        }
        if let Some(sequence) = expected_last_sequence {
            publish = publish.expected_last_sequence(sequence);
        }
        if let Some(sequence) = expected_last_subject_sequence {
            publish = publish.expected_last_subject_sequence(sequence);
        }
        let msg_id = msg_id.map_or("-", MsgId::as_str);
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
