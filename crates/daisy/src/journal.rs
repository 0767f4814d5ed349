//! The journal of an in-process run: an append-only file of recorded
//! events (the same encoding as the NATS event stream), so a run that was
//! killed resumes where it stopped.
//!
//! Format: records of `[u32 little-endian length][encoded Event]`. A record
//! is appended with one `write` call after every batch of outcomes, so a
//! killed process loses at most the batch being written; a torn last record
//! is detected on open and cut off. Writes are not fsynced: the journal
//! survives the process dying, not the machine losing power.
//!
//! The first record of every session is `RunStarted` with the pipeline's
//! layout hash; opening a journal whose recorded layout differs is refused,
//! because recorded block indices would name other blocks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use daisy_proto::{Event, decode, encode};
use tracing::warn;

/// The file name of the journal inside a run directory.
pub const JOURNAL_FILE: &str = "journal";

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read or written.
    #[error("journal {path}: {source}")]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error(
        "journal {path} is in use by another daisy run; wait for it to finish, or give this run \
         another --run-id"
    )]
    Locked {
        /// The journal file.
        path: PathBuf,
    },
    /// The pipeline's block layout changed since the journal was written.
    #[error(
        "the pipeline's block layout changed since this run was recorded in {path} (layout {recorded}, \
         now {current}): its recorded blocks would map onto other blocks. Run with --fresh to start \
         over (the recorded outcomes are discarded), or give the changed pipeline another --run-id"
    )]
    LayoutChanged {
        /// The journal file.
        path: PathBuf,
        /// The layout hash recorded.
        recorded: String,
        /// The layout hash of the pipeline now.
        current: String,
    },
}

/// An open journal, locked for this process.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    buffer: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal in `run_dir`, checks that it was
    /// recorded for the same layout, and returns it with every event
    /// recorded so far. With `fresh`, earlier records are discarded.
    ///
    /// # Errors
    /// [`JournalError`]: I/O, a lock held by another run, a changed layout.
    pub fn open(
        run_dir: &Path,
        layout_hash: &str,
        fresh: bool,
    ) -> Result<(Self, Vec<Event>), JournalError> {
        let path = run_dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io { path: path.clone(), source };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { path }),
            Err(std::fs::TryLockError::Error(err)) => return Err(io(err)),
        }
        if fresh {
            file.set_len(0).map_err(io)?;
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_to_end(&mut bytes).map_err(io)?;
        let (events, good_len) = parse_records(&bytes, &path);
        if good_len < bytes.len() {
            warn!(path = %path.display(), kept_bytes = good_len, dropped_bytes = bytes.len() - good_len, "journal ends in a torn record, cutting it off");
            file.set_len(good_len as u64).map_err(io)?;
        }
        for event in &events {
            if let Event::RunStarted { layout_hash: recorded, .. } = event
                && recorded != layout_hash
            {
                return Err(JournalError::LayoutChanged {
                    path,
                    recorded: recorded.clone(),
                    current: layout_hash.to_owned(),
                });
            }
        }
        Ok((Self { file, path, buffer: Vec::new() }, events))
    }

    /// Appends one event with a single write.
    ///
    /// # Errors
    /// The write failed (disk full, ...).
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let body = encode(event);
        self.buffer.clear();
        let length = u32::try_from(body.len()).map_err(|_| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("event larger than 4 GiB"),
        })?;
        self.buffer.extend_from_slice(&length.to_le_bytes());
        self.buffer.extend_from_slice(&body);
        self.file
            .write_all(&self.buffer)
            .map_err(|source| JournalError::Io { path: self.path.clone(), source })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every whole, decodable record; returns them and the byte length
/// they span. Stops at a torn or undecodable record.
fn parse_records(bytes: &[u8], path: &Path) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut offset = 0;
    while bytes.len() - offset >= 4 {
        let length = u32::from_le_bytes(
            bytes[offset..offset + 4].try_into().expect("four bytes were checked"),
        ) as usize;
        let Some(body) = bytes.get(offset + 4..offset + 4 + length) else { break };
        match decode::<Event>(body) {
            Ok(event) => events.push(event),
            Err(err) => {
                warn!(path = %path.display(), offset, error = %err, "undecodable journal record, ignoring it and what follows");
                break;
            }
        }
        offset += 4 + length;
    }
    (events, offset)
}

/// Reads a journal without locking it (for status and tests).
///
/// # Errors
/// The file cannot be read.
pub fn read_journal(run_dir: &Path) -> Result<Vec<Event>, JournalError> {
    let path = run_dir.join(JOURNAL_FILE);
    let bytes =
        std::fs::read(&path).map_err(|source| JournalError::Io { path: path.clone(), source })?;
    Ok(parse_records(&bytes, &path).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(hash: &str) -> Event {
        Event::RunStarted { layout_hash: hash.into(), unix_ms: 1, epoch: 0 }
    }

    #[test]
    fn records_survive_reopening_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, events) = Journal::open(dir.path(), "h", false).unwrap();
            assert!(events.is_empty());
            journal.append(&started("h")).unwrap();
            journal
                .append(&Event::TaskAbandoned { task: "a".into(), reason: "r".into(), epoch: 0 })
                .unwrap();
        }
        // A torn record: a length with half a body.
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let (_journal, events) = Journal::open(dir.path(), "h", false).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(read_journal(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_changed_layout_is_refused_unless_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path(), "old", false).unwrap();
        journal.append(&started("old")).unwrap();
        drop(journal);
        assert!(matches!(
            Journal::open(dir.path(), "new", false),
            Err(JournalError::LayoutChanged { .. })
        ));
        let (_journal, events) = Journal::open(dir.path(), "new", true).unwrap();
        assert!(events.is_empty());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Journal::open(dir.path(), "h", false).unwrap();
        assert!(matches!(Journal::open(dir.path(), "h", false), Err(JournalError::Locked { .. })));
    }
}
