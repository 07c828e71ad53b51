//! The storage crate's error type: failures that stop the node (IO, corruption).
//!
//! Request-level outcomes that clients cause (a compacted revision, a missing key for
//! `ignore_value`...) are not errors here: see [`crate::mvcc::RequestError`].

use std::path::PathBuf;

/// A fatal storage failure. The node logs it and stops; it never retries blindly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An IO call on a WAL file or directory failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A WAL record failed its checks (CRC, length, type, decoding) outside the repairable
    /// tail of the last segment.
    #[error("corrupt WAL record in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the record's start within the file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The WAL directory holds segment files that do not follow each other.
    #[error("WAL segments out of order in {dir}: {reason}")]
    SegmentSequence {
        /// The WAL directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// fjall (the MVCC store) failed.
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    /// The MVCC store could not be opened: fjall found a damaged table (its block checksums)
    /// or journal, or a file is missing or unreadable. Names the store's directory (fjall's
    /// errors name no file).
    #[error("cannot open the MVCC store in {path}: {source}")]
    StoreOpen {
        /// The member directory holding the store.
        path: PathBuf,
        /// What failed.
        source: Box<Error>,
    },
    /// fjall did not flush the store's memtables to tables in the time allowed (a flush
    /// failed, or its workers stopped); what they hold is still in fjall's journal.
    #[error("the MVCC store's memtables were not flushed within {0:?}")]
    FlushTimeout(std::time::Duration),
    /// A stored value in the MVCC store could not be decoded: the store is corrupt.
    #[error("corrupt MVCC store: {0}")]
    CorruptStore(String),
}

impl Error {
    /// Whether this is the OS's "No space left on device" (`ENOSPC`) from a write: the member
    /// raises etcd's NOSPACE alarm before it stops (`docs/durability.md`).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.raw_os_error() == Some(28),
            Error::Fjall(fjall::Error::Io(e)) => e.raw_os_error() == Some(28),
            Error::StoreOpen { source, .. } => source.is_no_space(),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with the storage [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
