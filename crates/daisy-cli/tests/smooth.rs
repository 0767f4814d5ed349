//! `examples/smooth`, run as its README says, on its own small volume: smooth, label per
//! block, merge across block faces, relabel; then its `check.py` computes the same
//! segmentation serially and compares it voxel for voxel (issue 14, item 6).
//!
//! The example's Python packages (numpy, scipy, zarr, pinned in its requirements.txt) are
//! installed once per machine with pip into `~/.cache/daisy-rs/python-<hash>`, as the test
//! harness installs nats-server: a missing Python or pip fails the test loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{daisy, describe, run};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/smooth")
}

/// A directory holding the packages of `requirements` (installed on first use), for
/// `PYTHONPATH`.
fn python_packages(requirements: &Path) -> PathBuf {
    let text = std::fs::read(requirements).unwrap();
    // FNV-1a: the directory changes with the pins, so a changed file installs afresh.
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let home = std::env::var_os("HOME").expect("HOME is set");
    let cache = Path::new(&home).join(".cache/daisy-rs");
    let target = cache.join(format!("python-{hash:016x}"));
    if std::fs::metadata(target.join("zarr")).is_ok() {
        return target;
    }
    // Installed beside the target and renamed into place, so a test that runs concurrently
    // (another checkout) never sees half an install.
    let partial = cache.join(format!(".python-{hash:016x}-{}", std::process::id()));
    eprintln!("installing {} into {}", requirements.display(), target.display());
    let output = run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&partial)
        .arg("-r")
        .arg(requirements));
    assert!(output.status.success(), "pip install failed: {}", describe(&output));
    if std::fs::rename(&partial, &target).is_err() {
        // Another process installed it first.
        let _ = std::fs::remove_dir_all(&partial);
    }
    target
}

#[test]
fn the_smooth_example_segments_its_volume_as_the_serial_computation_does() {
    let example = example_dir();
    let packages = python_packages(&example.join("requirements.txt"));
    // A copy, so that the run's data, state and logs stay out of the checkout.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&example).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "py" || ext == "toml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let python = |script: &str| {
        let mut command = Command::new("python3");
        command.arg(script).env("PYTHONPATH", &packages).current_dir(dir.path());
        run(&mut command)
    };

    let prepared = python("prepare.py");
    assert!(prepared.status.success(), "{}", describe(&prepared));

    let output = run(daisy()
        .args(["run", "pipeline.toml", "--no-progress"])
        .env("PYTHONPATH", &packages)
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .current_dir(dir.path()));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let summary = String::from_utf8_lossy(&output.stdout);
    for task in ["smooth 27 27", "label 27 27", "merge 1 1", "relabel 27 27"] {
        let found = summary.lines().any(|line| {
            line.split_whitespace().skip(1).take(3).collect::<Vec<_>>().join(" ") == task
        });
        assert!(found, "no row starting {task:?}:\n{summary}");
    }
    assert!(summary.contains("all 82 blocks processed successfully"), "{summary}");

    let checked = python("check.py");
    assert!(checked.status.success(), "{}", describe(&checked));
    let verdict = String::from_utf8_lossy(&checked.stdout);
    assert!(verdict.contains("segmentation matches the serial computation"), "{verdict}");
    // The volume has objects to get wrong, many of them across block faces.
    let objects: u64 = verdict
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no object count in {verdict:?}"));
    assert!(objects > 100, "{verdict}");
}
