//! Blocks that exhaust their deliveries reach the dead-letter stream.

use std::time::Duration;

use daisy_nats::{BlockConsumer, ConsumerSettings};
use daisy_proto::subjects::{self, MsgId};

use crate::common::{TestResult, dispatch, fixture, task};

#[tokio::test]
async fn max_deliver_exhaustion_produces_a_dead_letter_with_the_block() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let sent = dispatch(&smooth, 10, 3);
    let published = f
        .nats
        .publish_dispatch(&f.run, &smooth, &sent, &MsgId::dispatch(&f.run, &smooth, 10, 1), None)
        .await?;
    let settings =
        ConsumerSettings { ack_wait: Duration::from_secs(5), max_deliver: 2, max_ack_pending: 10 };
    let consumer = BlockConsumer::ensure(&f.streams, &smooth, settings).await?;
    let dead_letters = f.streams.dead_letters().await?;

    for attempt in 1..=2 {
        let received = consumer.fetch(1, Duration::from_secs(2)).await?;
        assert_eq!(received.len(), 1, "delivery {attempt} missing");
        assert_eq!(received[0].delivered, attempt);
        received[0].acker.nak(None).await?;
    }
    assert!(consumer.fetch(1, Duration::from_millis(300)).await?.is_empty());

    let letters = dead_letters.fetch(10, Duration::from_secs(5)).await?;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.block_stream_sequence, published.stream_sequence);
    assert_eq!(letter.deliveries, 2);
    assert_eq!(letter.consumer, subjects::block_consumer(&smooth));

    let original = f.streams.get_block_message(letter.block_stream_sequence).await?;
    assert_eq!(original.dispatch, Ok(sent));
    assert_eq!(original.subject, subjects::block_subject(&f.run, &smooth));
    assert!(f.streams.delete_block_message(letter.block_stream_sequence).await?);
    assert_eq!(f.streams.block_message_count().await?, 0);
    letter.ack().await?;
    assert!(dead_letters.fetch(1, Duration::from_millis(300)).await?.is_empty());
    Ok(())
}
