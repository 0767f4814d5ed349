//! Provisioning, listing, deleting and isolating runs.

use std::time::Duration;

use daisy_nats::{ConnectOptions, ConsumerSettings, ProvisionError, RunSettings};
use daisy_proto::subjects::{EventScope, MsgId};
use daisy_proto::{Event, RunId};
use futures::StreamExt;

use crate::common::{TestResult, dispatch, server_and_connection, task};

#[tokio::test]
async fn provisioning_twice_and_concurrently_is_idempotent() -> TestResult {
    let (_server, nats) = server_and_connection().await?;
    let other = daisy_nats::connect(&ConnectOptions::new(_server.url())).await?;
    let run = RunId::new("twice").ok_or("run id")?;
    let settings = RunSettings::default();

    let (first, second) =
        tokio::join!(nats.provision_run(&run, &settings), other.provision_run(&run, &settings));
    first?;
    second?;
    let streams = nats.provision_run(&run, &settings).await?;
    // A later provisioner with other settings keeps the existing buckets.
    let other_settings = RunSettings { lease_ttl: Duration::from_secs(3), ..settings };
    nats.provision_run(&run, &other_settings).await?;

    let smooth = task("smooth");
    let published = nats
        .publish_dispatch(
            &run,
            &smooth,
            &dispatch(&smooth, 0, 1),
            &MsgId::dispatch(&run, &smooth, 0, 1),
            None,
        )
        .await?;
    assert_eq!(published.stream_sequence, 1);
    nats.provision_run(&run, &settings).await?;
    assert_eq!(streams.block_message_count().await?, 1, "provisioning again keeps the blocks");

    assert_eq!(nats.list_runs().await?, vec![run.clone()]);
    assert_eq!(nats.delete_run(&run).await?, 6);
    assert_eq!(nats.delete_run(&run).await?, 0, "deleting twice is fine");
    assert!(nats.list_runs().await?.is_empty());
    assert!(matches!(nats.open_run(&run).await, Err(ProvisionError::OpenStream { .. })));
    Ok(())
}

#[tokio::test]
async fn two_runs_on_one_server_do_not_see_each_others_messages() -> TestResult {
    let (_server, nats) = server_and_connection().await?;
    // "a" is a prefix of "a-b": names must still not overlap.
    let run_a = RunId::new("a").ok_or("run id")?;
    let run_b = RunId::new("a-b").ok_or("run id")?;
    let streams_a = nats.provision_run(&run_a, &RunSettings::default()).await?;
    let streams_b = nats.provision_run(&run_b, &RunSettings::default()).await?;
    let runs = nats.list_runs().await?;
    assert_eq!(runs, vec![run_a.clone(), run_b.clone()]);

    let smooth = task("smooth");
    nats.publish_dispatch(
        &run_a,
        &smooth,
        &dispatch(&smooth, 0, 1),
        &MsgId::dispatch(&run_a, &smooth, 0, 1),
        None,
    )
    .await?;
    let event = Event::TaskAbandoned { task: "smooth".into(), reason: "test".into(), epoch: 1 };
    nats.publish_event(
        &run_a,
        EventScope::Task(&smooth),
        &event,
        &MsgId::for_event(&run_a, &event),
        None,
    )
    .await?;

    let consumer_b =
        daisy_nats::BlockConsumer::ensure(&streams_b, &smooth, ConsumerSettings::default()).await?;
    assert!(consumer_b.fetch(1, Duration::from_millis(300)).await?.is_empty());
    let replay_b = streams_b.replay_events(1).await?;
    assert_eq!(replay_b.caught_up_at(), 0);
    assert_eq!(streams_b.block_message_count().await?, 0);

    let consumer_a =
        daisy_nats::BlockConsumer::ensure(&streams_a, &smooth, ConsumerSettings::default()).await?;
    assert_eq!(consumer_a.fetch(1, Duration::from_secs(2)).await?.len(), 1);
    let mut replay_a = streams_a.replay_events(1).await?;
    assert_eq!(replay_a.caught_up_at(), 1);
    let (sequence, replayed) = tokio::time::timeout(Duration::from_secs(5), replay_a.next())
        .await?
        .ok_or("replay ended")??;
    assert_eq!((sequence, replayed?), (1, event));

    nats.delete_run(&run_a).await?;
    assert_eq!(nats.list_runs().await?, vec![run_b]);
    Ok(())
}
