//! Free space on the data partition: writes are refused before they start when it runs
//! short, since redb latches the first failed write and then fails every later read until
//! reopened.

use crate::error::StorageError;
use std::path::Path;

/// Free space kept on the data partition for redb's own growth and metadata.
pub const RESERVE_BYTES: u64 = 2 << 20;

/// Free bytes for unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.is_dir() { path } else { path.parent()? };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory of the right
    // type; statvfs initialises it when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on macOS): widen explicitly.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// Refuses a write ([`StorageError::NoSpace`]) when the file system holding `path` has less
/// than [`RESERVE_BYTES`] plus `need` bytes free.
pub fn ensure_space(path: &Path, need: u64) -> Result<(), StorageError> {
    match free_bytes(path) {
        Some(free) if free < RESERVE_BYTES.saturating_add(need) => {
            Err(StorageError::NoSpace { free, need })
        }
        _ => Ok(()),
    }
}
