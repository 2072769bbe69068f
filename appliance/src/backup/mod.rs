//! Whole-box backup and restore ([`docs/backup.md`](../../docs/backup.md)).
//!
//! A backup is one file: an `age` file (scrypt passphrase recipient) holding a tar archive, so
//! an operator can open it with the stock `age -d` and `tar` as well. The archive holds, in
//! order: `cairn-backup.json` (what made it, its schema version, when), the data directory's
//! files that make this box this box (the database snapshot `cairn.redb`, `router.key` that
//! seals the provider keys stored in it, `models.toml`, `etc/cairn.toml`, every agent's
//! `agents/files/…`, and with `tls` the TLS identity), and last `cairn-backup.sha256.json`
//! (size and SHA-256 of each file before it).
//!
//! The database snapshot is taken in one redb read transaction, so it is consistent at one
//! instant and includes every acknowledged write (also those whose durable commit is still
//! pending behind memory's journal); agent files are copied right after it.
//!
//! A restore is staged next to the live data (`restore.staged/`), checked completely
//! (decryption, every file's hash, the database's integrity and schema), and only then marked
//! ready; the appliance restarts and swaps it in before it opens anything ([`apply_staged`]).
//! Anything refused leaves the running box as it was.

mod archive;
mod restore;
mod snapshot;

pub use archive::{FORMAT, FileEntry, Manifest, create, unpack, unpack_plain};
pub use restore::{STAGED_DIR, WORK_DIR, apply_staged, check_database, clean_work, stage};

use std::path::PathBuf;

/// scrypt work factor (log2 N) backups are made with: 128 MiB and about half a second on a
/// small box to try one passphrase.
pub const WORK_FACTOR: u8 = 17;
/// Highest scrypt work factor a restore accepts (256 MiB): a file asking for more is refused
/// before any memory is spent on it.
pub const MAX_WORK_FACTOR: u8 = 18;
/// Shortest passphrase a backup is made with.
pub const MIN_PASSPHRASE: usize = 10;
/// Longest passphrase accepted.
pub const MAX_PASSPHRASE: usize = 1024;

/// Why a backup or restore failed. The running box and its data are unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The passphrase does not open the archive.
    #[error("wrong passphrase: the archive does not open with it")]
    WrongPassphrase,
    /// The passphrase is not acceptable for a new backup.
    #[error("{0}")]
    Passphrase(String),
    /// The file is not a Cairn backup at all.
    #[error("not a Cairn backup: {0}")]
    NotABackup(String),
    /// The archive is cut short, altered or inconsistent.
    #[error("the backup is damaged or incomplete: {0}")]
    Damaged(String),
    /// The backup comes from a Cairn whose data this one cannot read.
    #[error(
        "the backup was made by Cairn {made_by} with schema version {schema}; this Cairn reads up to {supported}"
    )]
    Newer {
        /// The version that made it.
        made_by: String,
        /// Its schema version.
        schema: u64,
        /// The newest schema this build reads.
        supported: u64,
    },
    /// The data partition is full (HTTP 507).
    #[error("the data partition is full: {0}")]
    Full(String),
    /// Another backup or restore is running.
    #[error("another backup or restore is running; try again when it has finished")]
    Busy,
    /// A file-system step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[source] Box<redb::Error>),
    /// The live database has a table backups do not know (a build defect, never skipped).
    #[error("table {0} is not covered by backups; refusing to make an incomplete one")]
    UnknownTable(String),
}

impl BackupError {
    /// An I/O failure while doing `what`, sorted into "disk full" when it is one.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BackupError {
        let what = what.into();
        match source.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                BackupError::Full(format!("{what}: {source}"))
            }
            _ => BackupError::Io { what, source },
        }
    }
}

impl From<redb::Error> for BackupError {
    fn from(e: redb::Error) -> Self {
        if let redb::Error::Io(io) = &e
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return BackupError::Full(e.to_string());
        }
        BackupError::Database(Box::new(e))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for BackupError {
            fn from(e: $t) -> Self {
                BackupError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What `create` needs from the running box.
pub struct Source<'a> {
    /// The live database.
    pub db: &'a redb::Database,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Include the TLS identity.
    pub tls: bool,
    /// The box's host name (recorded in the manifest).
    pub hostname: String,
}

/// Checks a passphrase for a new backup.
pub fn check_passphrase(p: &str) -> Result<(), BackupError> {
    let n = p.chars().count();
    if n < MIN_PASSPHRASE {
        return Err(BackupError::Passphrase(format!(
            "the passphrase must have at least {MIN_PASSPHRASE} characters"
        )));
    }
    if p.len() > MAX_PASSPHRASE {
        return Err(BackupError::Passphrase(format!(
            "the passphrase must have at most {MAX_PASSPHRASE} bytes"
        )));
    }
    Ok(())
}
