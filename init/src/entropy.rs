//! The random seed: carried across boots on the data partition and mixed into the kernel's
//! pool early, so the first TLS key of a box without a hardware RNG is not generated from a
//! thin pool. The file is replaced right after use so a seed is never used twice.

use std::io::Write;
use tracing::debug;

/// Seed file on the data partition.
pub const SEED_FILE: &str = "/data/.cairn/random-seed";
const SEED_BYTES: usize = 512;

/// Mixes the saved seed into the pool (without crediting it) and writes a fresh one.
pub fn load_and_refresh() {
    if let Ok(seed) = std::fs::read(SEED_FILE)
        && let Ok(mut u) = std::fs::OpenOptions::new().write(true).open("/dev/urandom")
    {
        let _ = u.write_all(&seed);
        debug!("random seed mixed in ({} bytes)", seed.len());
    }
    save();
}

/// Writes a fresh seed from the kernel's pool, durably.
pub fn save() {
    let mut seed = vec![0u8; SEED_BYTES];
    // SAFETY: the pointer and length describe `seed`, which is writable.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), libc::GRND_NONBLOCK) };
    if n != SEED_BYTES as isize {
        return;
    }
    let dir = std::path::Path::new(SEED_FILE).parent();
    if let Some(d) = dir {
        // Root's alone: the appliance (another user) must not read or replace the seed.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::create_dir_all(d);
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = format!("{SEED_FILE}.tmp");
    let ok = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&seed)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, SEED_FILE));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
