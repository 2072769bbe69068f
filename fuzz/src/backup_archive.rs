//! A restore's archive after decryption (`cairn::backup::unpack_plain`, the tar stream with its
//! manifest, files and file list) into a scratch staging directory: every input is staged or
//! refused with a reason, never a panic, nothing is written outside the staging directory, and
//! what is staged matches the list it returned. (The `age` layer in front of it is the `age`
//! crate's parser, fuzzed upstream; a restore only reaches this code after it decrypted.)
use cairn::backup::{BackupError, check_database, unpack_plain};

fn scratch() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("inside");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let root = scratch();
    let staging = root.path().join("staged");
    std::fs::create_dir(&staging).expect("staging");
    let free = || Some(1u64 << 40);
    match unpack_plain(data, &staging, &free) {
        Ok((manifest, files)) => {
            assert!(manifest.schema <= cairn::store::SCHEMA_VERSION);
            let mut listed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
            listed.sort();
            assert_eq!(
                listed,
                files_under(&staging),
                "staged files differ from the list"
            );
            assert!(listed.iter().any(|p| p == cairn::store::FILE_NAME));
            let _ = check_database(&staging.join(cairn::store::FILE_NAME));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                !matches!(e, BackupError::Database(_) | BackupError::UnknownTable(_)),
                "{e}"
            );
        }
    }
    // Nothing escaped the staging directory.
    let outside: Vec<String> = files_under(root.path())
        .into_iter()
        .filter(|p| !p.starts_with("staged/"))
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the staging: {outside:?}"
    );
}
