//! What workers run now: [`RunningReport`]s on core NATS, published by workers and read by
//! the leader. Not JetStream: a lost report is harmless (the next one replaces it), so it is
//! sent without an acknowledgement and stored nowhere.

use async_nats::Subscriber;
use daisy_proto::{DecodeError, RunId, RunningReport, decode, encode, subjects};
use futures::{Stream, StreamExt};
use tracing::instrument;

use crate::Nats;

/// A running report could not be handed to the connection (it is closed).
#[derive(Debug, thiserror::Error)]
#[error("could not publish what this worker runs to {subject}")]
pub struct RunningPublishError {
    /// The subject.
    pub subject: String,
    /// What the client said.
    #[source]
    pub source: async_nats::client::PublishError,
}

/// The leader could not subscribe to running reports.
#[derive(Debug, thiserror::Error)]
#[error("could not subscribe to {subject}")]
pub struct RunningSubscribeError {
    /// The subject.
    pub subject: String,
    /// What the client said.
    #[source]
    pub source: async_nats::SubscribeError,
}

/// The running reports of a run, as they arrive; a report that does not decode is an
/// `Err` item for the reader to log, never the end of the stream.
pub struct RunningReports(Subscriber);

impl RunningReports {
    /// The next report; `None` once the connection is closed for good.
    pub async fn next(&mut self) -> Option<Result<RunningReport, DecodeError>> {
        self.0.next().await.map(|message| decode(&message.payload))
    }

    /// The reports as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<RunningReport, DecodeError>> {
        self.0.map(|message| decode(&message.payload))
    }
}

impl Nats {
    /// Sends what this worker process runs now (fire and forget: no acknowledgement).
    ///
    /// # Errors
    /// [`RunningPublishError`] if the connection is closed.
    #[instrument(level = "trace", skip_all, fields(%run))]
    pub async fn publish_running(
        &self,
        run: &RunId,
        report: &RunningReport,
    ) -> Result<(), RunningPublishError> {
        let subject = subjects::running_subject(run);
        self.client
            .publish(subject.clone(), encode(report).into())
            .await
            .map_err(|source| RunningPublishError { subject, source })
    }

    /// Subscribes to the running reports of `run`.
    ///
    /// # Errors
    /// [`RunningSubscribeError`] if the connection is closed.
    pub async fn subscribe_running(
        &self,
        run: &RunId,
    ) -> Result<RunningReports, RunningSubscribeError> {
        let subject = subjects::running_subject(run);
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|source| RunningSubscribeError { subject, source })?;
        Ok(RunningReports(subscriber))
    }
}
