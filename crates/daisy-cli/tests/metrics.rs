//! Prometheus metrics on `--metrics-addr` (issue 9, items 3 and 5): real runs through the
//! binaries — `daisy-scheduler` and `daisy-worker` over a real `nats-server`, and `daisy run
//! --in-process` — scraped over HTTP during the run (while one block is held by a file the
//! test creates) and after it, the text parsed by `prometheus-parse`.
//!
//! The counts asserted are the ones an operator's dashboard shows: blocks by state equal the
//! plan, every attempt is in the duration histogram, the failed block's two attempts are
//! failed outcomes, one leader took over, bad messages are counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use daisy_nats::RunSettings;
use daisy_proto::RunId;
use daisy_proto::subjects::{self, EventScope};
use prometheus_parse::{Scrape, Value};

use crate::util::{
    Proc, RUN_DEADLINE, Setup, counts, daisy_run, describe, line_count, run, task, wait_until,
};

/// One attempt: records itself like `util::BLOCK_SH`, fails if it is block `$FAIL`, and
/// waits for the file `$RELEASE` if it is block `$HOLD` (so the test scrapes mid-run without
/// sleeping: the block is held until the test says).
const HOLD_SH: &str = r#"#!/bin/sh
attempt=$(printf '%s' "$DAISY_BLOCK" | sed 's/.*"attempt":\([0-9]*\).*/\1/')
echo "$DAISY_TASK_ID $DAISY_BLOCK_ID $attempt $PPID" >> "$ATTEMPTS"
if [ "$DAISY_BLOCK_ID" = "$FAIL" ]; then echo "boom in $DAISY_BLOCK_ID" >&2; exit 3; fi
if [ "$DAISY_BLOCK_ID" = "$HOLD" ]; then
  while [ ! -e "$RELEASE" ]; do sleep 0.02; done
fi
"#;

/// A free port on the loopback interface. The exporter cannot report a port it picked
/// itself, so the test picks one: bound and released here, then given to the binary.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `GET /metrics`, parsed; `None` while nothing listens yet. One request on loopback: an
/// HTTP client crate would be the largest dependency of this test binary.
fn scrape(addr: SocketAddr) -> Option<Scrape> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text"))
}

/// Waits until the endpoint answers and `done` holds for a scrape; returns that scrape.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    wait_until(what, RUN_DEADLINE, || {
        last = scrape(addr);
        last.as_ref().is_some_and(&done)
    });
    last.expect("the last scrape held")
}

/// The value of the sample `name{labels..}` (a counter, gauge or untyped sample such as a
/// histogram's `_count`), if the scrape has it.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .find_map(|sample| match sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => Some(value),
            _ => None,
        })
}

/// [`value`], 0 when absent (a counter never incremented is not rendered).
fn count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or(0.0)
}

fn blocks_in(scrape: &Scrape, task: &str, state: &str) -> f64 {
    count(scrape, "daisy_blocks_total", &[("task", task), ("state", state)])
}

/// The buckets of a histogram: (upper bound, cumulative count).
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(key) == Some(*value)))
        .find_map(|sample| match &sample.value {
            Value::Histogram(buckets) => {
                Some(buckets.iter().map(|b| (b.less_than, b.count)).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// Checks a duration histogram: `attempts` observations, cumulative buckets ending in +Inf at
/// the count, a positive sum (the blocks are shell processes).
fn assert_durations(scrape: &Scrape, task: &str, attempts: usize) {
    let labels = [("task", task)];
    let observed = count(scrape, "daisy_block_duration_seconds_count", &labels);
    assert_eq!(observed, attempts as f64, "one duration per attempt");
    assert!(count(scrape, "daisy_block_duration_seconds_sum", &labels) > 0.0);
    let buckets = buckets(scrape, "daisy_block_duration_seconds", &labels);
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "cumulative: {buckets:?}");
    assert_eq!(buckets.last().copied(), Some((f64::INFINITY, observed)), "{buckets:?}");
}

/// Sets the variables [`HOLD_SH`] reads.
fn hold_env(command: &mut std::process::Command, dir: &Path, hold: u64, fail: Option<u64>) {
    command
        .env("HOLD", hold.to_string())
        .env("FAIL", fail.map_or(String::new(), |id| id.to_string()))
        .env("RELEASE", dir.join("release"));
}

#[test]
fn scheduler_and_worker_metrics_count_a_run_during_and_after_it() {
    let setup = Setup::new();
    std::fs::write(setup.path("hold.sh"), HOLD_SH).unwrap();
    let command = format!("command = [\"sh\", \"{}\"]", setup.path("hold.sh").display());
    // Block 0 is held until the test releases it; block 3 fails both its attempts.
    let extra = format!("{command}\nmax_workers = 2\nmax_retries = 1\ntimeout = \"10s\"");
    setup.pipeline("m", &task("a", 8, &extra));

    // A garbage block message and an empty event, there before the scheduler: its read of
    // the queue and its replay meet them.
    let run_id = RunId::new("m").unwrap();
    let task_id = daisy_core::TaskId::new("a").unwrap();
    let settings = RunSettings { lease_ttl: Duration::from_secs(2), ..RunSettings::default() };
    setup.runtime.block_on(setup.client.provision_run(&run_id, &settings)).unwrap();
    setup.runtime.block_on(async {
        for (subject, payload) in [
            (subjects::block_subject(&run_id, &task_id), &b"\xff\x00garbage"[..]),
            (subjects::event_subject(&run_id, EventScope::Run), &b""[..]),
        ] {
            let ack = setup.jetstream.publish(subject, payload.to_vec().into()).await.unwrap();
            ack.await.expect("the stream stores it");
        }
    });

    let scheduler_addr = free_addr();
    let mut scheduler = setup.scheduler("m");
    scheduler.arg("--metrics-addr").arg(scheduler_addr.to_string());
    hold_env(&mut scheduler, setup.dir.path(), 0, Some(3));
    let mut scheduler = Proc::spawn("scheduler", &mut scheduler);
    scheduler.wait_line("rebuilt the run from its record", RUN_DEADLINE);
    let leading = scrape_until(scheduler_addr, "the scheduler to lead", |s| {
        value(s, "daisy_leader", &[]) == Some(1.0)
    });
    assert_eq!(value(&leading, "daisy_leader_changes_total", &[]), Some(1.0));
    assert!(value(&leading, "daisy_lease_epoch", &[]).is_some_and(|epoch| epoch >= 1.0));
    let target = value(&leading, "daisy_replay_target_sequence", &[]).unwrap_or_default();
    assert!(target >= 2.0, "the garbage event and the run's start were replayed: {target}");
    assert_eq!(value(&leading, "daisy_replay_sequence", &[]), Some(target), "replay finished");
    assert_eq!(count(&leading, "daisy_replay_events_total", &[]), target);
    for stream in ["block", "event"] {
        let bad = count(&leading, "daisy_bad_messages_terminated_total", &[("stream", stream)]);
        assert_eq!(bad, 1.0, "bad {stream} messages");
    }

    let worker_addr = free_addr();
    let mut worker = setup.worker_with_slots("m", 2);
    worker.arg("--forever").arg("--metrics-addr").arg(worker_addr.to_string());
    hold_env(&mut worker, setup.dir.path(), 0, Some(3));
    let mut worker = Proc::spawn("worker", &mut worker);

    // During the run: every block but the held one is final, and the held one runs (the
    // worker's report of what runs reaches the leader a moment after the block started).
    let during = scrape_until(scheduler_addr, "every block but the held one to finish", |s| {
        blocks_in(s, "a", "succeeded") == 6.0
            && blocks_in(s, "a", "failed") == 1.0
            && count(s, "daisy_blocks", &[("task", "a"), ("state", "processing")]) == 1.0
    });
    let state = |state| count(&during, "daisy_blocks", &[("task", "a"), ("state", state)]);
    assert_eq!(
        [
            "succeeded",
            "skipped",
            "failed",
            "orphaned",
            "pending",
            "ready",
            "dispatched",
            "processing"
        ]
        .map(state),
        [6.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "blocks by state now"
    );
    assert_eq!(blocks_in(&during, "a", "skipped") + blocks_in(&during, "a", "orphaned"), 0.0);
    let outcomes = |outcome| {
        count(&during, "daisy_block_outcomes_total", &[("task", "a"), ("outcome", outcome)])
    };
    assert_eq!((outcomes("success"), outcomes("failed")), (6.0, 2.0), "outcomes applied");
    // 8 blocks and the failed block's retry, each dispatched once.
    assert_eq!(count(&during, "daisy_blocks_dispatched_total", &[("task", "a")]), 9.0);
    let batches = count(&during, "daisy_batches_dispatched_total", &[("task", "a")]);
    assert!((1.0..=9.0).contains(&batches), "{batches} batches");
    assert_eq!(count(&during, "daisy_redeliveries_total", &[("task", "a")]), 0.0);
    // Read once a second: the outcomes of 8 batches recorded, all of them read by the leader.
    let with_size = scrape_until(scheduler_addr, "the event stream's size", |s| {
        count(s, "daisy_event_stream_messages", &[]) >= target + 8.0
            && value(s, "daisy_scheduler_lag_events", &[]) == Some(0.0)
    });
    assert!(count(&with_size, "daisy_event_stream_bytes", &[]) > 0.0);

    // The worker: every finished attempt timed; the held block keeps its delivery alive.
    let worker_during = scrape_until(worker_addr, "a heartbeat of the held block", |s| {
        count(s, "daisy_worker_heartbeats_total", &[("task", "a")]) >= 1.0
    });
    assert_durations(&worker_during, "a", 8);

    std::fs::write(setup.path("release"), "").unwrap();
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(1), "{}", scheduler.describe());
    assert_eq!(counts(&scheduler.json(), "a"), [8, 7, 0, 1, 0], "the summary agrees");

    // After the run: the worker (serving --forever) has timed every attempt.
    let after = scrape(worker_addr).expect("the worker still serves metrics");
    assert_eq!(line_count(&setup.attempts_file("m")), 9);
    assert_durations(&after, "a", 9);
    assert_eq!(count(&after, "daisy_worker_process_restarts_total", &[("task", "a")]), 0.0);
    assert!(!worker.exited(), "{}", worker.describe());
}

#[test]
fn an_in_process_run_serves_block_metrics_during_and_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hold.sh"), HOLD_SH).unwrap();
    let command = format!("command = [\"sh\", \"{}\"]", dir.path().join("hold.sh").display());
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, task("a", 5, &format!("{command}\nmax_workers = 2"))).unwrap();
    let addr = free_addr();
    let attempts = dir.path().join("attempts");
    let mut command = daisy_run(&pipeline, dir.path(), &attempts);
    command.args(["--in-process", "--no-progress", "--json", "--metrics-addr"]);
    command.arg(addr.to_string());
    hold_env(&mut command, dir.path(), 0, None);
    let mut daisy = Proc::spawn("daisy run", &mut command);

    let during = scrape_until(addr, "every block but the held one to finish and it to run", |s| {
        blocks_in(s, "a", "succeeded") == 4.0
            && count(s, "daisy_blocks", &[("task", "a"), ("state", "processing")]) == 1.0
    });
    assert_eq!(count(&during, "daisy_blocks", &[("task", "a"), ("state", "dispatched")]), 0.0);
    assert_durations(&during, "a", 4);
    // No NATS, no leader.
    assert_eq!(value(&during, "daisy_leader_changes_total", &[]), None);

    std::fs::write(dir.path().join("release"), "").unwrap();
    assert_eq!(daisy.wait(RUN_DEADLINE), Some(0), "{}", daisy.describe());
    assert_eq!(counts(&daisy.json(), "a"), [5, 5, 0, 0, 0]);
}

#[test]
fn a_metrics_address_that_cannot_serve_is_bad_input_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.toml");
    std::fs::write(&pipeline, task("a", 1, "command = [\"true\"]")).unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for (addr, fix) in [("127.0.0.1:0", "give a fixed port"), (taken_addr.as_str(), "in use")] {
        let output = run(daisy_run(&pipeline, dir.path(), &dir.path().join("attempts")).args([
            "--in-process",
            "--metrics-addr",
            addr,
        ]));
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("--metrics-addr {addr}")), "{stderr}");
        assert!(stderr.contains(fix), "{stderr}");
    }
    drop(taken);
}
