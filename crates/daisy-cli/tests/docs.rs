//! The docs against the binaries (issue 14, item 9): every `daisy`, `daisy-scheduler` and
//! `daisy-worker` command in README.md and examples/*/README.md parses with the real CLI,
//! and each binary's `--help` opens with what that binary does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{describe, run};

const BINARIES: [(&str, &str); 3] = [
    ("daisy", env!("CARGO_BIN_EXE_daisy")),
    ("daisy-scheduler", env!("CARGO_BIN_EXE_daisy-scheduler")),
    ("daisy-worker", env!("CARGO_BIN_EXE_daisy-worker")),
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and every examples/*/README.md.
fn readmes() -> Vec<PathBuf> {
    let mut readmes = vec![repository().join("README.md")];
    for entry in std::fs::read_dir(repository().join("examples")).unwrap() {
        let readme = entry.unwrap().path().join("README.md");
        if std::fs::metadata(&readme).is_ok() {
            readmes.push(readme);
        }
    }
    readmes
}

/// The commands of fenced blocks: every line of an `sh` (or `bash`, `console`, `shell`)
/// block, and the `$ ` lines of other blocks, with the prompt, a trailing `# comment` and
/// anything after a `|` cut off.
fn shell_lines(markdown: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    let mut in_other = false;
    for (number, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(language) = trimmed.strip_prefix("```") {
            if in_shell || in_other {
                (in_shell, in_other) = (false, false);
            } else if ["sh", "bash", "console", "shell"].contains(&language.trim()) {
                in_shell = true;
            } else {
                in_other = true;
            }
            continue;
        }
        // In a shell block every line is a command; in a transcript (`text`), a line
        // with a `$ ` prompt is.
        let command = match (in_shell, in_other) {
            (true, _) => Some(trimmed.strip_prefix("$ ").unwrap_or(trimmed)),
            (false, true) => trimmed.strip_prefix("$ "),
            (false, false) => None,
        };
        if let Some(command) = command {
            let command = command.split(" #").next().unwrap_or("");
            let command = command.split('|').next().unwrap_or("");
            lines.push((number + 1, command.trim().to_owned()));
        }
    }
    lines
}

/// A synopsis's optional parts (`[RUN]`, `[--delete RUN]`) as plain arguments.
fn arguments(command: &str) -> Vec<String> {
    command.replace(['[', ']'], " ").split_whitespace().map(str::to_owned).collect()
}

#[test]
fn regression_14_every_command_in_the_readmes_parses_with_the_real_cli() {
    let mut checked = 0;
    let mut refused = Vec::new();
    for readme in readmes() {
        let text = std::fs::read_to_string(&readme).unwrap();
        for (line, command) in shell_lines(&text) {
            let words = arguments(&command);
            let Some((&(_, binary), rest)) = words.split_first().and_then(|(first, rest)| {
                BINARIES.iter().find(|(name, _)| name == first).map(|found| (found, rest))
            }) else {
                continue;
            };
            // `--help` after the arguments: clap checks every argument before it, then
            // prints help instead of running anything.
            let output = run(Command::new(binary).args(rest).arg("--help"));
            if !output.status.success() {
                refused.push(format!(
                    "{}:{line}: `{command}`\n{}",
                    readme.display(),
                    describe(&output)
                ));
            }
            checked += 1;
        }
    }
    assert!(refused.is_empty(), "commands the CLI refuses:\n{}", refused.join("\n"));
    // 13 when this test was written; a parser that finds none would prove nothing.
    assert!(checked >= 13, "only {checked} commands found");
}

#[test]
fn regression_14_a_readme_flag_that_does_not_exist_is_caught() {
    let markdown = "text\n```sh\n$ daisy run pipeline.toml --frseh   # typo\n```\n";
    let lines = shell_lines(markdown);
    assert_eq!(lines, [(3, "daisy run pipeline.toml --frseh".to_owned())]);
    let words = arguments(&lines[0].1);
    let output = run(Command::new(BINARIES[0].1).args(&words[1..]).arg("--help"));
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
}

#[test]
fn regression_14_each_binarys_help_opens_with_what_it_does() {
    let mut first_lines = Vec::new();
    for (name, binary) in BINARIES {
        let output = run(Command::new(binary).arg("--help"));
        assert!(output.status.success(), "{}", describe(&output));
        let help = String::from_utf8(output.stdout).unwrap();
        let first = help.lines().next().unwrap_or_default().to_owned();
        assert!(
            !first.contains("binaries"),
            "{name} --help opens with the package's description: {first:?}"
        );
        first_lines.push(first);
    }
    assert_eq!(
        first_lines[0],
        "Plan and run blockwise pipelines over huge nD volumes (a Rust Daisy)"
    );
    assert!(first_lines[1].contains("scheduler"), "{first_lines:?}");
    assert!(first_lines[2].contains("Processes blocks"), "{first_lines:?}");
}
