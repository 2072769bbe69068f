//! Serial console capture: QEMU's chardev socket read by a thread into a buffer (the stream
//! tests wait on) and a log file (kept as a test artifact).

use anyhow::{Result, bail};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Captured console output.
pub struct Serial {
    buf: Mutex<Vec<u8>>,
    more: Condvar,
    /// Set for a terminal console: the text comes from QEMU's own log file.
    log_only: Option<PathBuf>,
}

impl Serial {
    /// Connects to QEMU's serial socket (QEMU waits for us before starting the guest).
    pub fn connect(sock: &Path, log: &Path, child: &mut Child) -> Result<Arc<Serial>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(st)) = child.try_wait() {
                        bail!("QEMU exited at start ({st})");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => bail!(
                    "QEMU's serial socket {} never appeared: {e}",
                    sock.display()
                ),
            }
        };
        let serial = Arc::new(Serial {
            buf: Mutex::new(Vec::new()),
            more: Condvar::new(),
            log_only: None,
        });
        let mut file = std::fs::File::create(log)?;
        let s2 = serial.clone();
        std::thread::Builder::new()
            .name("serial".into())
            .spawn(move || {
                let mut stream = stream;
                let mut chunk = [0u8; 8192];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let _ = file.write_all(&chunk[..n]);
                            if let Ok(mut b) = s2.buf.lock() {
                                b.extend_from_slice(&chunk[..n]);
                            }
                            s2.more.notify_all();
                        }
                    }
                }
                s2.more.notify_all();
            })?;
        Ok(serial)
    }

    /// For a terminal console: text is read from QEMU's log file.
    pub fn detached(log: &Path) -> Arc<Serial> {
        Arc::new(Serial {
            buf: Mutex::new(Vec::new()),
            more: Condvar::new(),
            log_only: Some(log.to_path_buf()),
        })
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.log_only {
            Some(p) => std::fs::read(p).unwrap_or_default(),
            None => self.buf.lock().map(|b| b.clone()).unwrap_or_default(),
        }
    }

    /// The whole output so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Bytes captured so far.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Offset just past the first `needle` at or after `from`.
    pub fn find_from(&self, needle: &str, from: usize) -> Option<usize> {
        let b = self.bytes();
        let hay = b.get(from..)?;
        let n = needle.as_bytes();
        hay.windows(n.len().max(1))
            .position(|w| w == n)
            .map(|p| from + p + n.len())
    }

    /// The last `n` bytes as text.
    pub fn tail(&self, n: usize) -> String {
        let b = self.bytes();
        String::from_utf8_lossy(&b[b.len().saturating_sub(n)..]).into_owned()
    }

    /// Blocks until more output arrives or the timeout passes.
    pub fn wait_for_more(&self, timeout: Duration) {
        if self.log_only.is_some() {
            std::thread::sleep(timeout);
            return;
        }
        if let Ok(g) = self.buf.lock() {
            let _ = self.more.wait_timeout(g, timeout);
        }
    }
}
