//! The scheduler leader lease: exclusive, renewable, lapsing, fenced.

use std::time::{Duration, Instant};

use daisy_nats::{AcquireError, Lease, LeaseHolder, RunSettings, current_holder};

use crate::common::{TestResult, fixture_with};

const LEASE_TTL: Duration = Duration::from_secs(1);

fn holder(id: &str) -> LeaseHolder {
    LeaseHolder { id: id.into(), host: "test-host".into(), pid: 42 }
}

#[tokio::test]
async fn a_lease_is_exclusive_renewable_and_lapses_to_a_standby() -> TestResult {
    let settings = RunSettings { lease_ttl: LEASE_TTL, ..RunSettings::default() };
    let f = fixture_with("leased", &settings).await?;

    let mut leader = Lease::try_acquire(&f.streams, holder("a")).await?;
    match Lease::try_acquire(&f.streams, holder("b")).await {
        Err(AcquireError::Held { holder: Some(current) }) => assert_eq!(current, holder("a")),
        other => panic!("second holder acquired or failed oddly: {other:?}"),
    }
    // Renewing past the TTL keeps the lease.
    let renew_until = Instant::now() + LEASE_TTL * 2;
    while Instant::now() < renew_until {
        leader.renew().await?;
        tokio::time::sleep(LEASE_TTL / 4).await;
        assert!(Lease::try_acquire(&f.streams, holder("b")).await.is_err());
    }
    let record = current_holder(&f.streams).await?.ok_or("no holder")?;
    assert_eq!(record.holder, holder("a"));

    // The leader stops renewing (paused, partitioned): a polling standby takes over.
    let stopped_at = Instant::now();
    let deadline = stopped_at + LEASE_TTL + Duration::from_secs(2);
    let standby = loop {
        match Lease::try_acquire(&f.streams, holder("b")).await {
            Ok(lease) => break lease,
            Err(AcquireError::Held { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    assert!(stopped_at.elapsed() >= LEASE_TTL / 2, "lease lapsed too early");
    assert!(standby.epoch() > leader.epoch(), "epochs fence the old leader");
    assert!(leader.renew().await.is_err(), "the old leader's renew must fail");
    assert_eq!(current_holder(&f.streams).await?.ok_or("no holder")?.holder, holder("b"));

    // Releasing hands over at once.
    standby.release().await?;
    assert!(current_holder(&f.streams).await?.is_none());
    let third = Lease::try_acquire(&f.streams, holder("c")).await?;
    assert!(third.epoch() > leader.epoch());
    Ok(())
}
