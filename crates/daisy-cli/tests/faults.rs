//! Fault injection over NATS JetStream (issue 5, item 7): a real `nats-server` per test
//! (daisy-testkit), real `daisy-scheduler` and `daisy-worker` processes, SIGKILLs mid-run.
//!
//! The harness is `util`'s: every block runs its `block.sh`, which records each attempt with
//! the pid of the daisy-worker that ran it, so "ran once", "redelivered" and "ran again" are
//! counted on the processor's side. What the run recorded is read back from its event stream
//! with `daisy-nats`. Every child is killed when its [`Proc`] guard drops, also when a test
//! fails (its stderr tail is printed then); the server goes with its `TestNats`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use daisy_nats::RunSettings;
use daisy_proto::subjects::{self, EventScope, MsgId};
use daisy_proto::{BlockResult, BlockWork, Dispatch, Event, OutcomeKind, OutcomeReport, RunId};

use crate::util::{Proc, RUN_DEADLINE, Setup, assert_each_ran_once, counts, wait_until};

#[test]
fn a_worker_killed_mid_block_has_its_block_redelivered_and_the_run_completes() {
    let setup = Setup::new();
    setup.pipeline("r", &setup.task("t", 8, "max_workers = 2\ntimeout = \"3s\""));
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    let mut victim = Proc::spawn("worker A", setup.worker("r").env("SLEEP", "1"));
    let mut survivor = Proc::spawn("worker B", setup.worker("r").env("SLEEP", "0.3"));
    let victim_pid = victim.pid();
    wait_until("worker A to start a block", RUN_DEADLINE, || {
        setup.attempts("r").values().flatten().any(|a| a.pid == victim_pid)
    });
    victim.kill();
    let done = setup.recorded_done("r");
    let held: Vec<u64> = setup
        .attempts("r")
        .iter()
        .filter(|(_, runs)| runs.iter().any(|a| a.pid == victim_pid))
        .map(|((_, index), _)| *index)
        .filter(|index| !done.contains(&("t".to_owned(), *index)))
        .collect();
    assert_eq!(held.len(), 1, "worker A held one block when it was killed");

    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(counts(&scheduler.json(), "t"), [8, 8, 0, 0, 0]);
    let attempts = setup.attempts("r");
    assert_eq!(attempts.len(), 8, "every block ran: {attempts:?}");
    let runs = &attempts[&("t".to_owned(), held[0])];
    assert_eq!(runs.len(), 2, "the killed block ran again: {runs:?}");
    assert_eq!(runs[1].pid, survivor.pid(), "worker B took the redelivery");
    assert_eq!(runs[1].attempt, 1, "a vanished worker does not count as a failed attempt");
    for (block, runs) in &attempts {
        assert!(block.1 == held[0] || runs.len() == 1, "{block:?} ran again: {runs:?}");
    }
    assert_eq!(survivor.wait(RUN_DEADLINE), Some(0), "{}", survivor.stderr());
    assert!(survivor.stderr().contains("batch redelivered"), "{}", survivor.stderr());
    assert_eq!(setup.block_message_count("r"), 0);
}

/// Two tasks of 12 blocks, the second downstream of the first; `timeout` is also the AckWait
/// after which a block whose worker vanished (or whose ack was lost) is redelivered.
fn two_tasks(setup: &Setup, timeout: &str) -> String {
    let extra = format!("max_workers = 2\ntimeout = \"{timeout}\"");
    let extra = extra.as_str();
    setup.task("first", 12, extra)
        + &setup.task("second", 12, &format!("upstream = [\"first\"]\n{extra}"))
}

/// `scheduler`, leading run `r` of [`two_tasks`] after a kill, exits 0 with every block
/// succeeded, each run once: none of `done_at_kill` again, and the block stream is empty.
fn assert_two_tasks_finish_rerunning_nothing(
    setup: &Setup,
    scheduler: &mut Proc,
    done_at_kill: &BTreeSet<(String, u64)>,
) {
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    let report = scheduler.json();
    assert_eq!(counts(&report, "first"), [12, 12, 0, 0, 0]);
    assert_eq!(counts(&report, "second"), [12, 12, 0, 0, 0]);
    let attempts = setup.attempts("r");
    for block in done_at_kill {
        assert_eq!(attempts[block].len(), 1, "{block:?} succeeded before the kill and ran again");
    }
    assert_each_ran_once(&attempts, &[("first", 12), ("second", 12)]);
    assert_eq!(setup.block_message_count("r"), 0);
}

#[test]
fn a_standby_takes_over_from_a_killed_leader_within_the_lease_ttl_and_reruns_nothing() {
    let setup = Setup::new();
    setup.pipeline("r", &two_tasks(&setup, "10s"));
    let mut leader = Proc::spawn("leader", &mut setup.scheduler("r"));
    leader.wait_line("leading the run", RUN_DEADLINE);
    let mut standby = Proc::spawn("standby", &mut setup.scheduler("r"));
    standby.wait_line("standing by", RUN_DEADLINE);
    let _workers: Vec<Proc> = (0..2)
        .map(|n| Proc::spawn(&format!("worker {n}"), setup.worker("r").env("SLEEP", "0.2")))
        .collect();
    wait_until("6 blocks to succeed", RUN_DEADLINE, || setup.recorded_done("r").len() >= 6);

    leader.kill();
    let killed_at = Instant::now();
    let done_at_kill = setup.recorded_done("r");
    let leads_at = standby.wait_line("leading the run", RUN_DEADLINE);
    let dispatches_at = standby.wait_line("rebuilt the run from its record", RUN_DEADLINE);
    let (leads, dispatches) = (leads_at - killed_at, dispatches_at - killed_at);
    eprintln!("failover: standby leads {leads:?} and dispatches {dispatches:?} after the kill");
    assert!(dispatches < Duration::from_secs(2 + 2), "lease TTL 2s + 2s: {dispatches:?}");

    assert_two_tasks_finish_rerunning_nothing(&setup, &mut standby, &done_at_kill);
}

#[test]
fn the_only_scheduler_killed_and_started_again_reruns_nothing() {
    let setup = Setup::new();
    setup.pipeline("r", &two_tasks(&setup, "10s"));
    let mut first = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    let _workers: Vec<Proc> = (0..2)
        .map(|n| Proc::spawn(&format!("worker {n}"), setup.worker("r").env("SLEEP", "0.2")))
        .collect();
    wait_until("6 blocks to succeed", RUN_DEADLINE, || setup.recorded_done("r").len() >= 6);
    first.kill();
    let done_at_kill = setup.recorded_done("r");
    assert!(done_at_kill.len() < 24, "killed before the end");

    let mut second = Proc::spawn("restarted scheduler", &mut setup.scheduler("r"));
    assert_two_tasks_finish_rerunning_nothing(&setup, &mut second, &done_at_kill);
    assert!(second.stderr().contains("taking over"), "{}", second.stderr());
}

#[test]
fn a_nats_server_restarted_mid_run_loses_nothing() {
    let mut setup = Setup::new();
    setup.pipeline("r", &two_tasks(&setup, "3s"));
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    let mut workers: Vec<Proc> = (0..2)
        .map(|n| Proc::spawn(&format!("worker {n}"), setup.worker("r").env("SLEEP", "0.2")))
        .collect();
    wait_until("4 blocks to succeed", RUN_DEADLINE, || setup.recorded_done("r").len() >= 4);
    setup.nats.kill().expect("nats-server is killed");
    setup.nats.restart().expect("nats-server starts again on its store");
    setup.runtime.block_on(setup.nats.wait_ready(Duration::from_secs(20))).unwrap();

    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    let report = scheduler.json();
    assert_eq!(counts(&report, "first"), [12, 12, 0, 0, 0]);
    assert_eq!(counts(&report, "second"), [12, 12, 0, 0, 0]);
    let attempts = setup.attempts("r");
    assert_eq!(attempts.len(), 24, "every block ran");
    assert_eq!(setup.recorded_done("r").len(), 24, "every success is recorded");
    for worker in &mut workers {
        assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
    }
    assert_eq!(setup.block_message_count("r"), 0);
}

#[test]
fn garbage_and_wrong_version_messages_on_every_subject_are_dropped_and_the_run_completes() {
    let setup = Setup::new();
    setup.pipeline("r", &setup.task("t", 10, "max_workers = 2"));
    let run = RunId::new("r").unwrap();
    let task_id = daisy_core::TaskId::new("t").unwrap();
    let settings = RunSettings { lease_ttl: Duration::from_secs(2), ..RunSettings::default() };
    setup.runtime.block_on(setup.client.provision_run(&run, &settings)).unwrap();
    let block_subject = subjects::block_subject(&run, &task_id);
    let task_events = subjects::event_subject(&run, EventScope::Task(&task_id));
    let run_events = subjects::event_subject(&run, EventScope::Run);
    let mut wrong_dispatch = daisy_proto::encode(&Dispatch {
        task: "t".into(),
        epoch: 1,
        blocks: vec![BlockWork { index: 3, attempt: 1 }],
    });
    wrong_dispatch[0] = daisy_proto::PROTOCOL_VERSION + 1;
    let mut wrong_event =
        daisy_proto::encode(&Event::RunStarted { layout_hash: "x".into(), unix_ms: 1, epoch: 1 });
    wrong_event[0] = daisy_proto::PROTOCOL_VERSION + 1;
    let garbage: &[u8] = b"\xff\x00garbage{not msgpack";
    let raw = setup.runtime.block_on(async_nats::connect(setup.nats.url())).unwrap();
    let js = {
        let _runtime = setup.runtime.enter();
        async_nats::jetstream::new(raw.clone())
    };
    let publish = |subject: &str, payload: &[u8]| {
        setup.runtime.block_on(async {
            let ack = js.publish(subject.to_owned(), payload.to_vec().into()).await.unwrap();
            ack.await.expect("the stream stores it");
        });
    };
    let put = |bucket: String, key: &str, payload: &[u8]| {
        setup.runtime.block_on(async {
            let kv = js.get_key_value(bucket).await.unwrap();
            kv.put(key, payload.to_vec().into()).await.unwrap();
        });
    };
    let inject = |round: &str| {
        publish(&block_subject, garbage);
        publish(&block_subject, &wrong_dispatch);
        publish(&block_subject, b"");
        publish(&task_events, garbage);
        publish(&task_events, &wrong_event);
        publish(&run_events, b"");
        put(subjects::meta_bucket(&run), subjects::STATUS_KEY, garbage);
        put(subjects::workers_bucket(&run), &format!("intruder-{round}"), garbage);
    };
    // Before the scheduler: its replay and its read of the block stream meet them.
    inject("before");
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    scheduler.wait_line("rebuilt the run from its record", RUN_DEADLINE);
    let mut workers: Vec<Proc> = (0..2)
        .map(|n| Proc::spawn(&format!("worker {n}"), setup.worker("r").env("SLEEP", "0.3")))
        .collect();
    wait_until("3 blocks to start", RUN_DEADLINE, || setup.attempt_lines("r") >= 3);
    // Mid-run: the leader follows the event stream live, workers fetch them, and a
    // foreign write to the lease key deposes the leader until the key expires.
    inject("during");
    // What workers run goes over core NATS, to the leader only (it subscribed as it led):
    // sent while it still leads, before the foreign lease write deposes it.
    setup.runtime.block_on(async {
        for payload in [garbage, &wrong_event, b""] {
            raw.publish(subjects::running_subject(&run), payload.to_vec().into()).await.unwrap();
        }
        raw.flush().await.unwrap();
    });
    scheduler.wait_line("undecodable running report ignored", RUN_DEADLINE);
    put(subjects::lease_bucket(&run), subjects::LEADER_KEY, garbage);

    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(counts(&scheduler.json(), "t"), [10, 10, 0, 0, 0]);
    assert_each_ran_once(&setup.attempts("r"), &[("t", 10)]);
    let logs = scheduler.stderr();
    assert!(logs.contains("undecodable event ignored"), "{logs}");
    assert!(logs.contains("undecodable block message removed"), "{logs}");
    let mut worker_logs = String::new();
    for worker in &mut workers {
        assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
        worker_logs += &worker.stderr();
    }
    assert!(worker_logs.contains("undecodable block message terminated"), "{worker_logs}");
    assert_eq!(setup.block_message_count("r"), 0, "garbage is removed from the block stream");
    drop(raw);
}

#[test]
fn a_poison_block_fails_after_its_deliveries_its_dependents_are_orphaned_and_the_stream_empties() {
    let setup = Setup::new();
    let extra = "max_workers = 2\nmax_retries = 2\ntimeout = \"2s\"";
    setup.pipeline(
        "r",
        &(setup.task("up", 6, extra)
            + &setup.task("down", 6, &format!("upstream = [\"up\"]\n{extra}"))),
    );
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    let start_worker = || Proc::spawn("worker", setup.worker("r").env("POISON", "up:2"));
    let mut workers: Vec<Proc> = (0..2).map(|_| start_worker()).collect();
    let mut started = 2;
    let mut worker_logs = String::new();
    wait_until("the scheduler to exit, restarting dead workers", RUN_DEADLINE, || {
        for worker in &mut workers {
            if worker.exited() && !scheduler.exited() {
                worker_logs += &(worker.stderr() + "\n");
                *worker = start_worker();
                started += 1;
            }
        }
        scheduler.exited()
    });
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(1), "{}", scheduler.stderr());
    for worker in &mut workers {
        worker.wait(RUN_DEADLINE);
        worker_logs += &(worker.stderr() + "\n");
    }
    // A worker holds a block only while a slot is free to run it, so the
    // deaths are charged to the poison block alone, never to a `down` block
    // that waited in the dying worker for its one slot.
    let innocent_redeliveries: Vec<&str> = worker_logs
        .lines()
        .filter(|line| line.contains("batch redelivered") && line.contains("task=down"))
        .collect();
    assert!(innocent_redeliveries.is_empty(), "{innocent_redeliveries:#?}");
    let report = scheduler.json();
    assert_eq!(counts(&report, "up"), [6, 5, 0, 1, 0]);
    assert_eq!(counts(&report, "down"), [6, 5, 0, 0, 1]);
    let attempts = setup.attempts("r");
    let poison = &attempts[&("up".to_owned(), 2)];
    assert_eq!(poison.len(), 3, "max_retries + 1 deliveries: {poison:?}");
    assert!(started >= 4, "every delivery killed a worker ({started} started)");
    assert!(!attempts.contains_key(&("down".to_owned(), 2)), "the orphan never ran");
    assert_eq!(attempts.len(), 6 + 5);
    assert!(attempts.iter().all(|(block, runs)| block.1 == 2 || runs.len() == 1), "{attempts:?}");
    let first_error = &report["tasks"][0]["first_error"];
    assert_eq!(first_error["kind"], "deliveries_exhausted", "{report}");
    assert_eq!(setup.block_message_count("r"), 0, "the poison message is gone");
}

/// Provisions run `r` with its pipeline file and publishes one batch of task `t` by hand,
/// as the leader of epoch 1 would: `blocks` at attempt 1. Returns its block-stream sequence.
fn publish_batch_by_hand(setup: &Setup, blocks: &[u64]) -> u64 {
    let run = RunId::new("r").unwrap();
    let task = daisy_core::TaskId::new("t").unwrap();
    let dispatch = Dispatch {
        task: "t".into(),
        epoch: 1,
        blocks: blocks.iter().map(|&index| BlockWork { index, attempt: 1 }).collect(),
    };
    let msg_id = MsgId::dispatch_of_epoch(&run, &task, blocks[0], 1, 1);
    setup.runtime.block_on(async {
        let streams = setup.client.provision_run(&run, &RunSettings::default()).await.unwrap();
        let spec = std::fs::read_to_string(setup.pipeline_file("r")).unwrap();
        streams.put_spec(&spec).await.unwrap();
        let published = setup.client.publish_dispatch(&run, &task, &dispatch, &msg_id, None).await;
        published.unwrap().stream_sequence
    })
}

#[test]
fn a_batch_running_three_times_its_ack_wait_with_heartbeats_is_not_redelivered() {
    // The real scheduler cannot produce a single delivery this long: `timeout` is both
    // the consumer's AckWait and the block's kill deadline, and slow blocks go one per
    // batch. A batch of fast-then-slow blocks can, so this test publishes one by hand.
    let setup = Setup::new();
    setup.pipeline("r", &setup.task("t", 4, "max_workers = 2\ntimeout = \"2s\""));
    publish_batch_by_hand(&setup, &[0, 1, 2, 3]);
    // Four blocks of 1.6 s: 6.4 s in one delivery, 3.2 x the AckWait of 2 s. The second
    // worker idles, ready to take a redelivery.
    let started = Instant::now();
    let _workers: Vec<Proc> = (0..2)
        .map(|n| Proc::spawn(&format!("worker {n}"), setup.worker("r").env("SLEEP", "1.6")))
        .collect();
    wait_until("the batch's outcomes", RUN_DEADLINE, || setup.recorded_done("r").len() == 4);
    let took = started.elapsed();
    assert!(took > Duration::from_secs(6), "the batch ran 3x its AckWait: {took:?}");
    let attempts = setup.attempts("r");
    assert_each_ran_once(&attempts, &[("t", 4)]);
    let pids: BTreeSet<u32> = attempts.values().flatten().map(|a| a.pid).collect();
    assert_eq!(pids.len(), 1, "one worker ran the whole batch");
    assert_eq!(setup.recorded_reports("r").len(), 1, "one report, no second delivery");
    wait_until("the batch to be acked", RUN_DEADLINE, || setup.block_message_count("r") == 0);
}

#[test]
fn a_batch_recorded_but_never_acked_is_removed_by_the_next_leader_and_not_run_again() {
    // A worker recorded block 1's success and died before its ack: the batch is still in
    // the block stream when a scheduler takes over.
    let setup = Setup::new();
    setup.pipeline("r", &setup.task("t", 4, "max_workers = 2"));
    let sequence = publish_batch_by_hand(&setup, &[1]);
    let run = RunId::new("r").unwrap();
    let task_id = daisy_core::TaskId::new("t").unwrap();
    setup.runtime.block_on(async {
        let recorded = Event::Outcomes(OutcomeReport {
            task: "t".into(),
            worker: "gone-t-0".into(),
            results: vec![BlockResult {
                index: 1,
                attempt: 1,
                outcome: OutcomeKind::Success,
                error: None,
                seconds: 0.1,
            }],
            worker_restarts: 0,
            epoch: 1,
            dispatch_sequence: sequence,
            delivery: 1,
            ..OutcomeReport::default()
        });
        let msg_id = MsgId::for_event(&run, &recorded);
        let scope = EventScope::Batch(&task_id, sequence);
        setup.client.publish_event(&run, scope, &recorded, &msg_id, None).await.unwrap();
    });
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    // Workers still alive could take the batch before the new leader looks; here none is.
    scheduler.wait_line("rebuilt the run from its record", RUN_DEADLINE);
    let mut worker = Proc::spawn("worker", &mut setup.worker("r"));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.stderr());
    assert_eq!(worker.wait(RUN_DEADLINE), Some(0), "{}", worker.stderr());
    assert_eq!(counts(&scheduler.json(), "t"), [4, 4, 0, 0, 0]);
    let logs = scheduler.stderr();
    assert!(logs.contains("batch recorded as done but not acked removed"), "{logs}");
    let attempts = setup.attempts("r");
    assert!(!attempts.contains_key(&("t".to_owned(), 1)), "block 1 ran again: {attempts:?}");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(setup.block_message_count("r"), 0);
}

#[test]
fn two_runs_on_one_server_do_not_interfere() {
    let setup = Setup::new();
    let runs = ["alpha", "beta"];
    for run in runs {
        setup.pipeline(run, &two_tasks(&setup, "10s"));
    }
    let mut schedulers: Vec<Proc> =
        runs.iter().map(|run| Proc::spawn(run, &mut setup.scheduler(run))).collect();
    let mut workers: Vec<(&str, Proc)> = Vec::new();
    for run in runs {
        for n in 0..2 {
            workers.push((run, Proc::spawn(&format!("{run} worker {n}"), &mut setup.worker(run))));
        }
    }
    for (run, scheduler) in runs.iter().zip(&mut schedulers) {
        assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{run}: {}", scheduler.stderr());
        let report = scheduler.json();
        assert_eq!(report["run_id"], *run);
        assert_eq!(counts(&report, "first"), [12, 12, 0, 0, 0]);
        assert_eq!(counts(&report, "second"), [12, 12, 0, 0, 0]);
        let attempts = setup.attempts(run);
        assert_each_ran_once(&attempts, &[("first", 12), ("second", 12)]);
        let own: BTreeSet<u32> =
            workers.iter().filter(|(r, _)| r == run).map(|(_, w)| w.pid()).collect();
        assert!(attempts.values().flatten().all(|a| own.contains(&a.pid)), "{run}: {attempts:?}");
        assert_eq!(setup.recorded_done(run).len(), 24);
        assert_eq!(setup.block_message_count(run), 0);
    }
}

#[test]
fn daisy_run_on_a_server_killed_mid_pipeline_resumes_without_rerunning_succeeded_blocks() {
    let setup = Setup::new();
    // The blocks the killed session's workers held come back after AckWait, which is the
    // block timeout: with the default of 10 minutes the second session would wait that long
    // for them (reported as a bug), so this test keeps it short.
    let extra = "max_workers = 2\ntimeout = \"3s\"";
    setup.pipeline(
        "pipeline",
        &(setup.task("first", 30, extra)
            + &setup.task("second", 30, &format!("upstream = [\"first\"]\n{extra}"))),
    );
    let daisy_run = |json: bool| {
        let mut command = setup.daisy_run("pipeline");
        command.args(json.then_some("--json")).env("SLEEP", "0.05");
        command
    };
    let mut first = Proc::spawn("daisy run", &mut daisy_run(false));
    wait_until("10 blocks to succeed", RUN_DEADLINE, || {
        setup.recorded_done("pipeline").len() >= 10
    });
    first.kill();
    let done_at_kill = setup.recorded_done("pipeline");
    assert!(done_at_kill.len() < 60, "killed before the end");

    let mut second = Proc::spawn("daisy run again", &mut daisy_run(true));
    assert_eq!(second.wait(RUN_DEADLINE), Some(0), "{}", second.stderr());
    let report = second.json();
    assert_eq!(counts(&report, "first")[..2], [30, 30]);
    assert_eq!(counts(&report, "second")[..2], [30, 30]);
    let skipped = counts(&report, "first")[2] + counts(&report, "second")[2];
    // Skipped: exactly the blocks this session did not run (recorded done by the killed one).
    let attempts = setup.attempts("pipeline");
    let ran_here =
        attempts.values().filter(|runs| runs.iter().any(|a| a.pid == second.pid())).count();
    assert!(skipped >= done_at_kill.len() as u64, "every recorded block was skipped: {report}");
    assert_eq!(skipped, 60 - ran_here as u64, "{report}");
    assert_eq!(attempts.len(), 60, "every block ran");
    for block in &done_at_kill {
        assert_eq!(attempts[block].len(), 1, "{block:?} succeeded before the kill and ran again");
    }
}
