//! The Python helper's own unit tests, and the embedded copy of it.

use std::path::PathBuf;
use std::process::Command;

use daisy_worker::process::PYTHON_HELPER_SOURCE;

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

#[test]
fn embedded_helper_is_the_file_in_python_dir() {
    let on_disk =
        std::fs::read_to_string(python_dir().join("daisy_worker.py")).expect("read helper");
    assert_eq!(PYTHON_HELPER_SOURCE, on_disk);
}

#[test]
fn python_unit_tests_pass() {
    let output = Command::new("python3")
        .args(["-m", "unittest", "-q", "test_daisy_worker"])
        .current_dir(python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 is installed");
    assert!(
        output.status.success(),
        "python tests failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
