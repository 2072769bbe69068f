//! The boot-benchmark floor: the smallest init that proves the kernel reached userspace.
//! It prints a marker with the kernel's boot clock on the console and powers the machine off.

#[cfg(target_os = "linux")]
fn main() {
    use std::io::Write;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let ms = ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
    let _ = std::fs::create_dir_all("/dev");
    // SAFETY: mounting devtmpfs with static NUL-terminated strings; failure is tolerated.
    unsafe {
        libc::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        );
    }
    if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "cairn-floor: hello from init at {ms} ms");
    }
    loop {
        // SAFETY: reboot takes no pointers; on failure we retry after a pause.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {}
