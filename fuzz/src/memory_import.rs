//! `POST /api/v1/memory/import`'s JSON Lines into a fresh store: every line is imported or
//! rejected with its line number, never a panic, and what was imported reads back.
use cairn::memory::{Access, Memory};
use cairn::store::Store;

fn scratch() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch();
    let store = Store::open(dir.path()).expect("a fresh store opens");
    let m = Memory::open_database(store.database(), store.path(), None)
        .expect("memory opens on a fresh store");
    let admin = Access::admin();
    let Ok(report) = m.import(&admin, body) else {
        return;
    };
    assert_eq!(report.imported, report.ids.len());
    let lines = body.lines().filter(|l| !l.trim().is_empty()).count();
    if report.stopped.is_none() {
        assert_eq!(
            report.imported + report.rejected.len(),
            lines,
            "every line is imported or rejected: {report:?}"
        );
    }
    for id in &report.ids {
        m.get(&admin, *id).expect("an imported record reads back");
    }
    for ns in m.namespaces(&admin).expect("namespaces").keys() {
        let out = m.export(&admin, ns).expect("export");
        // An export imports again (into the same store: as new records).
        let again = m.import(&admin, &out).expect("an export imports");
        assert!(
            again.rejected.is_empty(),
            "export refused on import: {again:?}"
        );
    }
}
