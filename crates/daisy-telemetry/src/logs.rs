//! Where log lines go: stderr, never tearing the progress bars of `daisy run`; and which
//! lines pass (the env filter).
//!
//! # Ownership
//! Owns where log lines go. It does not own the bars: the CLI's progress display attaches
//! its `MultiProgress` to the [`LogOutput`] handle while they are shown, and
//! every log line is then written inside `MultiProgress::suspend` (the bars
//! are cleared, the line written, the bars redrawn).
//!
//! # Why
//! The alternatives were `MultiProgress::println` (prints nothing when the
//! bars are hidden, so logs would vanish without a terminal) and the
//! `tracing-indicatif` crate (one more dependency and a span-per-bar model
//! that does not fit one bar per task). Suspending is a few lines.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The crates whose level `-v` raises.
const DAISY_CRATES: [&str; 9] = [
    "daisy",
    "daisy_cli",
    "daisy_core",
    "daisy_proto",
    "daisy_scheduler",
    "daisy_worker",
    "daisy_nats",
    "daisy_array",
    "daisy_telemetry",
];

/// Where log lines go: stderr, around the progress bars when they are shown.
/// Cloned into the subscriber and into the progress display.
#[derive(Clone, Default)]
pub struct LogOutput {
    bars: Arc<Mutex<Option<MultiProgress>>>,
}

impl LogOutput {
    /// Writes log lines around `bars` until [`LogOutput::detach`].
    pub fn attach(&self, bars: MultiProgress) {
        *self.bars.lock().unwrap_or_else(PoisonError::into_inner) = Some(bars);
    }

    /// Writes log lines straight to stderr again.
    pub fn detach(&self) {
        *self.bars.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Prints a line for the user on stderr without tearing the bars.
    pub fn note(&self, line: &str) {
        let mut text = line.to_owned();
        text.push('\n');
        let _ = self.make_writer().write_all(text.as_bytes());
    }
}

/// Writes one formatted log event.
pub struct LogWriter {
    bars: Option<MultiProgress>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &self.bars {
            Some(bars) => bars.suspend(|| io::stderr().lock().write_all(buf)),
            None => io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter { bars: self.bars.lock().unwrap_or_else(PoisonError::into_inner).clone() }
    }
}

/// The filter: `-v` (info) and `-vv` (debug) for daisy crates win over
/// `RUST_LOG`, which wins over the default (`warn`).
pub(crate) fn filter(verbose: u8) -> EnvFilter {
    let level = match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    };
    if let Some(level) = level {
        let directives: Vec<String> =
            DAISY_CRATES.iter().map(|krate| format!("{krate}={level}")).collect();
        return EnvFilter::new(format!("warn,{}", directives.join(",")));
    }
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new("warn"),
    }
}
