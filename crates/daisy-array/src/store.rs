//! Stores zarr keys as files under one directory, replacing each file
//! atomically and without `fsync`.
//!
//! zarrs' own `FilesystemStore` rewrites a chunk file in place (truncate, then
//! write) and calls `fsync` after every write. The first lets a reader in
//! another process see a half-written chunk; the second costs 0.2–1.5 ms per
//! chunk on this machine (more than the rest of a 128 KiB block write under
//! load), and it keeps one lock entry per key ever touched, which grows without
//! bound over a run of 10^9 chunks. This store writes a temporary file next to
//! the target and renames it over the target: readers see the old chunk or the
//! new one, never a mix. It keeps no per-key state and takes no lock.
//!
//! Durability is that of the page cache, as with zarr-python: a killed process
//! loses nothing it wrote, a power loss may lose recent chunks.
//!
//! Temporary files are named `.<name>.<pid>.<n>.tmp` in the chunk's directory;
//! zarr readers ignore them (they are not chunk keys). One left behind by a
//! crash mid-write is harmless and may be deleted.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use zarrs::storage::byte_range::{ByteRange, ByteRangeIterator, InvalidByteRangeError};
use zarrs::storage::{
    Bytes, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator, ReadableStorageTraits,
    StorageError, StoreKey, StorePrefix, WritableStorageTraits,
};

/// Distinguishes temporary files of concurrent writes within one process.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// A zarr store rooted at one directory (see the module docs).
#[derive(Debug)]
pub(crate) struct DirectoryStore {
    root: PathBuf,
    /// This process's id, part of temporary file names.
    process_id: u32,
}

impl DirectoryStore {
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), process_id: std::process::id() }
    }

    fn key_path(&self, key: &StoreKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Reads a whole value; `None` if the key does not exist.
    fn read(&self, key: &StoreKey) -> Result<Option<Bytes>, StorageError> {
        match fs::read(self.key_path(key)) {
            Ok(value) => Ok(Some(Bytes::from(value))),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(error)),
        }
    }
}

fn io_error(error: std::io::Error) -> StorageError {
    StorageError::IOError(Arc::new(error))
}

/// Writes `value` to `path` through a temporary file and a rename.
fn replace_file(path: &Path, process_id: u32, value: &[u8]) -> Result<(), StorageError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(StorageError::Other(format!(
            "store path {} has no parent directory or file name",
            path.display()
        )));
    };
    let temporary = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        process_id,
        NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = match fs::File::create(&temporary) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_error)?;
            fs::File::create(&temporary).map_err(io_error)?
        }
        Err(error) => return Err(io_error(error)),
    };
    let written = file.write_all(value).and_then(|()| fs::rename(&temporary, path));
    if let Err(error) = written {
        // Best effort: the write already failed, and a stray temporary file
        // is harmless (see the module docs).
        let _ = fs::remove_file(&temporary);
        return Err(io_error(error));
    }
    Ok(())
}

impl ReadableStorageTraits for DirectoryStore {
    fn get(&self, key: &StoreKey) -> Result<MaybeBytes, StorageError> {
        self.read(key)
    }

    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        // Chunks are small enough (one block's worth) to read whole; slicing
        // the ranges out of one read beats a syscall per range.
        let Some(value) = self.read(key)? else {
            return Ok(None);
        };
        let size = value.len() as u64;
        let slices = byte_ranges.map(move |byte_range: ByteRange| {
            let (start, end) = match byte_range {
                ByteRange::FromStart(offset, length) => {
                    (offset, length.map_or(size, |length| offset.saturating_add(length)))
                }
                ByteRange::Suffix(length) => (size.saturating_sub(length), size),
            };
            if start > end || end > size || matches!(byte_range, ByteRange::Suffix(l) if l > size) {
                return Err(InvalidByteRangeError::new(byte_range, size).into());
            }
            Ok(value.slice(start as usize..end as usize))
        });
        Ok(Some(Box::new(slices)))
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        match fs::metadata(self.key_path(key)) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(error)),
        }
    }

    fn supports_get_partial(&self) -> bool {
        true
    }
}

impl WritableStorageTraits for DirectoryStore {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        replace_file(&self.key_path(key), self.process_id, &value)
    }

    /// Patches a value by rewriting it whole (zarrs only calls this when
    /// `supports_set_partial` is true, which it is not; kept correct anyway).
    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        let mut value = self.read(key)?.map(Vec::from).unwrap_or_default();
        for (offset, patch) in offset_values {
            let start = usize::try_from(offset)
                .map_err(|_| StorageError::Other(format!("offset {offset} exceeds usize")))?;
            let end = start + patch.len();
            if value.len() < end {
                value.resize(end, 0);
            }
            value[start..end].copy_from_slice(&patch);
        }
        replace_file(&self.key_path(key), self.process_id, &value)
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        match fs::remove_file(self.key_path(key)) {
            Err(error) if error.kind() != ErrorKind::NotFound => Err(io_error(error)),
            _ => Ok(()),
        }
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        match fs::remove_dir_all(self.root.join(prefix.as_str())) {
            Err(error) if error.kind() != ErrorKind::NotFound => Err(io_error(error)),
            _ => Ok(()),
        }
    }

    fn supports_set_partial(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_ranges_and_erase() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = DirectoryStore::new(dir.path());
        let key = StoreKey::new("c/0/1")?;
        assert_eq!(store.get(&key)?, None);
        store.set(&key, Bytes::from_static(b"0123456789"))?;
        assert_eq!(store.size_key(&key)?, Some(10));
        let ranges: Vec<ByteRange> = vec![
            ByteRange::FromStart(2, Some(3)),
            ByteRange::Suffix(2),
            ByteRange::FromStart(8, None),
        ];
        let parts: Vec<Bytes> = store
            .get_partial_many(&key, Box::new(ranges.into_iter()))?
            .expect("the key exists")
            .collect::<Result<_, _>>()?;
        assert_eq!(parts, vec![&b"234"[..], &b"89"[..], &b"89"[..]]);
        let too_long = store.get_partial(&key, ByteRange::FromStart(8, Some(3)));
        assert!(matches!(too_long, Err(StorageError::InvalidByteRangeError(_))));

        store.set_partial(&key, 8, Bytes::from_static(b"xyz"))?;
        assert_eq!(store.get(&key)?, Some(Bytes::from_static(b"01234567xyz")));
        store.erase(&key)?;
        store.erase(&key)?;
        assert_eq!(store.get(&key)?, None);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path().join("c/0"))?.count(), 0);
        Ok(())
    }
}
