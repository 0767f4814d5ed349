//! `daisy plan`: Daisy-exact plans, the simulation and clear errors.

use serde_json::Value;

use crate::util::{daisy, describe, fixtures_dir, run};

#[test]
fn json_blocks_equal_daisys_plan_for_every_fixture() {
    let mut compared = 0;
    let mut paths: Vec<_> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        let output = run(daisy().args(["plan", "--json", "--blocks"]).arg(&path));
        if expected.get("refused").is_some() {
            assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(stderr.contains("would never become ready"), "{stderr}");
            continue;
        }
        assert!(output.status.success(), "{}: {}", path.display(), describe(&output));
        let actual: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(actual, expected, "{}", path.display());
        compared += 1;
    }
    assert_eq!(compared, 47);
}

#[test]
fn table_lists_every_task_with_blocks_levels_and_root_blocks() {
    let output = run(daisy().arg("plan").arg(fixtures_dir().join("08.toml")));
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..5], ["task", "blocks", "grid", "levels", "root"]);
    assert_eq!(rows[1], ["first", "16", "4x4", "4", "4", "valid", "yes", "1", "-"]);
    assert_eq!(rows[2], ["second", "4", "2x2", "4", "0", "valid", "yes", "1", "first"]);
}

#[test]
fn simulate_runs_every_block_and_reports_speed_and_memory() {
    let output =
        run(daisy().args(["plan", "--simulate", "--json"]).arg(fixtures_dir().join("10.toml")));
    assert!(output.status.success(), "{}", describe(&output));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let simulated = &json["simulated"];
    assert_eq!(simulated["blocks"], json["tasks"][0]["num_blocks"]);
    assert!(simulated["seconds"].as_f64().unwrap() > 0.0);
    assert!(simulated["blocks_per_s"].as_f64().unwrap() > 0.0);
    assert!(simulated["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn unknown_keys_are_refused_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let text = std::fs::read_to_string(fixtures_dir().join("00.toml")).unwrap();
    std::fs::write(&path, format!("{text}max_worker = 3\n")).unwrap();
    let output = run(daisy().arg("plan").arg(&path));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = text.lines().count() + 1;
    assert!(stderr.contains(&format!("pipeline.toml:{line}:1")), "{stderr}");
    assert!(stderr.contains("max_worker"), "{stderr}");
}

#[test]
fn invalid_pipelines_name_the_task_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    let cases = [
        ("max_workers = 0\n", "task 'a': max_workers"),
        ("upstream = [\"raw\"]\n", "task 'a': upstream: no task has the id 'raw'"),
    ];
    let text = std::fs::read_to_string(fixtures_dir().join("00.toml")).unwrap();
    for (extra, expected) in cases {
        std::fs::write(&path, format!("{text}{extra}")).unwrap();
        let output = run(daisy().arg("plan").arg(&path));
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let missing = run(daisy().arg("plan").arg(dir.path().join("missing.toml")));
    assert_eq!(missing.status.code(), Some(2));
}

/// Issue 14, item 6: the old smooth example named `smooth.py` and `./label-block`, which did
/// not exist, and `daisy run` orphaned every block. `daisy plan` says so before a run.
#[test]
fn regression_14_plan_warns_about_programs_and_scripts_that_do_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("here.py"), "").unwrap();
    let task = |id: &str, process: &str| {
        format!(
            "[[task]]\nid = \"{id}\"\ntotal_roi = {{ offset = [0], shape = [4] }}\n\
             read_roi = {{ offset = [0], shape = [2] }}\nwrite_roi = {{ offset = [0], shape = [2] }}\n\
             {process}\n"
        )
    };
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        [
            task("fine", "worker = [\"python3\", \"-u\", \"here.py\"]\ncheck = [\"true\"]"),
            task("script", "worker = [\"python3\", \"smooth.py\"]"),
            task("relative", "command = [\"./label-block\"]"),
            task("bare", "command = [\"no-such-program-daisy\"]\ncheck = [\"sh\", \"done.sh\"]"),
        ]
        .concat(),
    )
    .unwrap();
    let output = run(daisy().arg("plan").arg(&pipeline));
    assert!(output.status.success(), "a warning does not fail the plan: {}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: ")).collect();
    let expected = [
        "task 'script': worker script `smooth.py` not found",
        "task 'relative': command program `./label-block` not found",
        "task 'bare': command program `no-such-program-daisy` not found (on PATH)",
        "task 'bare': check script `done.sh` not found",
    ];
    assert_eq!(warnings.len(), expected.len(), "{stderr}");
    for (warning, expected) in warnings.iter().zip(expected) {
        assert!(warning.contains(expected), "{expected:?} not in {warning:?}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("8 blocks in 4 tasks;"), "{stdout}");

    // The example the README points at plans without a warning.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/smooth/pipeline.toml");
    let output = run(daisy().arg("plan").arg(&example));
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{}", describe(&output));
}

/// Issue 14, item 10: `daisy plan --json --blocks | head` printed a Broken pipe error.
#[test]
fn regression_14_plan_exits_quietly_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("one.toml");
    std::fs::write(
        &pipeline,
        "[[task]]\nid = \"only\"\ntotal_roi = { offset = [0], shape = [200000] }\n\
         read_roi = { offset = [0], shape = [1] }\nwrite_roi = { offset = [0], shape = [1] }\n\
         command = [\"true\"]\n",
    )
    .unwrap();
    let table = run(daisy().arg("plan").arg(&pipeline));
    assert!(String::from_utf8_lossy(&table.stdout).contains("200000 blocks in 1 task;"));

    let mut child = daisy()
        .args(["plan", "--json", "--blocks"])
        .arg(&pipeline)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, as `head -c` does, then close the pipe with megabytes still to come.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "nothing to say about a closed pipe");
}
