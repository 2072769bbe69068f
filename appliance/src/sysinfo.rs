//! What `/api/v1/system` reports: version, kernel, uptime, boot timeline, memory, disks,
//! network, CPU features and the appliance's own processes. Read from /proc and /sys on each
//! request (cheap, and always current).

use serde::Serialize;
use std::path::Path;

/// CPU facts.
#[derive(Debug, Serialize)]
pub struct Cpu {
    /// Logical CPUs.
    pub count: usize,
    /// Model name from /proc/cpuinfo.
    pub model: String,
    /// SIMD features detected at run time (avx2, fma, avx512f, neon, dotprod, ...).
    pub features: Vec<&'static str>,
}

/// Memory in bytes.
#[derive(Debug, Serialize)]
pub struct Memory {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemAvailable.
    pub available_bytes: u64,
}

/// A file system the appliance uses.
#[derive(Debug, Serialize)]
pub struct Disk {
    /// Mount point or directory.
    pub path: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
}

/// A network interface.
#[derive(Debug, Serialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<String>,
    /// operstate (up, down, unknown).
    pub state: String,
    /// IPv4 and IPv6 addresses with prefix.
    pub addresses: Vec<String>,
}

/// One of the appliance's processes.
#[derive(Debug, Serialize)]
pub struct Process {
    /// Name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// The user it runs as (real uid).
    pub uid: Option<u32>,
}

/// SIMD features of this CPU, detected at run time.
pub fn cpu_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) { f.push($name); }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($name) { f.push($name); }
            )*};
        }
        probe!("neon", "dotprod", "fp16", "i8mm", "sve", "sve2");
    }
    f
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPU model, count and features.
pub fn cpu() -> Cpu {
    let info = read("/proc/cpuinfo");
    let model = info
        .lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Cpu {
        count: std::thread::available_parallelism().map_or(1, |n| n.get()),
        model,
        features: cpu_features(),
    }
}

/// Memory totals from /proc/meminfo.
pub fn memory() -> Memory {
    let info = read("/proc/meminfo");
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Memory {
        total_bytes: field("MemTotal:"),
        available_bytes: field("MemAvailable:"),
    }
}

/// Size and free space of the file system holding `path`.
pub fn disk(path: &Path) -> Option<Disk> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `st` is a valid out pointer and `c` a NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        st
    };
    Some(Disk {
        path: path.display().to_string(),
        total_bytes: st.f_blocks as u64 * st.f_frsize as u64,
        free_bytes: st.f_bavail as u64 * st.f_frsize as u64,
    })
}

/// Network interfaces with their addresses (getifaddrs).
pub fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let mac =
                Some(read(e.path().join("address")).trim().to_string()).filter(|m| !m.is_empty());
            out.push(Interface {
                state: read(e.path().join("operstate")).trim().to_string(),
                name,
                mac,
                addresses: Vec::new(),
            });
        }
    }
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifap) == 0 {
            let mut cur = ifap;
            while !cur.is_null() {
                let ifa = &*cur;
                cur = ifa.ifa_next;
                if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                    continue;
                }
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                    .to_string_lossy()
                    .into_owned();
                let family = (*ifa.ifa_addr).sa_family as i32;
                let text = match family {
                    libc::AF_INET => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                        let prefix = if ifa.ifa_netmask.is_null() {
                            32
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                            u32::from_be(m.sin_addr.s_addr).count_ones()
                        };
                        format!("{ip}/{prefix}")
                    }
                    libc::AF_INET6 => {
                        let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                        let prefix = if ifa.ifa_netmask.is_null() {
                            128
                        } else {
                            let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                            m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                        };
                        format!("{ip}/{prefix}")
                    }
                    _ => continue,
                };
                if let Some(i) = out.iter_mut().find(|i| i.name == name) {
                    i.addresses.push(text);
                }
            }
            libc::freeifaddrs(ifap);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The first number of a `/proc/PID/status` line (`VmRSS:`, `Uid:`).
fn status_field<T: std::str::FromStr>(pid: u32, key: &str) -> Option<T> {
    read(format!("/proc/{pid}/status"))
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// The real user id of a process.
pub fn uid(pid: u32) -> Option<u32> {
    status_field(pid, "Uid:")
}

/// Kernel release.
pub fn kernel() -> String {
    read("/proc/sys/kernel/osrelease").trim().to_string()
}

/// Host name.
pub fn hostname() -> String {
    read("/proc/sys/kernel/hostname").trim().to_string()
}

/// Seconds since the machine booted.
pub fn uptime_secs() -> f64 {
    read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let c = cpu();
        assert!(c.count >= 1);
        #[cfg(target_arch = "x86_64")]
        assert!(c.features.contains(&"sse4.2") || c.features.is_empty());
        assert!(memory().total_bytes > 0);
        assert!(disk(Path::new("/")).unwrap().total_bytes > 0);
        let lo = interfaces().into_iter().find(|i| i.name == "lo").unwrap();
        assert!(
            lo.addresses.iter().any(|a| a == "127.0.0.1/8"),
            "{:?}",
            lo.addresses
        );
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        // SAFETY: getuid has no preconditions.
        assert_eq!(uid(std::process::id()), Some(unsafe { libc::getuid() }));
        assert!(!kernel().is_empty());
    }
}
