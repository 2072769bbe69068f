//! The backup file: writing it ([`create`]) and reading it into a staging directory
//! ([`unpack`]), which is the parser of outside input here (fuzzed by `fuzz/fuzz_targets/
//! backup_archive.rs`). Reading is bounded: the manifest and file list in size, the number of
//! files, each path's shape and length, and the bytes written (by the free space of the data
//! partition, checked before each file).

use super::{BackupError, MAX_WORK_FACTOR, Source, WORK_FACTOR};
use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Version of the archive layout this build writes and reads.
pub const FORMAT: u32 = 1;
/// The first entry: what made the archive.
pub const MANIFEST: &str = "cairn-backup.json";
/// The last entry: size and SHA-256 of every file in between.
pub const FILE_LIST: &str = "cairn-backup.sha256.json";
/// Largest manifest or file list read.
const MAX_META: u64 = 4 << 20;
/// Most files an archive may hold.
const MAX_FILES: usize = 100_000;
/// Longest path inside an archive.
const MAX_PATH: usize = 1024;
/// Space left free on the data partition while a restore is staged.
const RESERVE: u64 = 64 << 20;

/// The first entry of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Archive layout version ([`FORMAT`]).
    pub format: u32,
    /// The Cairn version that made it.
    pub cairn: String,
    /// The database schema version of the snapshot.
    pub schema: u64,
    /// When it was made (Unix seconds).
    pub created: u64,
    /// The host name of the box it was made on.
    pub hostname: String,
    /// The architecture of the box it was made on (informational: the data is portable).
    pub arch: String,
    /// Whether it holds the TLS identity.
    pub tls: bool,
}

/// One file of a backup, as listed in the last entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the data directory.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileList {
    files: Vec<FileEntry>,
}

/// Whether `path` (relative, `/`-separated) is a file a backup may carry.
pub fn allowed_path(path: &str) -> bool {
    if path.len() > MAX_PATH || path.contains('\\') || path.contains('\0') {
        return false;
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return false;
    }
    match parts.as_slice() {
        [crate::store::FILE_NAME] | ["router.key"] | ["models.toml"] => true,
        ["etc", "cairn.toml"] | ["tls", "cert.pem"] | ["tls", "key.pem"] => true,
        ["agents", "files", _agent, _rest @ ..] => parts.len() >= 4,
        _ => false,
    }
}

/// Writes `data` as a tar entry at `path` with fixed owner, mode and time.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mtime: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// Reads exactly `size` bytes from `inner` while hashing them; fewer is an error (a file that
/// shrank while it was read).
struct Hashing<R> {
    inner: R,
    left: u64,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being read",
            ));
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// The files of `src` a backup carries (relative path, where it is now), the database
/// snapshot (already written to `snapshot`) first.
fn files_of(src: &Source<'_>, snapshot: &Path) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let d = &src.data_dir;
    let mut out = vec![(crate::store::FILE_NAME.to_string(), snapshot.to_path_buf())];
    let mut singles = vec!["router.key", "models.toml", "etc/cairn.toml"];
    if src.tls {
        singles.extend(["tls/cert.pem", "tls/key.pem"]);
    }
    for rel in singles {
        let p = d.join(rel);
        if p.is_file() {
            out.push((rel.to_string(), p));
        }
    }
    let files = d.join("agents").join("files");
    let mut stack = vec![files.clone()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackupError::io(format!("reading {}", dir.display()), e)),
        };
        for e in rd {
            let e = e.map_err(|e| BackupError::io(format!("reading {}", dir.display()), e))?;
            let ty = e
                .file_type()
                .map_err(|err| BackupError::io(format!("reading {}", e.path().display()), err))?;
            // Links are never followed out of an agent's directory.
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(d)
                    .ok()
                    .and_then(|r| r.to_str())
                    .map(str::to_string);
                match rel {
                    Some(rel) if allowed_path(&rel) => found.push((rel, e.path())),
                    _ => tracing::warn!(
                        "backup: skipping {} (its name cannot be carried)",
                        e.path().display()
                    ),
                }
            }
        }
    }
    found.sort();
    out.extend(found);
    Ok(out)
}

/// Writes a backup of `src` to `out`, encrypted to `passphrase`; `work` is an empty directory
/// on the data partition for the database snapshot. Returns the manifest.
pub fn create(
    src: &Source<'_>,
    passphrase: &str,
    work: &Path,
    out: impl Write,
) -> Result<Manifest, BackupError> {
    super::check_passphrase(passphrase)?;
    let snap = work.join("snapshot.redb");
    let rows = super::snapshot::snapshot(src.db, &snap)?;
    tracing::info!("backup: database snapshot of {rows} rows");
    let manifest = Manifest {
        format: FORMAT,
        cairn: env!("CARGO_PKG_VERSION").to_string(),
        schema: crate::store::SCHEMA_VERSION,
        created: crate::auth::unix_now(),
        hostname: src.hostname.clone(),
        arch: std::env::consts::ARCH.to_string(),
        tls: src.tls,
    };
    let mut recipient = age::scrypt::Recipient::new(SecretString::from(passphrase.to_string()));
    recipient.set_work_factor(WORK_FACTOR);
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as _))
        .map_err(|e| BackupError::Passphrase(e.to_string()))?;
    let w = |e: io::Error| BackupError::io("writing the backup", e);
    let sealed = encryptor.wrap_output(out).map_err(w)?;
    let mut tar = tar::Builder::new(sealed);
    let head = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    append(
        &mut tar,
        MANIFEST,
        head.len() as u64,
        manifest.created,
        &head[..],
    )
    .map_err(w)?;
    let mut list = Vec::new();
    for (rel, path) in files_of(src, &snap)? {
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            // An agent file deleted since it was listed is not part of the box any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackupError::io(format!("opening {}", path.display()), e)),
        };
        let size = f
            .metadata()
            .map_err(|e| BackupError::io(format!("reading {}", path.display()), e))?
            .len();
        let mut r = Hashing {
            inner: f,
            left: size,
            hash: Sha256::new(),
        };
        append(&mut tar, &rel, size, manifest.created, &mut r)
            .map_err(|e| BackupError::io(format!("archiving {}", path.display()), e))?;
        list.push(FileEntry {
            path: rel,
            size,
            sha256: hex::encode(r.hash.finalize()),
        });
    }
    let tail = serde_json::to_vec_pretty(&FileList { files: list }).unwrap_or_default();
    append(
        &mut tar,
        FILE_LIST,
        tail.len() as u64,
        manifest.created,
        &tail[..],
    )
    .map_err(w)?;
    let sealed = tar.into_inner().map_err(w)?;
    let mut out = sealed.finish().map_err(w)?;
    out.flush().map_err(w)?;
    Ok(manifest)
}

/// Maps a read failure inside the archive to what it means.
fn damaged(e: io::Error) -> BackupError {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            BackupError::Full(e.to_string())
        }
        io::ErrorKind::UnexpectedEof => BackupError::Damaged("it ends early (cut short)".into()),
        _ => BackupError::Damaged(e.to_string()),
    }
}

fn read_meta<R: Read>(entry: R, what: &str) -> Result<Vec<u8>, BackupError> {
    let mut buf = Vec::new();
    entry
        .take(MAX_META + 1)
        .read_to_end(&mut buf)
        .map_err(damaged)?;
    if buf.len() as u64 > MAX_META {
        return Err(BackupError::Damaged(format!("its {what} is too large")));
    }
    Ok(buf)
}

/// Decrypts and checks the backup read from `input` into `staging` (an empty directory; the
/// caller removes it on error). `free` says how many bytes the staging directory's file
/// system has free. Every file is checked against the archive's list before this returns.
/// The decrypted tar stream is read by [`unpack_plain`].
pub fn unpack(
    input: impl Read,
    passphrase: &str,
    staging: &Path,
    free: &dyn Fn() -> Option<u64>,
) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
    let decryptor = match age::Decryptor::new(io::BufReader::new(input)) {
        Ok(d) => d,
        Err(age::DecryptError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(BackupError::NotABackup(
                "the file is empty or ends inside its header".into(),
            ));
        }
        Err(age::DecryptError::Io(e)) => return Err(damaged(e)),
        Err(e) => {
            return Err(BackupError::NotABackup(format!(
                "it is not an age-encrypted file ({e})"
            )));
        }
    };
    if !decryptor.is_scrypt() {
        return Err(BackupError::NotABackup(
            "it is encrypted to a key, not to a passphrase".into(),
        ));
    }
    let mut identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_string()));
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let plain = match decryptor.decrypt(std::iter::once(&identity as _)) {
        Ok(r) => r,
        Err(age::DecryptError::ExcessiveWork { required, .. }) => {
            return Err(BackupError::NotABackup(format!(
                "its passphrase needs scrypt work factor {required}, more than the {MAX_WORK_FACTOR} a Cairn backup uses"
            )));
        }
        Err(age::DecryptError::DecryptionFailed)
        | Err(age::DecryptError::NoMatchingKeys)
        | Err(age::DecryptError::KeyDecryptionFailed) => return Err(BackupError::WrongPassphrase),
        Err(age::DecryptError::Io(e)) => return Err(damaged(e)),
        Err(e) => return Err(BackupError::Damaged(e.to_string())),
    };
    unpack_plain(plain, staging, free)
}

/// Reads a decrypted backup (the tar stream) into `staging`; see [`unpack`]. Everything it
/// reads is checked: entry order, names, types, sizes, the manifest's version and schema, and
/// every file against the list at the end. A read error of `plain` (a failed decryption: a cut
/// or altered file) is reported as damage.
pub fn unpack_plain(
    plain: impl Read,
    staging: &Path,
    free: &dyn Fn() -> Option<u64>,
) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
    let mut archive = tar::Archive::new(plain);
    let mut entries = archive.entries().map_err(damaged)?;
    let manifest: Manifest = {
        let first = entries
            .next()
            .ok_or_else(|| BackupError::Damaged("the archive is empty".into()))?
            .map_err(damaged)?;
        if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
            return Err(BackupError::NotABackup(format!(
                "its first entry is not {MANIFEST}"
            )));
        }
        let bytes = read_meta(first, "manifest")?;
        serde_json::from_slice(&bytes)
            .map_err(|e| BackupError::NotABackup(format!("its {MANIFEST} is unreadable: {e}")))?
    };
    if manifest.format != FORMAT {
        return Err(BackupError::NotABackup(format!(
            "archive layout {} (this Cairn reads layout {FORMAT})",
            manifest.format
        )));
    }
    if manifest.schema > crate::store::SCHEMA_VERSION {
        return Err(BackupError::Newer {
            made_by: manifest.cairn.clone(),
            schema: manifest.schema,
            supported: crate::store::SCHEMA_VERSION,
        });
    }
    let mut staged: BTreeMap<String, FileEntry> = BTreeMap::new();
    let mut list: Option<FileList> = None;
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        if list.is_some() {
            return Err(BackupError::Damaged(format!(
                "an entry follows {FILE_LIST}"
            )));
        }
        let path = std::str::from_utf8(&entry.path_bytes())
            .map_err(|_| BackupError::Damaged("an entry's name is not UTF-8".into()))?
            .to_string();
        if path == FILE_LIST {
            let bytes = read_meta(&mut entry, "file list")?;
            list = Some(serde_json::from_slice(&bytes).map_err(|e| {
                BackupError::Damaged(format!("its {FILE_LIST} is unreadable: {e}"))
            })?);
            continue;
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BackupError::Damaged(format!(
                "{path:?} is not a regular file"
            )));
        }
        if !allowed_path(&path) {
            return Err(BackupError::Damaged(format!(
                "{path:?} is not a file a Cairn backup carries"
            )));
        }
        if staged.contains_key(&path) {
            return Err(BackupError::Damaged(format!("{path:?} appears twice")));
        }
        if staged.len() >= MAX_FILES {
            return Err(BackupError::Damaged(format!(
                "it holds more than {MAX_FILES} files"
            )));
        }
        let size = entry.header().size().map_err(damaged)?;
        if let Some(free) = free()
            && free < size.saturating_add(RESERVE)
        {
            return Err(BackupError::Full(format!(
                "{path} needs {size} bytes and only {free} are free"
            )));
        }
        let target = staging.join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BackupError::io(format!("creating {}", dir.display()), e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| BackupError::io(format!("creating {}", target.display()), e))?;
        let mut r = Hashing {
            inner: &mut entry,
            left: size,
            hash: Sha256::new(),
        };
        let copied = io::copy(&mut r, &mut f).map_err(damaged)?;
        f.sync_all()
            .map_err(|e| BackupError::io(format!("writing {}", target.display()), e))?;
        staged.insert(
            path.clone(),
            FileEntry {
                path,
                size: copied,
                sha256: hex::encode(r.hash.finalize()),
            },
        );
    }
    // The tar ends with two empty blocks; whatever follows must still decrypt to its end, or
    // a cut or altered tail would go unnoticed.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(damaged)?;
    let list =
        list.ok_or_else(|| BackupError::Damaged(format!("it ends before its {FILE_LIST}")))?;
    let mut listed: BTreeMap<String, FileEntry> = BTreeMap::new();
    for f in list.files {
        listed.insert(f.path.clone(), f);
    }
    if listed != staged {
        let differ = listed
            .keys()
            .chain(staged.keys())
            .find(|k| listed.get(*k) != staged.get(*k))
            .cloned()
            .unwrap_or_default();
        return Err(BackupError::Damaged(format!(
            "{differ:?} does not match the archive's file list"
        )));
    }
    if !staged.contains_key(crate::store::FILE_NAME) {
        return Err(BackupError::Damaged(format!(
            "it holds no {}",
            crate::store::FILE_NAME
        )));
    }
    Ok((manifest, staged.into_values().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupError;

    fn seed(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/backup_archive")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn plain(name: &str) -> Result<(Manifest, Vec<FileEntry>), BackupError> {
        let dir = tempfile::tempdir().unwrap();
        unpack_plain(&seed(name)[..], dir.path(), &|| Some(1 << 40))
    }

    #[test]
    fn the_tar_stream_is_checked_entry_by_entry() {
        for ok in ["valid", "pax-format", "long-path"] {
            let (m, files) = plain(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!((m.format, m.hostname.as_str()), (1, "cairn"), "{ok}");
            assert!(files.iter().any(|f| f.path == "cairn.redb"), "{ok}");
        }
        let damaged = |name: &str, says: &str| match plain(name) {
            Err(BackupError::Damaged(m)) => assert!(m.contains(says), "{name}: {m}"),
            other => panic!("{name}: {other:?}"),
        };
        damaged("traversal", "not a file a Cairn backup carries");
        damaged("symlink", "not a regular file");
        damaged("list-mismatch", "\"router.key\" does not match");
        damaged("duplicate", "appears twice");
        damaged("truncated", "");
        assert!(matches!(
            plain("newer-schema"),
            Err(BackupError::Newer { schema: 99, .. })
        ));
        let full = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack_plain(&seed("valid")[..], full.path(), &|| Some(1000)),
            Err(BackupError::Full(_))
        ));
    }

    #[test]
    fn only_the_files_of_a_box_are_carried() {
        for ok in [
            "cairn.redb",
            "router.key",
            "etc/cairn.toml",
            "tls/key.pem",
            "agents/files/echo/a/b.txt",
        ] {
            assert!(allowed_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/cairn.redb",
            "../cairn.redb",
            "agents/files/echo",
            "agents/files/echo/../../../x",
            "agents/files//x",
            "etc/passwd",
            "tls/other.pem",
            "agents\\files\\x\\y",
        ] {
            assert!(!allowed_path(bad), "{bad}");
        }
    }

    #[test]
    fn an_archive_opens_with_its_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("agents/files/echo")).unwrap();
        std::fs::write(data.join("agents/files/echo/notes.txt"), b"valve").unwrap();
        std::fs::write(data.join("router.key"), [7u8; 32]).unwrap();
        let store = crate::store::Store::open(&data).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let src = Source {
            db: &store.database(),
            data_dir: data.clone(),
            tls: false,
            hostname: "north".into(),
        };
        let mut file = Vec::new();
        let made = create(&src, "a long passphrase", &work, &mut file).unwrap();
        assert_eq!(made.hostname, "north");
        let free = || Some(1u64 << 40);
        let staged = dir.path().join("staged");
        std::fs::create_dir_all(&staged).unwrap();
        assert!(matches!(
            unpack(&file[..], "another passphrase", &staged, &free),
            Err(BackupError::WrongPassphrase)
        ));
        let (m, files) = unpack(&file[..], "a long passphrase", &staged, &free).unwrap();
        assert_eq!(m, made);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["agents/files/echo/notes.txt", "cairn.redb", "router.key"]
        );
        assert_eq!(
            std::fs::read(staged.join("agents/files/echo/notes.txt")).unwrap(),
            b"valve"
        );
        crate::backup::check_database(&staged.join("cairn.redb")).unwrap();
        // Cut anywhere, it is refused.
        for cut in [10, 200, file.len() / 2, file.len() - 1] {
            let again = dir.path().join(format!("cut-{cut}"));
            std::fs::create_dir_all(&again).unwrap();
            let r = unpack(&file[..cut], "a long passphrase", &again, &free);
            assert!(
                matches!(
                    r,
                    Err(BackupError::Damaged(_)) | Err(BackupError::NotABackup(_))
                ),
                "cut at {cut}: {r:?}"
            );
        }
    }
}
