//! The appliance's side of init's control socket (`CAIRN_CONTROL_FD`): it announces readiness
//! (with the certificate fingerprint for the banner) and relays power requests. Hosted, there
//! is no init and the socket is absent.

use cairn_init::bootinfo::{PowerAction, ToInit};
use cairn_init::layout::CONTROL_FD_ENV;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

/// A connection to init, if running under it.
pub struct Control {
    sock: Option<Mutex<UnixDatagram>>,
}

impl Control {
    /// Takes the socket init passed, if any (and only once per process).
    pub fn from_env() -> Control {
        let fd = std::env::var(CONTROL_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        // SAFETY: `fcntl(F_GETFD)` only checks that the descriptor is open.
        let open = fd.is_some_and(|fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        let sock = match (fd, open) {
            (Some(fd), true) => {
                // SAFETY: init passed this descriptor to us for exclusive use; nothing else in
                // this process owns it, and the env var is removed so it is taken only once.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: single-threaded at this point of start-up (called before the runtime).
                unsafe { std::env::remove_var(CONTROL_FD_ENV) };
                Some(Mutex::new(UnixDatagram::from(owned)))
            }
            _ => None,
        };
        Control { sock }
    }

    /// No connection: running hosted.
    pub fn hosted() -> Control {
        Control { sock: None }
    }

    /// True when running under cairn-init.
    pub fn is_present(&self) -> bool {
        self.sock.is_some()
    }

    fn send(&self, msg: &ToInit) -> std::io::Result<()> {
        let Some(s) = &self.sock else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "not running under cairn-init",
            ));
        };
        let guard = s
            .lock()
            .map_err(|_| std::io::Error::other("control socket poisoned"))?;
        guard.send(&msg.encode()).map(|_| ())
    }

    /// Tells init the API is up.
    pub fn ready(&self, fingerprint: &str, port: u16, notes: Vec<String>) -> std::io::Result<()> {
        self.send(&ToInit::Ready {
            fingerprint: fingerprint.to_string(),
            port,
            notes,
        })
    }

    /// Asks init to re-read `cairn.toml` and apply the host name and network.
    pub fn reconfigure(&self) -> std::io::Result<()> {
        self.send(&ToInit::Reconfigure)
    }

    /// Asks init to set the wall clock and the RTC.
    pub fn set_clock(&self, unix: i64) -> std::io::Result<()> {
        self.send(&ToInit::SetClock { unix })
    }

    /// Asks init to reboot or power off.
    pub fn power(&self, action: PowerAction) -> std::io::Result<()> {
        self.send(&ToInit::Power { action })
    }
}
