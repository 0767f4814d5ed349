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
