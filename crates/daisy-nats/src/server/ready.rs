//! Waits until a NATS server answers JetStream API requests.

use std::time::Duration;

use tokio::time::Instant;

/// The JetStream account-info API subject. This is NATS's own API, not a daisy subject, so it
/// does not come from `daisy_proto::subjects`.
const JETSTREAM_ACCOUNT_INFO_SUBJECT: &str = "$JS.API.INFO";
/// How long one connect-and-ask attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between attempts.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Why JetStream was not ready in time.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The deadline passed; `last_failure` says what went wrong at the last attempt.
    #[error("jetstream at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The server URL.
        url: String,
        /// The deadline that passed.
        timeout: Duration,
        /// The failure of the last attempt, if one finished.
        #[source]
        last_failure: Option<ProbeFailure>,
    },
}

/// Why one readiness attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    /// No connection to the server.
    #[error("could not connect")]
    Connect(#[source] async_nats::ConnectError),
    /// The account-info request got no reply (no responders means JetStream is off).
    #[error("jetstream account info request failed")]
    Request(#[source] async_nats::RequestError),
    /// The reply was not JSON.
    #[error("jetstream account info reply is not json")]
    NotJson(#[source] serde_json::Error),
    /// JetStream answered with an API error (e.g. 503 while it recovers its store).
    #[error("jetstream answered with error {code}: {description}")]
    JetStream {
        /// The API error code.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// The attempt did not finish in time.
    #[error("attempt timed out after {0:?}")]
    AttemptTimedOut(Duration),
}

/// Waits until the server at `url` accepts a connection and answers a JetStream account-info
/// request without error, retrying every 20 ms until `timeout`.
///
/// Why a raw request instead of `jetstream::Context::query_account`: the reply only has to
/// exist and carry no error, so this also works against servers whose reply async-nats cannot
/// parse (2.9, jetstream notes B.1), giving a clear error later rather than a hang here.
///
/// # Errors
///
/// [`ReadyError::Timeout`], carrying the last attempt's failure.
pub async fn wait_jetstream_ready(url: &str, timeout: Duration) -> Result<(), ReadyError> {
    let deadline = Instant::now() + timeout;
    let mut client = None;
    let mut last_failure = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadyError::Timeout { url: url.to_owned(), timeout, last_failure });
        }
        let attempt_timeout = remaining.min(ATTEMPT_TIMEOUT);
        match tokio::time::timeout(attempt_timeout, probe(&mut client, url, attempt_timeout)).await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(failure)) => last_failure = Some(failure),
            Err(_) => last_failure = Some(ProbeFailure::AttemptTimedOut(attempt_timeout)),
        }
        tracing::trace!(url, failure = ?last_failure, "jetstream not ready yet");
        tokio::time::sleep(RETRY_INTERVAL.min(remaining)).await;
    }
}

/// One attempt: connects if not yet connected, then asks for the JetStream account info.
async fn probe(
    client: &mut Option<async_nats::Client>,
    url: &str,
    attempt_timeout: Duration,
) -> Result<(), ProbeFailure> {
    let connected = match client.take() {
        Some(connected) => connected,
        None => async_nats::ConnectOptions::new()
            .connection_timeout(attempt_timeout)
            .connect(url)
            .await
            .map_err(ProbeFailure::Connect)?,
    };
    let reply = connected.request(JETSTREAM_ACCOUNT_INFO_SUBJECT, "".into()).await;
    *client = Some(connected);
    let reply = reply.map_err(ProbeFailure::Request)?;
    let body: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(ProbeFailure::NotJson)?;
    if let Some(error) = body.get("error") {
        return Err(ProbeFailure::JetStream {
            code: error.get("code").and_then(serde_json::Value::as_u64).unwrap_or(0),
            description: error
                .get("description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
    }
    Ok(())
}
