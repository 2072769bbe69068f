//! Thin, checked wrappers over the system calls init needs. Every call returns
//! `io::Result`; nothing here panics.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let (s, t, f) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let d = data.map(cstr).transpose()?;
    let dp = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null for `data`) that outlive
    // the call; the kernel copies them.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, dp) }).map(|_| ())
}

/// umount2(2).
pub fn umount(target: &str, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::umount2(t.as_ptr(), flags) }).map(|_| ())
}

/// finit_module(2) with empty parameters.
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    let params = c"";
    // SAFETY: the fd is open for reading for the duration of the call and `params` is a
    // valid NUL-terminated string; the syscall takes no other pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(|_| ())
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

/// Seconds since the epoch on the system clock.
pub fn wall_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the system clock (settimeofday).
pub fn set_wall_secs(secs: i64) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: secs as _,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval; the timezone argument may be null.
    check(unsafe { libc::settimeofday(&tv, std::ptr::null()) }).map(|_| ())
}

/// reboot(2) with one of the `RB_*` commands; only returns on failure.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot takes no pointers for these commands.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Makes Ctrl-Alt-Del send SIGINT to init instead of rebooting at once.
pub fn cad_to_signal() -> io::Result<()> {
    // SAFETY: LINUX_REBOOT_CMD_CAD_OFF takes no pointers.
    check(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) }).map(|_| ())
}

/// sync(2).
pub fn sync() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Sleeps without being a busy loop.
pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Blocks the given signals for the calling thread and returns a signalfd for them.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: `set` is initialised by sigemptyset before use; pointers are to locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        check(libc::pthread_sigmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = check(libc::signalfd(
            -1,
            &set,
            libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads one pending signal number from a signalfd, if any.
pub fn read_signal(fd: &OwnedFd) -> Option<u32> {
    // SAFETY: signalfd_siginfo is plain old data; we read at most its size into it.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let n = libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        );
        (n as usize == std::mem::size_of::<libc::signalfd_siginfo>()).then_some(info.ssi_signo)
    }
}

/// Unblocks every signal (used in children before exec).
///
/// # Safety
/// Only async-signal-safe calls are made, so this may run between fork and exec.
pub unsafe fn unblock_all_signals() {
    // SAFETY: the set is initialised by sigemptyset; sigprocmask is async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// One reaped child: pid and raw wait status.
pub fn reap_one() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// kill(2); errors (e.g. already gone) are returned, not fatal.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// A Unix SOCK_SEQPACKET socket pair (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: on success both descriptors are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A non-blocking close-on-exec pipe (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: on success both descriptors are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// read(2) into a buffer; `Ok(0)` at end of file, `WouldBlock` when empty.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`, which is writable.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// write(2) of a whole small buffer.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `buf`.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// poll(2) on a set of descriptors; returns the revents per descriptor.
pub fn poll(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<i16>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: the pointer and count describe `pfds`, which lives across the call.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![0; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents).collect())
}

/// Size in bytes of a block device.
pub fn block_device_bytes(path: &Path) -> io::Result<u64> {
    let f = std::fs::File::open(path)?;
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size) })?;
    Ok(size)
}

/// Asks the kernel to re-read a disk's partition table (BLKRRPART).
pub fn reread_partitions(disk: &Path) -> io::Result<()> {
    let f = std::fs::File::open(disk)?;
    const BLKRRPART: libc::c_ulong = 0x125F;
    // SAFETY: BLKRRPART takes no argument.
    check(unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) }).map(|_| ())
}

/// Grows a mounted ext4 filesystem to `blocks` blocks (EXT4_IOC_RESIZE_FS).
pub fn ext4_resize(mountpoint: &str, blocks: u64) -> io::Result<()> {
    let f = std::fs::File::open(mountpoint)?;
    // _IOW('f', 16, __u64)
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let n: u64 = blocks;
    // SAFETY: the ioctl reads one u64 through the pointer, which points at `n`.
    check(unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &n) }).map(|_| ())
}

/// statvfs(3): (block size, total blocks, free blocks available to unprivileged users).
pub fn statvfs(path: &str) -> io::Result<(u64, u64, u64)> {
    let p = cstr(path)?;
    // SAFETY: `st` is a valid out pointer; `p` a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        check(libc::statvfs(p.as_ptr(), &mut st))?;
        Ok((st.f_frsize as u64, st.f_blocks as u64, st.f_bavail as u64))
    }
}

/// Writes a sysctl-style file, ignoring a missing file.
pub fn write_file(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}
