//! Worker-side consumption: ack, redelivery, heartbeats, garbage, and rates.

use std::time::{Duration, Instant};

use daisy_nats::{BlockConsumer, ConsumerSettings};
use daisy_proto::subjects::{self, MsgId};
use daisy_proto::{DecodeError, encode};

use crate::common::{TestResult, dispatch, fixture, task};

/// A short AckWait so that redelivery tests take about a second.
const SHORT_ACK_WAIT: Duration = Duration::from_secs(1);

fn short_ack_wait() -> ConsumerSettings {
    ConsumerSettings { ack_wait: SHORT_ACK_WAIT, max_deliver: 5, max_ack_pending: 100 }
}

#[tokio::test]
async fn an_acked_block_message_is_gone_from_the_work_queue() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let sent = dispatch(&smooth, 0, 3);
    let published = f
        .nats
        .publish_dispatch(&f.run, &smooth, &sent, &MsgId::dispatch(&f.run, &smooth, 0, 1), None)
        .await?;
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;

    let mut received = consumer.fetch(10, Duration::from_millis(500)).await?;
    assert_eq!(received.len(), 1);
    let block = received.remove(0);
    assert_eq!(block.dispatch, Ok(sent));
    assert_eq!(block.delivered, 1);
    assert_eq!(block.stream_sequence, published.stream_sequence);
    assert_eq!(block.subject, subjects::block_subject(&f.run, &smooth));
    block.acker.ack().await?;

    assert_eq!(f.streams.block_message_count().await?, 0);
    assert!(consumer.fetch(1, Duration::from_millis(300)).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_unacked_block_comes_back_after_ack_wait() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    f.nats
        .publish_dispatch(
            &f.run,
            &smooth,
            &dispatch(&smooth, 0, 1),
            &MsgId::dispatch(&f.run, &smooth, 0, 1),
            None,
        )
        .await?;
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, short_ack_wait()).await?;

    let first = consumer.fetch(1, Duration::from_secs(2)).await?;
    assert_eq!(first.len(), 1);
    let taken_at = Instant::now();
    // Not acked: a worker that died. The next fetch waits for the redelivery.
    let again = consumer.fetch(1, Duration::from_secs(5)).await?;
    assert_eq!(again.len(), 1, "the block was not redelivered within 5 s");
    assert!(taken_at.elapsed() >= SHORT_ACK_WAIT - Duration::from_millis(100));
    assert_eq!(again[0].delivered, 2);
    assert_eq!(again[0].stream_sequence, first[0].stream_sequence);
    again[0].acker.ack().await?;
    assert_eq!(f.streams.block_message_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn progress_heartbeats_keep_a_block_from_redelivery() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    f.nats
        .publish_dispatch(
            &f.run,
            &smooth,
            &dispatch(&smooth, 0, 1),
            &MsgId::dispatch(&f.run, &smooth, 0, 1),
            None,
        )
        .await?;
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, short_ack_wait()).await?;
    let mut taken = consumer.fetch(1, Duration::from_secs(2)).await?;
    let block = taken.pop().ok_or("nothing fetched")?;

    // Heartbeat every 300 ms for 2.5 AckWaits while another puller waits for a redelivery.
    let heartbeats = async {
        let deadline = Instant::now() + SHORT_ACK_WAIT * 5 / 2;
        while Instant::now() < deadline {
            block.acker.progress().await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok::<_, daisy_nats::AckError>(())
    };
    let (heartbeats, redelivered) =
        tokio::join!(heartbeats, consumer.fetch(1, SHORT_ACK_WAIT * 5 / 2));
    heartbeats?;
    assert!(redelivered?.is_empty(), "a heartbeated block was redelivered");

    block.acker.ack().await?;
    assert!(consumer.fetch(1, SHORT_ACK_WAIT * 3 / 2).await?.is_empty());
    assert_eq!(f.streams.block_message_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_nak_with_delay_redelivers_after_the_delay() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    f.nats
        .publish_dispatch(
            &f.run,
            &smooth,
            &dispatch(&smooth, 0, 1),
            &MsgId::dispatch(&f.run, &smooth, 0, 1),
            None,
        )
        .await?;
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;
    let first = consumer.fetch(1, Duration::from_secs(2)).await?;
    let nak_at = Instant::now();
    first[0].acker.nak(Some(Duration::from_millis(300))).await?;
    let again = consumer.fetch(1, Duration::from_secs(5)).await?;
    assert_eq!(again.len(), 1);
    assert!(nak_at.elapsed() >= Duration::from_millis(250));
    assert_eq!(again[0].delivered, 2);
    again[0].acker.ack().await?;
    Ok(())
}

#[tokio::test]
async fn garbage_on_a_block_subject_is_an_error_then_termed_and_deleted() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let raw = async_nats::jetstream::new(async_nats::connect(f.server.url()).await?);
    let subject = subjects::block_subject(&f.run, &smooth);
    let garbage_sequence = raw.publish(subject.clone(), "garbage".into()).await?.await?.sequence;
    let mut wrong_version = encode(&dispatch(&smooth, 0, 1));
    wrong_version[0] = 99;
    raw.publish(subject, wrong_version.into()).await?.await?;
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;

    let received = consumer.fetch(2, Duration::from_secs(2)).await?;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].stream_sequence, garbage_sequence);
    assert!(matches!(received[0].dispatch, Err(DecodeError::Version { found: b'g', .. })));
    assert!(matches!(received[1].dispatch, Err(DecodeError::Version { found: 99, .. })));
    assert_eq!(consumer.undecodable_count(), 2);
    for message in &received {
        message.acker.term().await?;
    }
    // nats-server 2.15 removes termed messages from a WorkQueue stream; older servers keep
    // them until deleted. Deleting after a term works either way.
    for message in &received {
        f.streams.delete_block_message(message.stream_sequence).await?;
        assert!(!f.streams.delete_block_message(message.stream_sequence).await?);
    }
    assert_eq!(f.streams.block_message_count().await?, 0);
    Ok(())
}

/// Publishes and consumes a few thousand dispatches and prints the rates (not a benchmark:
/// debug build, two busy cores; it shows the order of magnitude).
#[tokio::test]
async fn publish_and_fetch_rates() -> TestResult {
    const COUNT: u64 = 2000;
    let f = fixture().await?;
    let smooth = task("smooth");
    let started = Instant::now();
    for index in 0..COUNT {
        let msg_id = MsgId::dispatch(&f.run, &smooth, index, 1);
        f.nats
            .publish_dispatch(&f.run, &smooth, &dispatch(&smooth, index, 1), &msg_id, None)
            .await?;
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < COUNT {
        let batch = consumer.fetch(200, Duration::from_secs(2)).await?;
        assert!(!batch.is_empty(), "stalled after {consumed} blocks");
        for block in &batch {
            block.acker.ack().await?;
        }
        consumed += batch.len() as u64;
    }
    let consume_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "sequential publish with PubAck: {:.0} msg/s; fetch(200) + AckSync each: {:.0} msg/s",
        COUNT as f64 / publish_seconds,
        COUNT as f64 / consume_seconds
    );
    assert_eq!(f.streams.block_message_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn fetch_now_answers_at_once_with_what_is_queued() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;
    let asked = Instant::now();
    assert!(consumer.fetch_now(1).await?.is_empty());
    assert!(asked.elapsed() < Duration::from_secs(2), "no_wait: {:?}", asked.elapsed());

    let sent = dispatch(&smooth, 0, 2);
    let msg_id = MsgId::dispatch(&f.run, &smooth, 0, 1);
    f.nats.publish_dispatch(&f.run, &smooth, &sent, &msg_id, None).await?;
    let mut received = consumer.fetch_now(5).await?;
    assert_eq!(received.len(), 1);
    assert_eq!(received.remove(0).dispatch, Ok(sent));
    Ok(())
}

#[tokio::test]
async fn purging_a_task_removes_its_queued_and_delivered_batches_only() -> TestResult {
    let f = fixture().await?;
    let (doomed, other) = (task("doomed"), task("other"));
    for first in 0..3 {
        let msg_id = MsgId::dispatch(&f.run, &doomed, first, 1);
        f.nats
            .publish_dispatch(&f.run, &doomed, &dispatch(&doomed, first, 1), &msg_id, None)
            .await?;
    }
    let kept = dispatch(&other, 0, 1);
    let msg_id = MsgId::dispatch(&f.run, &other, 0, 1);
    f.nats.publish_dispatch(&f.run, &other, &kept, &msg_id, None).await?;
    // One batch is in a worker's hands when the task is given up.
    let consumer = BlockConsumer::ensure(&f.streams, &doomed, short_ack_wait()).await?;
    let held = consumer.fetch(1, Duration::from_secs(2)).await?;
    assert_eq!(held.len(), 1);

    // Up to the last message: a later leader's batches would be kept.
    let last = f.streams.block_stream_state().await?.last_sequence;
    assert_eq!(f.streams.purge_task_blocks(&doomed, last).await?, 3);
    assert_eq!(f.streams.block_message_count().await?, 1);
    assert!(consumer.fetch(1, SHORT_ACK_WAIT * 2).await?.is_empty(), "nothing is redelivered");
    let others = BlockConsumer::ensure(&f.streams, &other, ConsumerSettings::default()).await?;
    let mut received = others.fetch(1, Duration::from_secs(2)).await?;
    assert_eq!(received.remove(0).dispatch, Ok(kept));
    Ok(())
}
