//! Device coldplug and hotplug: load the kernel modules that present devices ask for.
//!
//! At boot every device in `/sys/bus/*/devices/*` is matched by its `modalias` against the
//! module index; loading a bus driver (virtio_pci, xhci) makes new devices appear, so scanning
//! repeats until nothing new loads. A kernel uevent socket, opened before the first scan so no
//! event is lost, then reports devices that appear later (USB storage behind xhci, a NIC
//! plugged in after boot) and init loads their drivers as they come.

use crate::modindex::ModuleIndex;
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::{debug, info, warn};

pub use crate::bootinfo::ModulesInfo as ModulesReport;

/// The module loader and its memory of what it has seen. Loading happens on several threads:
/// driver probes (a SATA controller's link timeouts, ext4's relocations under emulation) then
/// overlap instead of adding up. The kernel serialises loads of the same module, and a second
/// loader of a module in flight gets EEXIST once the first finishes, so dependencies still
/// come first.
pub struct Coldplug {
    index: ModuleIndex,
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    seen: BTreeSet<String>,
    loaded: BTreeSet<String>,
    report: ModulesReport,
}

impl Coldplug {
    /// Reads the index of the running kernel from `/lib/modules/<release>/`.
    pub fn open(release: &str) -> Result<Coldplug, String> {
        let root = Path::new("/lib/modules").join(release);
        let path = root.join(crate::modindex::FILE_NAME);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let index = ModuleIndex::parse(&text)?;
        if index.kernel != release {
            return Err(format!(
                "module index is for kernel {} but {release} is running",
                index.kernel
            ));
        }
        Ok(Coldplug {
            index,
            root,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// What has been loaded so far.
    pub fn report(&self) -> ModulesReport {
        self.state().report.clone()
    }

    /// Loads a module and its dependencies; true if anything new was loaded.
    pub fn load(&self, name: &str) -> bool {
        let order: Vec<(String, String)> = match self.index.load_order(name) {
            Ok(o) => o.iter().map(|m| (m.name.clone(), m.path.clone())).collect(),
            Err(e) => {
                warn!("{e}");
                self.state().report.failed.insert(name.to_string(), e);
                return false;
            }
        };
        let mut any = false;
        for (m, path) in order {
            {
                let st = self.state();
                if st.loaded.contains(&m) || st.report.failed.contains_key(&m) {
                    continue;
                }
            }
            let file = self.root.join(&path);
            let result = std::fs::File::open(&file).and_then(|f| crate::sys::finit_module(&f));
            let mut st = self.state();
            match result {
                Ok(()) => {
                    debug!("loaded module {m}");
                    if st.loaded.insert(m.clone()) {
                        st.report.loaded.push(m);
                    }
                    any = true;
                }
                // Already present (loaded by the kernel's own request through the module
                // helper, or by another worker): it is loaded all the same.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    if st.loaded.insert(m.clone()) {
                        st.report.loaded.push(m);
                    }
                }
                Err(e) => {
                    warn!("module {m} failed to load: {e}");
                    st.report.failed.insert(m, e.to_string());
                }
            }
        }
        any
    }

    /// Loads several modules on worker threads; returns how many loads succeeded.
    pub fn load_parallel(&self, names: Vec<String>) -> usize {
        let before = self.state().report.loaded.len();
        // Probes mostly wait on hardware, so use a few more threads than CPUs.
        let workers = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(4, 8)
            .min(names.len());
        if workers <= 1 {
            for n in &names {
                self.load(n);
            }
        } else {
            let queue = Mutex::new(std::collections::VecDeque::from(names));
            let next = || match queue.lock() {
                Ok(mut q) => q.pop_front(),
                Err(p) => p.into_inner().pop_front(),
            };
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(|| {
                        while let Some(n) = next() {
                            self.load(&n);
                        }
                    });
                }
            });
        }
        self.state().report.loaded.len() - before
    }

    /// Modules the index marks `boot` (file systems and their helpers).
    pub fn boot_modules(&self) -> Vec<String> {
        self.index
            .modules
            .iter()
            .filter(|m| m.boot)
            .map(|m| m.name.clone())
            .collect()
    }

    /// The modules a device modalias asks for, if it was not seen before.
    fn wanted(&self, modalias: &str) -> Vec<String> {
        if !self.state().seen.insert(modalias.to_string()) {
            return Vec::new();
        }
        let mods: Vec<String> = self
            .index
            .matches(modalias)
            .into_iter()
            .map(String::from)
            .collect();
        if mods.is_empty() {
            debug!("no driver for {modalias}");
            self.state().report.unmatched += 1;
        }
        mods
    }

    /// Handles one device modalias; true if a module was newly loaded for it.
    pub fn device(&self, modalias: &str) -> bool {
        self.wanted(modalias)
            .iter()
            .fold(false, |any, m| self.load(m) | any)
    }

    /// Modules wanted by devices in sysfs not seen before.
    fn scan_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for alias in sysfs_modaliases() {
            for m in self.wanted(&alias) {
                if !names.contains(&m) {
                    names.push(m);
                }
            }
        }
        names
    }

    /// One pass over every device in sysfs; returns how many modules it loaded.
    pub fn scan(&self) -> usize {
        self.load_parallel(self.scan_names())
    }

    /// Loads the boot modules and every driver present devices ask for, until nothing is
    /// left. A work queue rather than rounds: as soon as a load finishes, sysfs is scanned
    /// again and the drivers for devices it created (virtio_blk after virtio_pci) are queued,
    /// without waiting for slow probes elsewhere.
    pub fn settle(&self, uevents: Option<&Uevents>) {
        struct Work {
            queue: std::collections::VecDeque<String>,
            busy: usize,
        }
        // The data partition's file system first (the largest load, always needed), then
        // device drivers (the data disk waits on them), then the other boot modules.
        let boot = self.boot_modules();
        let mut first: Vec<String> = boot.iter().filter(|m| *m == "ext4").cloned().collect();
        for m in self.scan_names().into_iter().chain(boot) {
            if !first.contains(&m) {
                first.push(m);
            }
        }
        let work = Mutex::new(Work {
            queue: first.into(),
            busy: 0,
        });
        let changed = std::sync::Condvar::new();
        let lock = || match work.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let workers = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(4, 8);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let name = {
                            let mut w = lock();
                            loop {
                                if let Some(n) = w.queue.pop_front() {
                                    w.busy += 1;
                                    break Some(n);
                                }
                                if w.busy == 0 {
                                    break None;
                                }
                                w = match changed.wait(w) {
                                    Ok(g) => g,
                                    Err(p) => p.into_inner(),
                                };
                            }
                        };
                        let Some(name) = name else {
                            changed.notify_all();
                            return;
                        };
                        let new = if self.load(&name) {
                            let mut n = self.scan_names();
                            if let Some(u) = uevents {
                                n.extend(self.drain_names(u));
                            }
                            n
                        } else {
                            Vec::new()
                        };
                        let mut w = lock();
                        w.queue.extend(new);
                        w.busy -= 1;
                        drop(w);
                        changed.notify_all();
                    }
                });
            }
        });
        let st = self.state();
        info!(
            "coldplug: {} modules loaded, {} failed",
            st.report.loaded.len(),
            st.report.failed.len()
        );
    }

    fn drain_names(&self, uevents: &Uevents) -> Vec<String> {
        let mut names = Vec::new();
        while let Some(ev) = uevents.next() {
            if ev.action == "add"
                && let Some(a) = ev.get("MODALIAS")
            {
                names.extend(self.wanted(a));
            }
        }
        names
    }

    /// Handles every queued uevent; returns the events seen (for disk and input waits).
    pub fn drain(&self, uevents: &Uevents) -> Vec<Uevent> {
        let mut events = Vec::new();
        let mut names = Vec::new();
        while let Some(ev) = uevents.next() {
            if ev.action == "add"
                && let Some(a) = ev.get("MODALIAS")
            {
                names.extend(self.wanted(a));
            }
            events.push(ev);
        }
        if !names.is_empty() {
            self.load_parallel(names);
        }
        events
    }
}

/// Every `modalias` of every device on every bus.
fn sysfs_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devs.flatten() {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.push(a.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// One kernel uevent.
#[derive(Debug, Clone)]
pub struct Uevent {
    /// `add`, `remove`, `change`, `bind`, ...
    pub action: String,
    /// KEY=VALUE pairs.
    pub vars: Vec<(String, String)>,
}

impl Uevent {
    /// Parses a uevent datagram (`action@devpath\0KEY=VAL\0...`).
    pub fn parse(buf: &[u8]) -> Option<Uevent> {
        let mut parts = buf.split(|b| *b == 0).filter(|p| !p.is_empty());
        let head = std::str::from_utf8(parts.next()?).ok()?;
        let (action, _) = head.split_once('@')?;
        let vars = parts
            .filter_map(|p| std::str::from_utf8(p).ok())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Uevent {
            action: action.to_string(),
            vars,
        })
    }

    /// The value of a variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The kernel's uevent multicast socket (NETLINK_KOBJECT_UEVENT), non-blocking.
pub struct Uevents {
    fd: OwnedFd,
}

impl Uevents {
    /// Opens and binds the socket.
    pub fn open() -> io::Result<Uevents> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value before we fill it.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1;
        let size: libc::c_int = 1 << 20;
        // SAFETY: the option value points at a c_int of the given size; best effort.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Uevents { fd })
    }

    /// The descriptor, for poll.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next queued event, if any (never blocks).
    pub fn next(&self) -> Option<Uevent> {
        let mut buf = [0u8; 8192];
        loop {
            let n = crate::sys::read_fd(self.fd.as_raw_fd(), &mut buf).ok()?;
            if n == 0 {
                return None;
            }
            if let Some(ev) = buf.get(..n).and_then(Uevent::parse) {
                return Some(ev);
            }
        }
    }
}

/// `modprobe` as the kernel's usermode helper calls it (`/sbin/modprobe -q -- NAME`): the
/// kernel asks for file systems (`fs-vfat`), NLS tables and crypto (`crypto-crc32c`) by alias.
pub fn modprobe_main(args: &[String]) -> i32 {
    let names: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let release = crate::sys::kernel_release();
    let cp = match Coldplug::open(&release) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("modprobe: {e}");
            return 1;
        }
    };
    let mut status = 0;
    for name in names {
        let mods: Vec<String> = cp
            .index
            .resolve(name)
            .into_iter()
            .map(String::from)
            .collect();
        if mods.is_empty() {
            status = 1;
            continue;
        }
        for m in mods {
            cp.load(&m);
        }
        if !cp.report().failed.is_empty() {
            status = 1;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uevents() {
        let ev = Uevent::parse(
            b"add@/devices/pci0000:00/0000:00:02.0\0ACTION=add\0MODALIAS=pci:v00001AF4d00001000sv*\0SEQNUM=7\0",
        )
        .unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.get("MODALIAS"), Some("pci:v00001AF4d00001000sv*"));
        assert_eq!(ev.get("SEQNUM"), Some("7"));
        assert!(Uevent::parse(b"libudev\0\xfe\xed").is_none());
        assert!(Uevent::parse(b"").is_none());
    }
}
