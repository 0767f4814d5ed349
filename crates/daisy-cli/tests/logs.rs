//! Worker logs of several daisy processes in one directory (issue 14, item 7): two
//! `daisy-worker`s started side by side used to interleave in `daisy_logs/<task>/worker_0.out`,
//! headed `=== daisy run …` although no `daisy run` wrote them.

use std::collections::BTreeSet;

use crate::util::{Proc, RUN_DEADLINE, Setup};

#[test]
fn regression_14_two_workers_in_one_directory_write_their_own_headed_logs() {
    let setup = Setup::new();
    setup.pipeline("r", &setup.task("t", 8, "max_workers = 2"));
    let mut scheduler = Proc::spawn("scheduler", &mut setup.scheduler("r"));
    // Both in the test's directory, with the same --log-dir and one slot each: slot 0 twice.
    let mut first = Proc::spawn("worker A", setup.worker("r").env("SLEEP", "0.3"));
    let mut second = Proc::spawn("worker B", setup.worker("r").env("SLEEP", "0.3"));
    assert_eq!(scheduler.wait(RUN_DEADLINE), Some(0), "{}", scheduler.describe());
    assert_eq!(first.wait(RUN_DEADLINE), Some(0), "{}", first.describe());
    assert_eq!(second.wait(RUN_DEADLINE), Some(0), "{}", second.describe());

    // The block processes' parent is the daisy-worker that ran them.
    let ran: BTreeSet<u32> = setup.attempts("r").values().flatten().map(|a| a.pid).collect();
    assert!(ran.iter().all(|pid| [first.pid(), second.pid()].contains(pid)), "{ran:?}");
    let task_logs = setup.path("logs").join("t");
    let mut directories = BTreeSet::new();
    for entry in std::fs::read_dir(&task_logs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (_, pid) = name.rsplit_once('-').unwrap_or_else(|| panic!("{name}: <host>-<pid>"));
        let pid: u32 = pid.parse().unwrap_or_else(|_| panic!("{name}: <host>-<pid>"));
        directories.insert(pid);
        for log in ["worker_0.out", "worker_0.err"] {
            let text = std::fs::read_to_string(path.join(log)).unwrap();
            let header = text.lines().next().unwrap_or_default();
            // The directory has the host name made fit for a path; the header has it as is.
            assert!(
                header.starts_with("=== daisy-rs: daisy-worker on ")
                    && header.contains(&format!(" (pid {pid}), task t slot 0: runs `sh ")),
                "{name}/{log} is not headed by the daisy-worker that wrote it:\n{text}"
            );
            assert_eq!(text.matches("=== daisy-rs: ").count(), 1, "one writer:\n{text}");
        }
    }
    assert_eq!(directories, ran, "a log directory for each daisy-worker that ran blocks");
}
