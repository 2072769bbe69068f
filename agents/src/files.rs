//! The byte quota of an agent's private `/data` directory (`limits.files_bytes`).
//!
//! WASI writes reach files through `descriptor.write` (a positioned write), the output streams
//! of `descriptor.write-via-stream` / `append-via-stream`, and `descriptor.set-size`. The
//! runtime shadows those four imports: each write is checked against the quota before any of
//! its bytes reach the disk, and a write that would cross it fails whole: `descriptor.write` answers
//! `insufficient-space`; a stream write fails with ENOSPC, which a Rust guest sees as an I/O error. The usage is counted from
//! the directory when the agent is loaded, before each task and before refusing a write, so
//! deletions and truncations are credited back. A guest's large write reaches the host as a
//! series of stream writes (4 KiB each through wasi-libc), so the chunks before the one that
//! crosses the quota are stored, as on a full disk; the directory never exceeds the quota.

use crate::host::HostState;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self as fs, Descriptor, ErrorCode, HostDescriptor,
};
use wasmtime_wasi::p2::{DynOutputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Most directory entries counted; a directory with more counts as full.
const MAX_ENTRIES: usize = 100_000;
/// What each directory entry costs on top of its bytes, so empty files are not free.
const ENTRY_BYTES: u64 = 512;
/// The WASI interface whose functions are shadowed.
const TYPES: &str = "wasi:filesystem/types@0.2.12";

/// One agent's `/data` usage against its quota, shared by its instances.
pub(crate) struct FilesQuota {
    dir: PathBuf,
    max: u64,
    used: Mutex<u64>,
}

/// Bytes (plus [`ENTRY_BYTES`] per entry) under `dir`; `u64::MAX` past [`MAX_ENTRIES`].
fn usage(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in rd.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                return u64::MAX;
            }
            let Ok(meta) = entry.metadata() else { continue };
            total = total.saturating_add(ENTRY_BYTES);
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

impl FilesQuota {
    /// A quota of `max` bytes over `dir`, counted now.
    pub(crate) fn new(dir: PathBuf, max: u64) -> Arc<FilesQuota> {
        let used = usage(&dir);
        Arc::new(FilesQuota {
            dir,
            max,
            used: Mutex::new(used),
        })
    }

    /// Counts the directory again (credits deletions and truncations).
    pub(crate) fn recount(&self) {
        let used = usage(&self.dir);
        *self.used.lock().expect("quota lock") = used;
    }

    /// Takes `grow` bytes of the quota, or refuses with ENOSPC.
    fn reserve(&self, grow: u64) -> Result<(), std::io::Error> {
        if grow == 0 {
            return Ok(());
        }
        let mut used = self.used.lock().expect("quota lock");
        if used.checked_add(grow).is_none_or(|after| after > self.max) {
            // Files deleted or truncated in this task are only seen by counting again.
            *used = usage(&self.dir);
        }
        match used.checked_add(grow) {
            Some(after) if after <= self.max => {
                *used = after;
                Ok(())
            }
            _ => {
                tracing::debug!(dir = %self.dir.display(), max = self.max, "files quota refused a write");
                // ENOSPC is 28 on Linux and macOS; WASI reports it as `insufficient-space`.
                Err(std::io::Error::from_raw_os_error(28))
            }
        }
    }

    /// Gives back bytes reserved for a write that failed.
    fn release(&self, n: u64) {
        let mut used = self.used.lock().expect("quota lock");
        *used = used.saturating_sub(n);
    }
}

/// A file's output stream that takes quota before every write it passes on.
struct QuotaStream {
    inner: DynOutputStream,
    quota: Arc<FilesQuota>,
    /// Next write position and the file's size as far as this stream knows; `None` appends.
    at: Option<(u64, u64)>,
}

impl QuotaStream {
    fn growth(&self, len: u64) -> u64 {
        match self.at {
            None => len,
            Some((pos, size)) => (pos.saturating_add(len)).saturating_sub(size),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        let grow = self.growth(len);
        self.quota
            .reserve(grow)
            .map_err(|e| StreamError::LastOperationFailed(e.into()))?;
        match self.inner.write(bytes) {
            Ok(()) => {
                if let Some((pos, size)) = &mut self.at {
                    *pos += len;
                    *size = (*size).max(*pos);
                }
                Ok(())
            }
            Err(e) => {
                self.quota.release(grow);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// The file's size, or `None` for a directory or a failed stat.
async fn size_of(
    view: &mut wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_>,
    fd: &Resource<Descriptor>,
) -> Option<u64> {
    let borrowed = Resource::<Descriptor>::new_borrow(fd.rep());
    HostDescriptor::stat(view, borrowed)
        .await
        .ok()
        .map(|s| s.size)
}

fn to_code(
    view: &mut wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_>,
    e: wasmtime_wasi::p2::FsError,
) -> wasmtime::Result<ErrorCode> {
    fs::Host::convert_error_code(view, e)
}

/// Shadows the WASI functions that write to files with quota-checked ones. Instances without
/// a quota (no `files` grant, so no `/data`) pass straight through.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut inst = linker.instance(TYPES)?;
    inst.func_wrap_async(
        "[method]descriptor.write",
        |mut store, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let quota = store.data().files_quota.clone();
                let mut view = store.data_mut().filesystem();
                let mut grow = 0;
                if let Some(q) = &quota {
                    let size = size_of(&mut view, &fd).await.unwrap_or(u64::MAX);
                    grow = offset.saturating_add(buf.len() as u64).saturating_sub(size);
                    if let Err(e) = q.reserve(grow) {
                        let _ = e;
                        return Ok((Err(ErrorCode::InsufficientSpace),));
                    }
                }
                match HostDescriptor::write(&mut view, fd, buf, offset).await {
                    Ok(n) => Ok((Ok(n),)),
                    Err(e) => {
                        if let Some(q) = &quota {
                            q.release(grow);
                        }
                        Ok((Err(to_code(&mut view, e)?),))
                    }
                }
            })
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let quota = store.data().files_quota.clone();
                let mut view = store.data_mut().filesystem();
                let mut grow = 0;
                if let Some(q) = &quota {
                    let old = size_of(&mut view, &fd).await.unwrap_or(u64::MAX);
                    grow = size.saturating_sub(old);
                    if let Err(e) = q.reserve(grow) {
                        let _ = e;
                        return Ok((Err(ErrorCode::InsufficientSpace),));
                    }
                }
                match HostDescriptor::set_size(&mut view, fd, size).await {
                    Ok(()) => Ok((Ok(()),)),
                    Err(e) => {
                        if let Some(q) = &quota {
                            q.release(grow);
                        }
                        Ok((Err(to_code(&mut view, e)?),))
                    }
                }
            })
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.write-via-stream",
        |mut store, (fd, offset): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let quota = store.data().files_quota.clone();
                let mut view = store.data_mut().filesystem();
                let size = match &quota {
                    Some(_) => size_of(&mut view, &fd).await.unwrap_or(u64::MAX),
                    None => 0,
                };
                let stream = match HostDescriptor::write_via_stream(&mut view, fd, offset) {
                    Ok(s) => s,
                    Err(e) => return Ok((Err(to_code(&mut view, e)?),)),
                };
                Ok((Ok(wrap(&mut view, stream, quota, Some((offset, size)))?),))
            })
        },
    )?;
    inst.func_wrap_async(
        "[method]descriptor.append-via-stream",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let quota = store.data().files_quota.clone();
                let mut view = store.data_mut().filesystem();
                let stream = match HostDescriptor::append_via_stream(&mut view, fd) {
                    Ok(s) => s,
                    Err(e) => return Ok((Err(to_code(&mut view, e)?),)),
                };
                Ok((Ok(wrap(&mut view, stream, quota, None)?),))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Replaces a file stream in the table with its quota-checked wrapper.
fn wrap(
    view: &mut wasmtime_wasi::filesystem::WasiFilesystemCtxView<'_>,
    stream: Resource<DynOutputStream>,
    quota: Option<Arc<FilesQuota>>,
    at: Option<(u64, u64)>,
) -> wasmtime::Result<Resource<DynOutputStream>> {
    let Some(quota) = quota else {
        return Ok(stream);
    };
    let inner = view.table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(QuotaStream { inner, quota, at });
    Ok(view.table.push(wrapped)?)
}
