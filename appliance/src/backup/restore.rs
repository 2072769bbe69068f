//! Restoring: a checked backup is staged in `restore.staged/` on the data partition and marked
//! `READY`; at the next start, before the store opens, [`apply_staged`] moves each staged item
//! over the live one. Every step can be repeated after a power cut: an item still in the
//! staging directory has not been moved yet, and the marker goes last.

use super::{BackupError, FileEntry, Manifest};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The staged restore, inside the data directory.
pub const STAGED_DIR: &str = "restore.staged";
/// Scratch space of backups and restores being made, inside the data directory.
pub const WORK_DIR: &str = "backup.work";
/// The marker that makes a staged restore complete (it holds the manifest).
const READY: &str = "READY";

/// What is replaced as a whole, in this order; a staged backup always has the database and
/// `agents/files` (empty when the box it came from had no agent files).
const ITEMS: &[&str] = &[
    "agents/files",
    "router.key",
    "models.toml",
    "etc/cairn.toml",
    "tls",
    crate::store::FILE_NAME,
];

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |e| BackupError::io(what, e)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes what an interrupted backup or an unfinished staging left behind.
pub fn clean_work(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(data_dir.join(WORK_DIR));
    let staged = data_dir.join(STAGED_DIR);
    if staged.exists() && !staged.join(READY).exists() {
        let _ = std::fs::remove_dir_all(&staged);
    }
}

/// Decrypts and checks the backup from `input` and stages it for the next start. Nothing of
/// the live data is touched; on any error the staging directory is removed again.
pub fn stage(
    data_dir: &Path,
    input: impl Read,
    passphrase: &str,
) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
    let staged = data_dir.join(STAGED_DIR);
    let _ = std::fs::remove_dir_all(&staged);
    std::fs::create_dir_all(&staged).map_err(io(format!("creating {}", staged.display())))?;
    let result = stage_into(&staged, input, passphrase);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    result
}

fn stage_into(
    staged: &Path,
    input: impl Read,
    passphrase: &str,
) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
    let free = || crate::store::free_bytes(staged);
    let (manifest, files) = super::archive::unpack(input, passphrase, staged, &free)?;
    check_database(&staged.join(crate::store::FILE_NAME))?;
    let agent_files = staged.join("agents").join("files");
    std::fs::create_dir_all(&agent_files)
        .map_err(io(format!("creating {}", agent_files.display())))?;
    let marker = staged.join(READY);
    let mut f = std::fs::File::create(&marker).map_err(io("writing the restore marker"))?;
    f.write_all(&serde_json::to_vec(&manifest).unwrap_or_default())
        .and_then(|()| f.sync_all())
        .map_err(io("writing the restore marker"))?;
    sync_dir(staged);
    Ok((manifest, files))
}

/// Opens the staged database, checks its integrity and its schema version. A database file
/// that makes redb panic is reported as damaged, like one it refuses.
pub fn check_database(path: &Path) -> Result<(), BackupError> {
    std::panic::catch_unwind(|| check_database_inner(path)).unwrap_or_else(|_| {
        Err(BackupError::Damaged(
            "its database is damaged (reading it failed)".into(),
        ))
    })
}

fn check_database_inner(path: &Path) -> Result<(), BackupError> {
    use redb::ReadableDatabase;
    let mut db = redb::Database::open(path)
        .map_err(|e| BackupError::Damaged(format!("its database does not open: {e}")))?;
    if !db
        .check_integrity()
        .map_err(|e| BackupError::Damaged(format!("its database is damaged: {e}")))?
    {
        return Err(BackupError::Damaged(
            "its database needed repair; refusing it".into(),
        ));
    }
    let r = db.begin_read()?;
    let schema = match r.open_table(crate::store::META) {
        Ok(t) => t.get("schema_version")?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    match schema {
        None => Err(BackupError::Damaged(
            "its database has no schema version".into(),
        )),
        Some(v) if v > crate::store::SCHEMA_VERSION => Err(BackupError::Newer {
            made_by: "a newer Cairn".into(),
            schema: v,
            supported: crate::store::SCHEMA_VERSION,
        }),
        Some(_) => Ok(()),
    }
}

/// Moves a staged restore into place, if one is ready; returns its manifest. Called at start,
/// before anything opens the data directory. An unfinished staging is removed.
pub fn apply_staged(data_dir: &Path) -> Result<Option<Manifest>, BackupError> {
    let staged = data_dir.join(STAGED_DIR);
    let marker = staged.join(READY);
    let manifest = match std::fs::read(&marker) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| BackupError::Damaged(format!("the restore marker: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            clean_work(data_dir);
            return Ok(None);
        }
        Err(e) => return Err(BackupError::io("reading the restore marker", e)),
    };
    // What belongs to the box being replaced goes first: memory's journal (its entries must
    // never be replayed into the restored database) and a network change still on probation
    // (its rollback would put the replaced box's settings back over the restored ones).
    let leftovers = [
        data_dir
            .join(crate::store::FILE_NAME)
            .with_extension("journal"),
        data_dir.join("etc").join("cairn.toml.revert"),
    ];
    for path in leftovers {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io(format!("removing {}", path.display()), e)),
        }
    }
    for item in ITEMS {
        let from = staged.join(item);
        if !from.exists() {
            continue;
        }
        let to: PathBuf = data_dir.join(item);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        if to.is_dir() {
            std::fs::remove_dir_all(&to).map_err(io(format!("removing {}", to.display())))?;
        }
        std::fs::rename(&from, &to).map_err(io(format!(
            "moving {} to {}",
            from.display(),
            to.display()
        )))?;
        if let Some(parent) = to.parent() {
            sync_dir(parent);
        }
    }
    sync_dir(data_dir);
    std::fs::remove_file(&marker).map_err(io("removing the restore marker"))?;
    let _ = std::fs::remove_dir_all(&staged);
    sync_dir(data_dir);
    Ok(Some(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::{Source, create};

    /// A backup of a store holding `setting`, as bytes.
    fn backup_of(dir: &Path, setting: &str) -> Vec<u8> {
        let data = dir.join("source");
        let store = crate::store::Store::open(&data).unwrap();
        store.put_setting("site", setting).unwrap();
        std::fs::create_dir_all(data.join("agents/files/echo")).unwrap();
        std::fs::write(data.join("agents/files/echo/a.txt"), setting).unwrap();
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let src = Source {
            db: &store.database(),
            data_dir: data,
            tls: false,
            hostname: "a".into(),
        };
        let mut out = Vec::new();
        create(&src, "passphrase!", &work, &mut out).unwrap();
        out
    }

    #[test]
    fn a_staged_restore_is_applied_at_start_even_after_a_cut_midway() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_of(dir.path(), "from the backup");
        let live = dir.path().join("live");
        {
            let store = crate::store::Store::open(&live).unwrap();
            store.put_setting("site", "live").unwrap();
        }
        std::fs::create_dir_all(live.join("agents/files/old")).unwrap();
        std::fs::write(live.join("agents/files/old/x"), "old").unwrap();
        std::fs::write(live.join("cairn.journal"), "entries of the old database").unwrap();
        std::fs::create_dir_all(live.join("etc")).unwrap();
        std::fs::write(live.join("etc/cairn.toml.revert"), "hostname = \"old\"\n").unwrap();
        // A refused restore leaves nothing behind.
        assert!(stage(&live, &file[..file.len() / 2], "passphrase!").is_err());
        assert!(!live.join(STAGED_DIR).exists());
        stage(&live, &file[..], "passphrase!").unwrap();
        // The live data is untouched until the next start.
        let store = crate::store::Store::open(&live).unwrap();
        assert_eq!(store.setting("site").unwrap().as_deref(), Some("live"));
        drop(store);
        // A cut after the first item moved: the next start finishes the job.
        std::fs::remove_dir_all(live.join("agents/files")).unwrap();
        std::fs::rename(
            live.join(STAGED_DIR).join("agents/files"),
            live.join("agents/files"),
        )
        .unwrap();
        let applied = apply_staged(&live).unwrap().expect("a staged restore");
        assert_eq!(applied.hostname, "a");
        assert!(!live.join(STAGED_DIR).exists());
        assert!(!live.join("cairn.journal").exists());
        assert!(!live.join("etc/cairn.toml.revert").exists());
        assert!(!live.join("agents/files/old").exists());
        assert_eq!(
            std::fs::read_to_string(live.join("agents/files/echo/a.txt")).unwrap(),
            "from the backup"
        );
        let store = crate::store::Store::open(&live).unwrap();
        assert_eq!(
            store.setting("site").unwrap().as_deref(),
            Some("from the backup")
        );
        drop(store);
        assert!(apply_staged(&live).unwrap().is_none(), "applied twice");
    }
}
