//! Connecting with the auth forms a server asks for.

use daisy_nats::{ConnectError, ConnectOptions, RunSettings};
use daisy_proto::RunId;
use daisy_testkit::TestNats;

use crate::common::{READY_TIMEOUT, TestResult};

fn server_with_args(args: &[&str]) -> Result<TestNats, Box<dyn std::error::Error>> {
    Ok(TestNats::start_with(|options| options.extra_args.extend(args.iter().map(Into::into)))?)
}

#[tokio::test]
async fn user_and_password() -> TestResult {
    let server = server_with_args(&["--user", "daisy", "--pass", "s3cret"])?;
    let options = ConnectOptions {
        user: Some("daisy".into()),
        password: Some("s3cret".into()),
        name: Some("daisy-test".into()),
        ..ConnectOptions::new(server.url())
    };
    let nats = wait_connected(&options).await?;
    assert!(nats.server_version() >= daisy_nats::server::NatsServerVersion::MINIMUM);
    let run = RunId::new("auth").ok_or("run id")?;
    nats.provision_run(&run, &RunSettings::default()).await?;

    let wrong = ConnectOptions { password: Some("wrong".into()), ..options.clone() };
    assert!(matches!(daisy_nats::connect(&wrong).await, Err(ConnectError::Unauthorized { .. })));
    let none = ConnectOptions::new(server.url());
    assert!(matches!(daisy_nats::connect(&none).await, Err(ConnectError::Unauthorized { .. })));
    let half = ConnectOptions { password: None, ..options };
    assert!(matches!(daisy_nats::connect(&half).await, Err(ConnectError::IncompleteUserPassword)));
    Ok(())
}

#[tokio::test]
async fn token() -> TestResult {
    let server = server_with_args(&["--auth", "t0ken"])?;
    let options =
        ConnectOptions { token: Some("t0ken".into()), ..ConnectOptions::new(server.url()) };
    let nats = wait_connected(&options).await?;
    nats.flush().await?;
    let wrong = ConnectOptions { token: Some("nope".into()), ..options };
    let error = daisy_nats::connect(&wrong).await.err().ok_or("wrong token accepted")?;
    assert!(matches!(error, ConnectError::Unauthorized { .. }), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() -> TestResult {
    let server = TestNats::start()?;
    let url = server.url().to_owned();
    drop(server);
    let error = daisy_nats::connect(&ConnectOptions::new(url)).await.err().ok_or("connected")?;
    assert!(matches!(error, ConnectError::Connect { .. }), "{error:?}");
    Ok(())
}

/// Connects once the server answers (its readiness probe cannot authenticate, so poll here).
async fn wait_connected(
    options: &ConnectOptions,
) -> Result<daisy_nats::Nats, Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match daisy_nats::connect(options).await {
            Ok(nats) => return Ok(nats),
            Err(ConnectError::Connect { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}
