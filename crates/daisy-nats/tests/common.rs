//! Shared set-up: a server, a connection and a provisioned run per test.

use std::error::Error;
use std::time::Duration;

use daisy_core::TaskId;
use daisy_nats::{ConnectOptions, Nats, RunSettings, RunStreams};
use daisy_proto::{BlockWork, Dispatch, RunId};
use daisy_testkit::TestNats;

pub type TestResult = Result<(), Box<dyn Error>>;

pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A server, a connection to it and one provisioned run.
pub struct Fixture {
    pub server: TestNats,
    pub nats: Nats,
    pub run: RunId,
    pub streams: RunStreams,
}

/// Starts a server and connects to it.
pub async fn server_and_connection() -> Result<(TestNats, Nats), Box<dyn Error>> {
    let server = TestNats::start()?;
    server.wait_ready(READY_TIMEOUT).await?;
    let nats = daisy_nats::connect(&ConnectOptions::new(server.url())).await?;
    Ok((server, nats))
}

/// Starts a server and provisions run `run` with `settings`.
pub async fn fixture_with(run: &str, settings: &RunSettings) -> Result<Fixture, Box<dyn Error>> {
    let (server, nats) = server_and_connection().await?;
    let run = RunId::new(run).ok_or("invalid run id")?;
    let streams = nats.provision_run(&run, settings).await?;
    Ok(Fixture { server, nats, run, streams })
}

/// Starts a server and provisions run `r` with default settings.
pub async fn fixture() -> Result<Fixture, Box<dyn Error>> {
    fixture_with("r", &RunSettings::default()).await
}

pub fn task(id: &str) -> TaskId {
    TaskId::new(id).expect("test task ids are valid")
}

/// A dispatch of blocks `first..first + count` at attempt 1.
pub fn dispatch(task: &TaskId, first: u64, count: u64) -> Dispatch {
    Dispatch {
        task: task.to_string(),
        epoch: 1,
        blocks: (first..first + count).map(|index| BlockWork { index, attempt: 1 }).collect(),
    }
}
