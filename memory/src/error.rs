//! Why a memory operation failed: [`MemoryError`] for the caller's answer, [`StorageError`]
//! for the storage underneath, with [`StorageError::kind`] saying whether the disk is full,
//! unavailable, or something else failed.

use crate::disk::RESERVE_BYTES;
use crate::record::InputError;

/// Why a memory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The input was refused.
    #[error(transparent)]
    Input(#[from] InputError),
    /// No such record or consolidation.
    #[error("{0}")]
    NotFound(String),
    /// The namespace was never created.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    /// The caller lacks the capability.
    #[error("{0}")]
    Forbidden(String),
    /// The operation conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The embedding model failed.
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// The storage failed (full disk, I/O, corrupt data).
    #[error(transparent)]
    Store(#[from] StorageError),
}

/// Why memory's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data partition has too little free space for the write: refused before the write
    /// started, so reads keep working.
    #[error(
        "the data partition is full: {} MiB free, a write needs {} MiB plus a {} MiB reserve",
        free >> 20,
        need.div_ceil(1 << 20),
        RESERVE_BYTES >> 20
    )]
    NoSpace {
        /// Free bytes.
        free: u64,
        /// Bytes the write needs (besides the reserve).
        need: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] redb::Error),
    /// The write-ahead journal failed.
    #[error("memory journal: {0}")]
    Journal(#[source] std::io::Error),
    /// A stored value could not be decoded.
    #[error("corrupt {what}: {source}")]
    Decode {
        /// What it was (`memory record`, `namespace "shared"`, ...).
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A block of merged keyword postings is malformed.
    #[error(
        "corrupt keyword postings of {term:?} in {namespace:?} (segment {segment}, block {block})"
    )]
    CorruptPostings {
        /// The term.
        term: String,
        /// The namespace.
        namespace: String,
        /// The segment id.
        segment: u64,
        /// The block's first record id.
        block: u64,
    },
    /// A record's unmerged keyword postings are malformed.
    #[error("corrupt unmerged postings of record {0}")]
    CorruptPending(u64),
    /// The unmerged keyword postings kept changing under a search.
    #[error("the unmerged keyword postings did not settle")]
    Unsettled,
    /// The merge of the keyword postings into a segment failed (it is retried later).
    #[error("the merge of the keyword postings failed")]
    MergeFailed,
    /// The indexer thread could not be started.
    #[error("starting the memory indexer: {0}")]
    Indexer(#[source] std::io::Error),
    /// A thread panicked holding one of memory's locks.
    #[error("memory lock poisoned")]
    Poisoned,
}

/// What a [`StorageError`] means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The disk is full (the API answers 507).
    Full,
    /// The data partition is unavailable, e.g. read-only (the API answers 503).
    Unavailable,
    /// Anything else (the API answers 500).
    Failed,
}

impl StorageError {
    /// Whether the disk is full, unavailable, or something else failed.
    pub fn kind(&self) -> StorageKind {
        let io = match self {
            StorageError::NoSpace { .. } => return StorageKind::Full,
            StorageError::Database(redb::Error::Io(e)) | StorageError::Journal(e) => e,
            _ => return StorageKind::Failed,
        };
        match io.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StorageKind::Full
            }
            std::io::ErrorKind::ReadOnlyFilesystem => StorageKind::Unavailable,
            _ => StorageKind::Failed,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Database(e.into())
            }
        }
        impl From<$t> for MemoryError {
            fn from(e: $t) -> Self {
                MemoryError::Store(StorageError::Database(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::StorageError,
    redb::CommitError,
    redb::TransactionError,
    redb::TableError,
    redb::SetDurabilityError
);

/// A lock poisoned by a panicked thread.
pub(crate) fn poisoned() -> MemoryError {
    MemoryError::Store(StorageError::Poisoned)
}

/// A stored value `what` that failed to decode.
pub(crate) fn decode_error(what: impl Into<String>, source: serde_json::Error) -> MemoryError {
    MemoryError::Store(StorageError::Decode {
        what: what.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_read_only_disk_is_told_apart_from_other_failures() {
        let io = |k| std::io::Error::from(k);
        let full = StorageError::Database(
            redb::StorageError::Io(io(std::io::ErrorKind::StorageFull)).into(),
        );
        assert_eq!(full.kind(), StorageKind::Full);
        let journal = StorageError::Journal(io(std::io::ErrorKind::QuotaExceeded));
        assert_eq!(journal.kind(), StorageKind::Full);
        let ro = StorageError::Journal(io(std::io::ErrorKind::ReadOnlyFilesystem));
        assert_eq!(ro.kind(), StorageKind::Unavailable);
        let short = StorageError::NoSpace {
            free: 1 << 20,
            need: 3 << 20,
        };
        assert_eq!(short.kind(), StorageKind::Full);
        assert_eq!(
            short.to_string(),
            "the data partition is full: 1 MiB free, a write needs 3 MiB plus a 2 MiB reserve"
        );
        assert_eq!(StorageError::Poisoned.kind(), StorageKind::Failed);
    }
}
