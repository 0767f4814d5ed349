//! Publishing with `Nats-Msg-Id` dedupe and headers.

use std::time::Duration;

use daisy_nats::{BlockConsumer, ConsumerSettings, HeaderMap};
use daisy_proto::subjects::{self, MsgId};

use crate::common::{TestResult, dispatch, fixture, task};

#[tokio::test]
async fn a_dispatch_published_twice_with_one_msg_id_is_stored_once() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let block = dispatch(&smooth, 4, 2);
    let msg_id = MsgId::dispatch(&f.run, &smooth, 4, 1);

    let first = f.nats.publish_dispatch(&f.run, &smooth, &block, &msg_id, None).await?;
    let second = f.nats.publish_dispatch(&f.run, &smooth, &block, &msg_id, None).await?;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.stream_sequence, second.stream_sequence);
    let other = f
        .nats
        .publish_dispatch(&f.run, &smooth, &block, &MsgId::dispatch(&f.run, &smooth, 4, 2), None)
        .await?;
    assert!(!other.duplicate);
    assert_eq!(f.streams.block_message_count().await?, 2);
    Ok(())
}

#[tokio::test]
async fn headers_travel_with_the_dispatch() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = HeaderMap::new();
    headers.insert(subjects::TRACEPARENT_HEADER, traceparent);
    let msg_id = MsgId::dispatch(&f.run, &smooth, 0, 1);
    f.nats
        .publish_dispatch(&f.run, &smooth, &dispatch(&smooth, 0, 1), &msg_id, Some(headers))
        .await?;

    let consumer = BlockConsumer::ensure(&f.streams, &smooth, ConsumerSettings::default()).await?;
    let received = consumer.fetch(1, Duration::from_secs(2)).await?;
    let headers = received[0].headers.as_ref().ok_or("no headers")?;
    assert_eq!(headers.get(subjects::TRACEPARENT_HEADER).map(|v| v.as_str()), Some(traceparent));
    assert_eq!(headers.get(subjects::MSG_ID_HEADER).map(|v| v.as_str()), Some(msg_id.as_str()));
    received[0].acker.ack().await?;
    Ok(())
}
