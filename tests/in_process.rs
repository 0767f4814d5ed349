//! Scheduling behaviour users depend on, with closures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use daisy::{Roi, Runner, Task};
use daisy_testkit::TestNats;

fn roi(offset: [i64; 3], shape: [i64; 3]) -> Roi {
    Roi::new(offset.into(), shape.into())
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
    read: Roi,
    write: Roi,
}

type Spans = Arc<Mutex<HashMap<(String, u64), Vec<Span>>>>;

fn recording_task(id: &str, spans: &Spans, upstream: Option<&Task>) -> Task {
    let spans = spans.clone();
    let mut builder = Task::builder(id)
        .total_roi(roi([0, 0, 0], [40, 40, 40]))
        .read_roi(roi([0, 0, 0], [12, 12, 12]))
        .write_roi(roi([2, 2, 2], [8, 8, 8]))
        .max_workers(4)
        .process(move |block| -> Result<(), std::convert::Infallible> {
            let start = Instant::now();
            std::thread::sleep(std::time::Duration::from_micros(300));
            let span =
                Span { start, end: Instant::now(), read: block.read_roi, write: block.write_roi };
            spans
                .lock()
                .unwrap()
                .entry((block.task_id.to_string(), block.block_id.0))
                .or_default()
                .push(span);
            Ok(())
        });
    if let Some(up) = upstream {
        builder = builder.upstream(up);
    }
    builder.build().unwrap()
}

/// The transports every scheduling test runs on.
#[derive(Debug, Clone, Copy)]
enum Transport {
    InProcess,
    Nats,
}

/// A runner for `transport`; the server (if any) lives as long as the guard.
fn runner(transport: Transport) -> (Runner, Option<TestNats>) {
    match transport {
        Transport::InProcess => (Runner::new(), None),
        Transport::Nats => {
            let server = TestNats::start().expect("a nats-server starts");
            (Runner::new().nats(server.url()), Some(server))
        }
    }
}

#[test]
fn chained_3d_tasks_with_conflicts_run_every_block_once_and_never_overlap_conflicts() {
    chained_3d_tasks(Transport::InProcess);
}

#[test]
fn chained_3d_tasks_with_conflicts_on_nats() {
    chained_3d_tasks(Transport::Nats);
}

fn chained_3d_tasks(transport: Transport) {
    let spans: Spans = Arc::default();
    let first = recording_task("first", &spans, None);
    let second = recording_task("second", &spans, Some(&first));
    let (runner, _server) = runner(transport);
    let report = runner.run([second]).unwrap();
    assert!(report.all_succeeded(), "{report:?}");
    let spans = spans.lock().unwrap();
    for task in ["first", "second"] {
        let counters = report.task(task).unwrap().counters;
        assert_eq!(counters.completed, counters.total);
        assert_eq!(spans.keys().filter(|(t, _)| t == task).count() as u64, counters.total);
    }
    assert!(spans.values().all(|runs| runs.len() == 1), "every block ran exactly once");
    let all: Vec<(&(String, u64), &Span)> = spans.iter().map(|(k, v)| (k, &v[0])).collect();
    for (key_a, a) in &all {
        for (key_b, b) in &all {
            if key_a >= key_b {
                continue;
            }
            let overlap_in_time = a.start < b.end && b.start < a.end;
            if key_a.0 == key_b.0 {
                let conflict = a.read.intersects(&b.write) || b.read.intersects(&a.write);
                assert!(
                    !(conflict && overlap_in_time),
                    "conflicting blocks {key_a:?} and {key_b:?} overlapped"
                );
            } else {
                // A downstream block starts only after the upstream blocks it reads finished.
                let (up, down) = if key_a.0 == "first" { (a, b) } else { (b, a) };
                if up.write.intersects(&down.read) {
                    assert!(
                        up.end <= down.start,
                        "{key_a:?}/{key_b:?} ran before its upstream finished"
                    );
                }
            }
        }
    }
}

#[test]
fn a_block_that_always_fails_is_failed_after_retries_and_its_downstream_orphaned() {
    always_failing_block(Transport::InProcess);
}

#[test]
fn a_block_that_always_fails_on_nats() {
    always_failing_block(Transport::Nats);
}

fn always_failing_block(transport: Transport) {
    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let seen = attempts.clone();
    let up = Task::builder("up")
        .total_roi(Roi::new([0].into(), [100].into()))
        .read_roi(Roi::new([0].into(), [10].into()))
        .write_roi(Roi::new([0].into(), [10].into()))
        .read_write_conflict(false)
        .max_workers(2)
        .max_retries(1)
        .process(move |block| {
            *seen.lock().unwrap().entry(block.block_id.0).or_default() += 1;
            if block.write_roi.offset()[0] == 30 { Err("block 30 is cursed") } else { Ok(()) }
        })
        .build()
        .unwrap();
    let down = Task::builder("down")
        .total_roi(Roi::new([0].into(), [100].into()))
        .read_roi(Roi::new([0].into(), [10].into()))
        .write_roi(Roi::new([0].into(), [10].into()))
        .read_write_conflict(false)
        .upstream(&up)
        .process(|_| Ok::<(), std::io::Error>(()))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (runner, _server) = runner(transport);
    let report = runner.resume_dir(dir.path()).run([down]).unwrap();
    let up_report = report.task("up").unwrap();
    assert_eq!((up_report.counters.completed, up_report.counters.failed), (9, 1));
    assert_eq!(up_report.failed_attempts, 2);
    let first_error = up_report.first_error.as_ref().unwrap();
    assert_eq!(first_error.block_id.0, 3);
    assert!(first_error.message.contains("cursed"));
    let down_report = report.task("down").unwrap();
    assert_eq!((down_report.counters.completed, down_report.counters.orphaned), (9, 1));
    assert!(!report.all_succeeded());
    assert_eq!(attempts.lock().unwrap()[&3], 2);
}
