//! One trace per block (issue 9): real `daisy-scheduler` and `daisy-worker` processes over a
//! real nats-server export with their ordinary OTLP/HTTP exporter to a real receiver
//! (daisy-testkit's), and the spans it decoded are checked the way a user reads them in
//! Jaeger: one trace id per block, the derived one; the worker's spans under the
//! scheduler's dispatch span; every attempt, redelivery and failover in that one trace.
//!
//! The processes flush their spans when they exit; a scheduler that is SIGKILLed loses the
//! spans it had not sent yet, so the fault test exports every 100 ms
//! (`OTEL_BSP_SCHEDULE_DELAY`) and waits for the spans it needs before the kill.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use daisy_testkit::otlp::{OtlpReceiver, ReceivedSpan};

use crate::util::{Proc, RUN_DEADLINE, Setup, daisy, describe, run, wait_until};

/// Exports to `receiver`, sending queued spans every 100 ms.
fn exporting<'a>(command: &'a mut Command, receiver: &OtlpReceiver) -> &'a mut Command {
    command.arg("--otlp").arg(receiver.url()).env("OTEL_BSP_SCHEDULE_DELAY", "100")
}

/// The spans of each block, by (task, block id).
fn by_block(spans: &[ReceivedSpan]) -> BTreeMap<(String, u64), Vec<ReceivedSpan>> {
    let mut blocks: BTreeMap<(String, u64), Vec<ReceivedSpan>> = BTreeMap::new();
    for span in spans {
        if let (Some(task), Some(id)) = (span.attr("daisy.task"), span.attr("daisy.block_id")) {
            blocks.entry((task.to_owned(), id.parse().unwrap())).or_default().push(span.clone());
        }
    }
    blocks
}

/// Every span of every block is in the block's derived trace.
fn assert_one_derived_trace_per_block(
    run: &str,
    blocks: &BTreeMap<(String, u64), Vec<ReceivedSpan>>,
) {
    for ((task, id), spans) in blocks {
        let expected = daisy_telemetry::block_trace_id(run, task, *id).to_string();
        let traces: BTreeSet<&str> = spans.iter().map(|span| span.trace_id.as_str()).collect();
        assert_eq!(traces, BTreeSet::from([expected.as_str()]), "block {task}:{id}: {spans:#?}");
    }
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str, service: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.name == name && span.service == service).collect()
}

/// The span whose id is `id`, among `spans`.
fn parent_of<'a>(spans: &'a [ReceivedSpan], child: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| Some(&span.span_id) == child.parent.as_ref())
}

#[test]
fn every_block_has_one_derived_trace_holding_both_attempts_of_a_block_that_failed_once() {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start().unwrap();
    setup.pipeline("r", &setup.task("t", 6, "max_retries = 1"));
    let mut scheduler = Proc::spawn("scheduler", exporting(&mut setup.scheduler("r"), &receiver));
    let mut worker = Proc::spawn(
        "worker",
        exporting(setup.worker("r").env("FAIL_ONCE", "t:2"), &receiver)
            .args(["--log-format", "json"]),
    );
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
    // Log shippers read the worker's stderr: one JSON object per line.
    let logs = worker.stderr();
    assert!(logs.contains("worker done"), "{logs}");
    for line in logs.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"));
        assert!(event["level"].is_string() && event["fields"].is_object(), "{line}");
    }

    let spans = receiver.spans();
    let blocks = by_block(&spans);
    assert_eq!(blocks.len(), 6, "every block has spans: {:?}", blocks.keys());
    assert_one_derived_trace_per_block("r", &blocks);
    for ((_, id), spans) in &blocks {
        let lifetimes = named(spans, "block", "daisy-scheduler");
        assert_eq!(lifetimes.len(), 1, "block {id}: one lifetime span of the one leader");
        assert_eq!(lifetimes[0].parent, None, "block {id}: the lifetime span is the root");
        assert_eq!(lifetimes[0].attr("daisy.status"), Some("success"));
        let processes = named(spans, "process", "daisy-worker");
        let dispatches = named(spans, "dispatch", "daisy-scheduler");
        assert_eq!(processes.len(), dispatches.len(), "block {id}: {spans:#?}");
        for process in &processes {
            let dispatch = parent_of(spans, process)
                .unwrap_or_else(|| panic!("block {id}: the process span's parent is missing"));
            assert_eq!(
                dispatch.name, "dispatch",
                "block {id}: the worker hangs under the dispatch"
            );
            assert_eq!(dispatch.attr("daisy.attempt"), process.attr("daisy.attempt"));
            assert_eq!(dispatch.parent.as_ref(), Some(&lifetimes[0].span_id));
            assert!(process.attr("daisy.logs").is_some_and(|logs| logs.contains(".err")));
            for key in ["daisy.run", "daisy.level", "daisy.read_roi", "daisy.write_roi"] {
                assert!(process.attr(key).is_some(), "{key} on {process:#?}");
                assert!(dispatch.attr(key).is_some(), "{key} on {dispatch:#?}");
            }
        }
        assert_eq!(named(spans, "queue wait", "daisy-worker").len(), processes.len());
        assert_eq!(named(spans, "record outcome", "daisy-worker").len(), processes.len());
    }

    // Block 2 failed once and then succeeded: both attempts in its one trace.
    let spans = &blocks[&("t".to_owned(), 2)];
    let mut processes = named(spans, "process", "daisy-worker");
    processes.sort_by_key(|span| span.attr("daisy.attempt").map(str::to_owned));
    assert_eq!(processes.len(), 2, "{spans:#?}");
    let error = processes[0].error.as_deref().expect("the failed attempt has status Error");
    assert!(error.contains("failed"), "{error}");
    assert_eq!(processes[1].error, None, "the second attempt succeeded");
    assert_eq!(processes[1].attr("daisy.attempt"), Some("2"));
    let failed_dispatches = named(spans, "dispatch", "daisy-scheduler")
        .into_iter()
        .filter(|s| s.error.is_some())
        .count();
    assert_eq!(failed_dispatches, 1, "the scheduler's dispatch of attempt 1 is an Error too");

    // `daisy trace` prints the same id, and the link to open it.
    let output = run(daisy().args(["trace", "r", "t", "2", "--jaeger", "http://jaeger:16686/"]));
    assert!(output.status.success(), "{}", describe(&output));
    let trace = daisy_telemetry::block_trace_id("r", "t", 2).to_string();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{trace}\nhttp://jaeger:16686/trace/{trace}\n")
    );
    assert_eq!(processes[0].trace_id, trace);
}

#[test]
fn a_redelivered_block_and_blocks_finished_by_a_new_leader_each_keep_one_trace() {
    let setup = Setup::new();
    let receiver = OtlpReceiver::start().unwrap();
    setup.pipeline("r", &setup.task("t", 12, "max_workers = 2\ntimeout = \"3s\""));
    let mut leader = Proc::spawn("leader", exporting(&mut setup.scheduler("r"), &receiver));
    leader.wait_line("leading the run", RUN_DEADLINE);
    let mut standby = Proc::spawn("standby", exporting(&mut setup.scheduler("r"), &receiver));
    standby.wait_line("standing by", RUN_DEADLINE);
    let mut victim =
        Proc::spawn("worker A", exporting(setup.worker("r").env("SLEEP", "1"), &receiver));
    let mut survivor =
        Proc::spawn("worker B", exporting(setup.worker("r").env("SLEEP", "0.3"), &receiver));
    let victim_pid = victim.pid();
    wait_until("worker A to start a block", RUN_DEADLINE, || {
        setup.attempts("r").values().flatten().any(|a| a.pid == victim_pid)
    });
    victim.kill();
    let held: Vec<u64> = setup
        .attempts("r")
        .iter()
        .filter(|(_, runs)| runs.iter().any(|a| a.pid == victim_pid))
        .map(|((_, id), _)| *id)
        .filter(|id| !setup.recorded_done("r").contains(&("t".to_owned(), *id)))
        .collect();
    assert_eq!(held.len(), 1, "worker A held one block when it was killed");
    let held = held[0];
    // The leader applied the redelivery's outcome and exported its dispatch span: then it
    // goes too.
    wait_until("the redelivered block's dispatch span", RUN_DEADLINE, || {
        by_block(&receiver.spans()).get(&("t".to_owned(), held)).is_some_and(|spans| {
            named(spans, "dispatch", "daisy-scheduler")
                .iter()
                .any(|span| span.attr("daisy.delivery") == Some("2"))
        })
    });
    leader.kill();
    standby.wait_line("leading the run", RUN_DEADLINE);
    assert_eq!(standby.wait(RUN_DEADLINE), Some(0), "{}", standby.stderr());
    assert_eq!(survivor.wait(RUN_DEADLINE), Some(0), "{}", survivor.stderr());

    let spans = receiver.spans();
    let blocks = by_block(&spans);
    assert_eq!(blocks.len(), 12, "every block has spans: {:?}", blocks.keys());
    assert_one_derived_trace_per_block("r", &blocks);

    // The redelivered block: worker B's second delivery hangs under the dispatch span of the
    // batch, which the first worker's delivery also belonged to.
    let spans = &blocks[&("t".to_owned(), held)];
    let redelivered: Vec<_> = named(spans, "process", "daisy-worker")
        .into_iter()
        .filter(|span| span.attr("daisy.delivery") == Some("2"))
        .collect();
    assert_eq!(redelivered.len(), 1, "{spans:#?}");
    let dispatch = parent_of(spans, redelivered[0]).expect("the dispatch span of the batch");
    assert_eq!(dispatch.attr("daisy.delivery"), Some("2"));
    assert_eq!(redelivered[0].attr("daisy.attempt"), Some("1"), "a vanished worker is no retry");

    // Blocks the new leader finished: its own lifetime span, its dispatches under it, and the
    // worker's spans under those, all in the block's one trace.
    let epochs: BTreeSet<i64> = spans_named(&blocks, "block")
        .filter_map(|span| span.attr("daisy.epoch")?.parse().ok())
        .collect();
    let new_epoch = *epochs.last().expect("lifetime spans");
    let mut finished_by_new_leader = 0;
    for ((_, id), spans) in &blocks {
        let Some(lifetime) = named(spans, "block", "daisy-scheduler")
            .into_iter()
            .find(|span| span.attr("daisy.epoch") == Some(&new_epoch.to_string()))
        else {
            continue;
        };
        assert_eq!(lifetime.attr("daisy.status"), Some("success"), "block {id}");
        for process in named(spans, "process", "daisy-worker") {
            let Some(dispatch) = parent_of(spans, process) else { continue };
            if dispatch.parent.as_ref() == Some(&lifetime.span_id) {
                finished_by_new_leader += 1;
            }
        }
    }
    assert!(finished_by_new_leader > 0, "the new leader finished blocks: {epochs:?}");
}

fn spans_named<'a>(
    blocks: &'a BTreeMap<(String, u64), Vec<ReceivedSpan>>,
    name: &'a str,
) -> impl Iterator<Item = &'a ReceivedSpan> {
    blocks.values().flatten().filter(move |span| span.name == name)
}

#[test]
fn an_unreachable_collector_costs_a_warning_and_the_run_completes() {
    let setup = Setup::new();
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    setup.pipeline("r", &setup.task("t", 4, ""));
    let output = run(setup
        .daisy_run("r")
        .args(["--otlp", &format!("http://{closed}")])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100"));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(setup.recorded_done("r").len(), 4);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings = stderr.matches("the OTLP collector does not take spans").count();
    assert_eq!(warnings, 1, "one warning, not one per export: {stderr}");
}

#[test]
fn a_bad_otlp_url_or_protocol_is_bad_input_naming_the_fix() {
    let output = run(daisy().args(["--otlp", "localhost:4318", "trace", "r", "t", "1"]));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--otlp http://localhost:4318"));
    let output = run(daisy()
        .args(["--otlp", "http://localhost:4318", "trace", "r", "t", "1"])
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("use http/protobuf"));
}
