//! Memory's write-ahead journal as found on disk at start: the frames are read back and the
//! acknowledged writes replayed into a fresh store by the real `Memory::open_database`; a damaged or
//! hostile journal may be cut short or refused, never panic the service.
//!
//! First byte even: the rest is the journal file as is (the frame reader: magic, sequence,
//! length, SHA-256 checksum). Odd: the rest is one entry payload (JSON) per line, framed here
//! with valid checksums and rising sequence numbers, so the fuzzer reaches the replay itself.
use cairn::memory::{Access, Memory};
use cairn::store::Store;
use sha2::Digest;

/// Frames `payloads` as `Journal::append` writes them.
fn frames(payloads: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in payloads.split(|b| *b == b'\n').enumerate() {
        out.extend_from_slice(b"CMJ1");
        out.extend_from_slice(&(i as u64 + 1).to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&sha2::Sha256::digest(p)[..8]);
        out.extend_from_slice(p);
    }
    out
}

fn scratch() -> tempfile::TempDir {
    // tmpfs when there is one: every run creates a database and syncs it.
    match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let journal = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        frames(rest)
    };
    let dir = scratch();
    let store = Store::open(dir.path()).expect("a fresh store opens");
    std::fs::write(store.path().with_extension("journal"), &journal).expect("write the journal");
    // Replay may refuse entries that contradict the store (an error), never panic.
    let Ok(m) = Memory::open_database(store.database(), store.path(), None) else {
        return;
    };
    let admin = Access::admin();
    let namespaces = m.namespaces(&admin).expect("namespaces after replay");
    for ns in namespaces.keys() {
        let page = m.list(&admin, ns, None, 0, 50).expect("list after replay");
        let _ = page;
        let _ = m.export(&admin, ns).expect("export after replay");
    }
    let _ = m.stats().expect("stats after replay");
    m.flush().expect("a durable commit after replay");
    drop(m);
    // What was replayed and flushed opens again with nothing left to replay.
    Memory::open_database(store.database(), store.path(), None)
        .expect("memory reopens after a replay");
}
