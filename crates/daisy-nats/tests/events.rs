//! Replaying the event stream in order, then tailing it live.

use std::time::Duration;

use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{BlockResult, Event, OutcomeKind, OutcomeReport};
use futures::StreamExt;

use crate::common::{TestResult, fixture, task};

const NEXT_TIMEOUT: Duration = Duration::from_secs(5);

fn outcome(index: u64) -> Event {
    Event::Outcomes(OutcomeReport {
        task: "smooth".into(),
        worker: "w-1".into(),
        results: vec![BlockResult {
            index,
            attempt: 1,
            outcome: OutcomeKind::Success,
            error: None,
            seconds: 0.1,
        }],
        worker_restarts: 0,
        epoch: 1,
        ..OutcomeReport::default()
    })
}

#[tokio::test]
async fn replay_returns_events_in_order_then_tails_a_live_one() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let started = Event::RunStarted { layout_hash: "abc".into(), unix_ms: 1, epoch: 1 };
    let mut written = vec![started.clone()];
    f.nats
        .publish_event(&f.run, EventScope::Run, &started, &MsgId::for_event(&f.run, &started), None)
        .await?;
    for index in 0..3 {
        let event = outcome(index);
        let published = f
            .nats
            .publish_event(
                &f.run,
                EventScope::Task(&smooth),
                &event,
                &MsgId::for_event(&f.run, &event),
                None,
            )
            .await?;
        // A retried publish of the same event is dropped.
        let retried = f
            .nats
            .publish_event(
                &f.run,
                EventScope::Task(&smooth),
                &event,
                &MsgId::for_event(&f.run, &event),
                None,
            )
            .await?;
        assert!(retried.duplicate && retried.stream_sequence == published.stream_sequence);
        written.push(event);
    }

    let mut replay = f.streams.replay_events(1).await?;
    assert_eq!(replay.caught_up_at(), 4);
    for (expected_sequence, expected) in (1..).zip(&written) {
        let (sequence, event) =
            tokio::time::timeout(NEXT_TIMEOUT, replay.next()).await?.ok_or("replay ended")??;
        assert_eq!(sequence, expected_sequence);
        assert_eq!(&event?, expected);
    }

    // Caught up: the next event arrives live.
    let live = outcome(99);
    f.nats
        .publish_event(
            &f.run,
            EventScope::Task(&smooth),
            &live,
            &MsgId::for_event(&f.run, &live),
            None,
        )
        .await?;
    let (sequence, event) =
        tokio::time::timeout(NEXT_TIMEOUT, replay.next()).await?.ok_or("replay ended")??;
    assert_eq!((sequence, event?), (5, live.clone()));

    // A replay from a later sequence (after a snapshot) starts there.
    let mut from_four = f.streams.replay_events(4).await?;
    let (sequence, _) =
        tokio::time::timeout(NEXT_TIMEOUT, from_four.next()).await?.ok_or("replay ended")??;
    assert_eq!(sequence, 4);
    let (sequence, event) =
        tokio::time::timeout(NEXT_TIMEOUT, from_four.next()).await?.ok_or("replay ended")??;
    assert_eq!((sequence, event?), (5, live));
    Ok(())
}

#[tokio::test]
async fn garbage_on_an_event_subject_replays_as_an_error() -> TestResult {
    let f = fixture().await?;
    let smooth = task("smooth");
    let raw = async_nats::jetstream::new(async_nats::connect(f.server.url()).await?);
    let subject = daisy_proto::subjects::event_subject(&f.run, EventScope::Task(&smooth));
    raw.publish(subject, vec![1, 0xc1].into()).await?.await?;
    let event = outcome(0);
    f.nats
        .publish_event(
            &f.run,
            EventScope::Task(&smooth),
            &event,
            &MsgId::for_event(&f.run, &event),
            None,
        )
        .await?;

    let mut replay = f.streams.replay_events(0).await?;
    let (sequence, garbage) =
        tokio::time::timeout(NEXT_TIMEOUT, replay.next()).await?.ok_or("replay ended")??;
    assert_eq!(sequence, 1);
    assert!(garbage.is_err());
    let (sequence, good) =
        tokio::time::timeout(NEXT_TIMEOUT, replay.next()).await?.ok_or("replay ended")??;
    assert_eq!((sequence, good?), (2, event));
    Ok(())
}
