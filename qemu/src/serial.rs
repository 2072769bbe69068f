//! Serial console capture: QEMU's chardev socket read by a thread into a buffer (the stream
//! tests wait on) and a log file (kept as a test artifact).

use anyhow::{Result, bail};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long QEMU may take to open its serial socket.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(60);

/// The process that listens on the other end of a connected Unix socket.
fn peer_pid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals of the size SO_PEERCRED writes, and the fd is
    // open for the duration of the call (borrowed from `s`).
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.pid as u32)
}

/// Captured console output.
pub struct Serial {
    buf: Mutex<Vec<u8>>,
    more: Condvar,
    /// Set for a terminal console: the text comes from QEMU's own log file.
    log_only: Option<PathBuf>,
}

impl Serial {
    /// Connects to QEMU's serial socket (QEMU waits for us before starting the guest).
    ///
    /// Retries while QEMU is starting, for at most [`CONNECT_LIMIT`]; fails at once when QEMU
    /// exits, or when the socket is served by another process than `child` (a QEMU waiting on
    /// its own socket would otherwise wait forever while we read someone else's console).
    pub fn connect(sock: &Path, log: &Path, child: &mut Child) -> Result<Arc<Serial>> {
        let deadline = Instant::now() + CONNECT_LIMIT;
        let stream = loop {
            match UnixStream::connect(sock) {
                Ok(s) => {
                    let peer = peer_pid(&s).map_err(|e| {
                        anyhow::anyhow!("asking who serves {}: {e}", sock.display())
                    })?;
                    if peer != child.id() {
                        bail!(
                            "the serial socket {} is served by process {peer}, not by the QEMU \
                             just started ({}): another VM uses the same socket path",
                            sock.display(),
                            child.id()
                        );
                    }
                    break s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    bail!("cannot connect to {}: {e}", sock.display())
                }
                Err(e) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        bail!("QEMU exited at start ({st})");
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "QEMU ({}) did not open its serial socket {} within {} s: {e}",
                            child.id(),
                            sock.display(),
                            CONNECT_LIMIT.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::process::Command;

    /// A socket at the path that another process serves (an earlier boot's QEMU still alive,
    /// or a second VM given the same path) is not taken for the new QEMU's: that QEMU would
    /// sit waiting for a connection that never comes while we read the other's console.
    #[test]
    fn a_serial_socket_served_by_another_process_is_refused() {
        let dir = std::env::temp_dir().join(format!("cairn-serial-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("serial.sock");
        let _old_qemu = UnixListener::bind(&sock).unwrap();
        // The "new QEMU": alive, but not listening there.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let r = Serial::connect(&sock, &dir.join("serial.log"), &mut child);
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&dir).unwrap();
        let e = r
            .err()
            .expect("connected to a socket the new QEMU does not serve");
        assert!(
            e.to_string().contains("not by the QEMU just started"),
            "{e}"
        );
    }
}
