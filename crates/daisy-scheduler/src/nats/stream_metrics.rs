//! The leader's metrics of the run's record: whether this replica leads, the event stream's
//! size, and how far the live tail is behind the stream's end.
//!
//! One stream-info request a second, from a helper task of the leader: never a request per
//! block or per event. The live tail publishes how far it has read through a shared atomic
//! ([`TailPosition`]), which the helper compares with the stream's last sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use daisy_nats::RunStreams;
use daisy_telemetry::metrics::names;
use metrics::gauge;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the event stream's size is read.
const INTERVAL: Duration = Duration::from_secs(1);

/// The last event-stream sequence the leader's live tail has read.
#[derive(Debug, Clone, Default)]
pub(super) struct TailPosition(Arc<AtomicU64>);

impl TailPosition {
    /// The tail read through `sequence`.
    pub(super) fn read_through(&self, sequence: u64) {
        self.0.store(sequence, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Marks this replica as the leader of `epoch` in the metrics until dropped.
pub(super) struct Leading;

impl Leading {
    pub(super) fn start(epoch: u64) -> Self {
        metrics::counter!(names::LEADER_CHANGES_TOTAL).increment(1);
        gauge!(names::LEASE_EPOCH).set(epoch as f64);
        gauge!(names::LEADER).set(1.0);
        Leading
    }
}

impl Drop for Leading {
    /// A replica that no longer leads says nothing of the run: its last stream size and lag
    /// would stay (an alert on lag would fire for ever), so they go to zero with it.
    fn drop(&mut self) {
        gauge!(names::LEADER).set(0.0);
        for name in
            [names::EVENT_STREAM_BYTES, names::EVENT_STREAM_MESSAGES, names::SCHEDULER_LAG_EVENTS]
        {
            gauge!(name).set(0.0);
        }
    }
}

/// Reads the event stream's size every [`INTERVAL`] until `stop`; a failed read is skipped
/// (the gauges keep their last values).
pub(super) async fn watch_event_stream(
    streams: RunStreams,
    tail: TailPosition,
    stop: CancellationToken,
) {
    let bytes = gauge!(names::EVENT_STREAM_BYTES);
    let messages = gauge!(names::EVENT_STREAM_MESSAGES);
    let lag = gauge!(names::SCHEDULER_LAG_EVENTS);
    let mut interval = tokio::time::interval(INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        match streams.event_stream_size().await {
            Ok(size) => {
                bytes.set(size.bytes as f64);
                messages.set(size.messages as f64);
                lag.set(size.last_sequence.saturating_sub(tail.get()) as f64);
            }
            Err(err) => debug!(error = %err, "could not read the event stream's size"),
        }
    }
}
