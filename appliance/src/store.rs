//! The appliance's persistent state: one redb database on the data partition.
//!
//! Every write the API acknowledges is committed with `Durability::Immediate` (fsync) before
//! the response. The `meta` table records the schema version; opening a database written by a
//! newer Cairn is refused rather than risked, and older ones are migrated forward in one
//! transaction. Table ownership: `meta` (this module), `settings` (settings API), `mem_*`
//! (the memory subsystem, `memory/tables.rs`), `router_*` (the model router, `router/ledger.rs`,
//! created by their first write); later issues add agents, runs and audit here.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// Schema version this code writes.
pub const SCHEMA_VERSION: u64 = 4;
/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "cairn.redb";

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// Why a store operation failed, in terms the API maps to status codes. Each failure keeps its
/// cause as a typed source, logged on the box; the client of a 500 sees a generic message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk is full (HTTP 507); the message says so.
    #[error("{0}")]
    Full(String),
    /// The data partition is unavailable (degraded mode, HTTP 503).
    #[error("the data partition is unavailable: {0}")]
    Unavailable(String),
    /// The database failed (HTTP 500).
    #[error("database error: {0}")]
    Database(#[source] Box<redb::Error>),
    /// The memory engine's storage failed (HTTP 500).
    #[error("memory storage error: {0}")]
    Memory(#[source] cairn_memory::StorageError),
    /// Migrating the memory tables to this schema failed (HTTP 500).
    #[error("migrating memory: {0}")]
    Migration(#[source] Box<cairn_memory::MemoryError>),
    /// The database was written by a newer Cairn; it is not opened (HTTP 500).
    #[error(
        "the database has schema version {found}, newer than this Cairn ({supported}); refusing to open it"
    )]
    NewerSchema {
        /// The version on disk.
        found: u64,
        /// The newest version this build writes.
        supported: u64,
    },
    /// The database file could not be opened or created (HTTP 500).
    #[error("opening {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<redb::Error>,
    },
    /// A file-system step around the database failed (HTTP 500).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A stored row could not be encoded or decoded (HTTP 500).
    #[error("stored row: {0}")]
    Encoding(#[from] serde_json::Error),
    /// A thread the store needs could not be started (HTTP 500).
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why the operating system refused.
        #[source]
        source: std::io::Error,
    },
}

/// Sorts a failure into full disk, read-only disk or `e` itself by its I/O cause.
fn by_cause(io: Option<std::io::ErrorKind>, e: StoreError) -> StoreError {
    match io {
        Some(std::io::ErrorKind::StorageFull) | Some(std::io::ErrorKind::QuotaExceeded) => {
            StoreError::Full(format!("the data partition is full: {e}"))
        }
        Some(std::io::ErrorKind::ReadOnlyFilesystem) => StoreError::Unavailable(e.to_string()),
        _ => e,
    }
}

impl StoreError {
    /// A file-system failure while doing `what`, sorted into full disk, read-only disk or
    /// [`StoreError::Io`].
    pub fn from_io(what: impl Into<String>, source: std::io::Error) -> StoreError {
        let kind = source.kind();
        by_cause(
            Some(kind),
            StoreError::Io {
                what: what.into(),
                source,
            },
        )
    }
}

/// Sorts a redb failure into full disk, read-only disk or a database error by its I/O cause.
pub(crate) fn classify(e: impl Into<redb::Error>, io: Option<std::io::ErrorKind>) -> StoreError {
    by_cause(io, StoreError::Database(Box::new(e.into())))
}

fn io_of_storage(e: &redb::StorageError) -> Option<std::io::ErrorKind> {
    match e {
        redb::StorageError::Io(io) => Some(io.kind()),
        _ => None,
    }
}

impl From<cairn_memory::StorageError> for StoreError {
    fn from(e: cairn_memory::StorageError) -> Self {
        use cairn_memory::StorageKind;
        match e.kind() {
            StorageKind::Full => StoreError::Full(e.to_string()),
            StorageKind::Unavailable => StoreError::Unavailable(e.to_string()),
            StorageKind::Failed => StoreError::Memory(e),
        }
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        let io = io_of_storage(&e);
        classify(e, io)
    }
}
impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        let io = match &e {
            redb::CommitError::Storage(s) => io_of_storage(s),
            _ => None,
        };
        classify(e, io)
    }
}
impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        let io = match &e {
            redb::TransactionError::Storage(s) => io_of_storage(s),
            _ => None,
        };
        classify(e, io)
    }
}
impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        let io = match &e {
            redb::TableError::Storage(s) => io_of_storage(s),
            _ => None,
        };
        classify(e, io)
    }
}

pub use cairn_memory::{RESERVE_BYTES, free_bytes};

/// See [`Store::ensure_space`].
pub fn ensure_space(path: &Path, need: u64) -> Result<(), StoreError> {
    Ok(cairn_memory::ensure_space(path, need)?)
}

/// The open database.
pub struct Store {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database in `dir`, migrating it to [`SCHEMA_VERSION`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            by_cause(
                Some(e.kind()),
                StoreError::Io {
                    what: format!("creating {}", dir.display()),
                    source: e,
                },
            )
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(32 << 20)
            .create(&path)
            .map_err(|e| {
                let io = match &e {
                    redb::DatabaseError::Storage(s) => io_of_storage(s),
                    _ => None,
                };
                by_cause(
                    io,
                    StoreError::Open {
                        path: path.clone(),
                        source: Box::new(e.into()),
                    },
                )
            })?;
        let store = Store {
            db: std::sync::Arc::new(db),
            path,
        };
        store.migrate()?;
        Ok(store)
    }

    /// The database, shared with the subsystems that own tables in it (memory).
    pub fn database(&self) -> std::sync::Arc<Database> {
        self.db.clone()
    }

    /// Refuses a write (as [`StoreError::Full`], HTTP 507) when the data partition has less
    /// than [`RESERVE_BYTES`] plus `need` bytes free. redb latches the first failed write and
    /// then fails every later read until reopened, so a full disk must be refused before the
    /// write starts, keeping reads working.
    pub fn ensure_space(&self, need: u64) -> Result<(), StoreError> {
        ensure_space(&self.path, need)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<(), StoreError> {
        // A read first: an up-to-date database needs no write (and no fsync) at start-up.
        if self.schema_version()? == SCHEMA_VERSION {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            // Forward migrations run here in order: 0 -> 1 creates the settings table,
            // 1 -> 2 the memory tables, 2 -> 3 moved keyword postings into blocks, 3 -> 4 moves
            // them into segments (a schema 2 store goes straight to segments).
            if found < 1 {
                txn.open_table(SETTINGS)?;
            }
            if found < 4 {
                crate::memory::migrate(&txn, found)
                    .map_err(|e| StoreError::Migration(Box::new(e)))?;
            }
            meta.insert("schema_version", SCHEMA_VERSION)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The schema version on disk (0 for a new database).
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        Ok(meta.get("schema_version")?.map(|v| v.value()).unwrap_or(0))
    }

    /// All settings, as stored JSON text.
    pub fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SETTINGS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// One setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SETTINGS)?;
        Ok(t.get(key)?.map(|v| v.value().to_string()))
    }

    /// Stores a setting durably (returns after fsync).
    pub fn put_setting(&self, key: &str, json: &str) -> Result<(), StoreError> {
        self.ensure_space(4 * (key.len() + json.len()) as u64)?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(SETTINGS)?;
            t.insert(key, json)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes a setting durably; returns whether it existed.
    pub fn delete_setting(&self, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut t = txn.open_table(SETTINGS)?;
            t.remove(key)?.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_setting("greeting", "\"hello\"").unwrap();
            s.put_setting("n", "3").unwrap();
            assert!(s.delete_setting("n").unwrap());
            assert!(!s.delete_setting("n").unwrap());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.setting("greeting").unwrap().as_deref(), Some("\"hello\""));
        assert_eq!(s.settings().unwrap().len(), 1);
    }

    #[test]
    fn version_1_database_migrates_to_memory_tables_keeping_settings() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What Cairn with schema 1 wrote.
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            txn.open_table(SETTINGS)
                .unwrap()
                .insert("k", "\"v\"")
                .unwrap();
            txn.commit().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.setting("k").unwrap().as_deref(), Some("\"v\""));
        let m = crate::memory::Memory::open_database(s.database(), s.path(), None).unwrap();
        let ns = m.namespaces(&crate::memory::Access::admin()).unwrap();
        assert!(ns.contains_key("shared"), "{ns:?}");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let txn = s.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 99)
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![0x42u8; 8192]).unwrap();
        assert!(Store::open(dir.path()).is_err());
    }
}
