//! Run metadata and worker liveness in KV.

use std::time::Duration;

use daisy_core::TaskCounters;
use daisy_nats::{MetaError, RunSettings, RunStatus, TaskStatus, WorkerInfo};
use daisy_proto::WorkerId;
use daisy_testkit::wait_until_async;

use crate::common::{TestResult, fixture_with};

#[tokio::test]
async fn spec_and_status_round_trip() -> TestResult {
    let f = fixture_with("meta", &RunSettings::default()).await?;
    assert_eq!(f.streams.get_spec().await?, None);
    assert_eq!(f.streams.get_status().await?, None);
    let spec = "[[task]]\nid = \"smooth\"\n";
    f.streams.put_spec(spec).await?;
    assert_eq!(f.streams.get_spec().await?.as_deref(), Some(spec));
    let status = RunStatus {
        finished: true,
        succeeded: false,
        epoch: 7,
        updated_unix_ms: 1,
        tasks: vec![TaskStatus {
            id: "smooth".into(),
            counters: TaskCounters { total: 10, completed: 4, skipped: 1, ..Default::default() },
            pending: 6,
            first_error: None,
            abandoned: Some("workers kept dying".into()),
            stragglers: Vec::new(),
        }],
        cancelled: false,
    };
    // The counters are flat in the JSON (`daisy status --json` shows the same).
    let json = serde_json::to_value(&status.tasks[0])?;
    assert_eq!(
        (&json["total"], &json["skipped"], &json["pending"]),
        (&10.into(), &1.into(), &6.into())
    );
    assert!(json.get("counters").is_none(), "{json}");
    f.streams.put_status(&status).await?;
    assert_eq!(f.streams.get_status().await?, Some(status));
    // Another process opens the same run and sees it.
    let opened = f.nats.open_run(&f.run).await?;
    assert_eq!(opened.get_spec().await?.as_deref(), Some(spec));
    Ok(())
}

#[tokio::test]
async fn workers_age_out_unless_refreshed() -> TestResult {
    let settings = RunSettings { worker_ttl: Duration::from_secs(1), ..RunSettings::default() };
    let f = fixture_with("workers", &settings).await?;
    let (alive, dying) = (WorkerId::from("host-1-0"), WorkerId::from("host-2-0"));
    let info = WorkerInfo { host: "host-1".into(), pid: 1, tasks: vec![], slots: 2 };
    f.streams.register_worker(&alive, &info).await?;
    f.streams.register_worker(&dying, &info).await?;
    assert_eq!(f.streams.live_workers().await?, vec![alive.clone(), dying.clone()]);
    assert_eq!(f.streams.worker_info(&alive).await?, Some(info.clone()));

    wait_until_async(
        Duration::from_secs(4),
        Duration::from_millis(200),
        "dying worker ages out",
        || async {
            f.streams.register_worker(&alive, &info).await.is_ok()
                && f.streams.live_workers().await.is_ok_and(|workers| workers == [alive.clone()])
        },
    )
    .await?;
    f.streams.unregister_worker(&alive).await?;
    assert!(f.streams.live_workers().await?.is_empty());
    assert!(matches!(
        f.streams.register_worker(&WorkerId::from("host.example.org"), &info).await,
        Err(MetaError::WorkerKey(_))
    ));
    Ok(())
}
