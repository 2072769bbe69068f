//! Power: the ACPI/GPIO power button, and the clean shutdown every power path ends in.
//!
//! Triggers: the power button (an input device reporting KEY_POWER: ACPI's button driver on
//! PCs and QEMU q35, gpio-keys on arm boards and QEMU virt), Ctrl-Alt-Del (the kernel sends
//! SIGINT to init), signals (SIGTERM reboots, SIGUSR2 and SIGPWR power off, as in busybox),
//! and the appliance's request over its control socket.

use crate::bootinfo::PowerAction;
use crate::bytes::{ne_i32, ne16};
use crate::supervise::Supervisor;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;
use tracing::{error, info};

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// Size of `struct input_event` on 64-bit kernels.
const INPUT_EVENT_SIZE: usize = 24;

/// Input devices that can report the power key.
#[derive(Default)]
pub struct PowerButtons {
    open: Vec<(String, OwnedFd)>,
}

/// True if a sysfs `capabilities/key` bitmap has KEY_POWER set.
pub fn has_power_key(bitmap: &str) -> bool {
    // Words of `long` size, most significant first.
    let words: Vec<u64> = bitmap
        .split_ascii_whitespace()
        .rev()
        .filter_map(|w| u64::from_str_radix(w, 16).ok())
        .collect();
    let (word, bit) = (KEY_POWER as usize / 64, KEY_POWER as usize % 64);
    words.get(word).is_some_and(|w| w & (1 << bit) != 0)
}

impl PowerButtons {
    /// Opens every `/dev/input/event*` with a power key not already open.
    pub fn rescan(&mut self) {
        let Ok(rd) = std::fs::read_dir("/sys/class/input") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") || self.open.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let caps = std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .unwrap_or_default();
            if !has_power_key(&caps) {
                continue;
            }
            let path = format!("/dev/input/{name}");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags_nonblock()
                .open(&path);
            if let Ok(f) = file {
                let dev = std::fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
                info!("power button: {} ({path})", dev.trim());
                self.open.push((name, OwnedFd::from(f)));
            }
        }
    }

    /// Descriptors to poll.
    pub fn fds(&self) -> Vec<RawFd> {
        self.open.iter().map(|(_, f)| f.as_raw_fd()).collect()
    }

    /// Reads pending events from `fd`; true if the power key was pressed.
    pub fn pressed(&self, fd: RawFd) -> bool {
        let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
        let mut pressed = false;
        while let Ok(n) = crate::sys::read_fd(fd, &mut buf) {
            if n == 0 {
                break;
            }
            for ev in buf
                .get(..n)
                .unwrap_or_default()
                .chunks_exact(INPUT_EVENT_SIZE)
            {
                let kind = ne16(ev, 16);
                let code = ne16(ev, 18);
                let value = ne_i32(ev, 20);
                if kind == EV_KEY && code == KEY_POWER && value == 1 {
                    pressed = true;
                }
            }
        }
        pressed
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}

/// Stops the appliance, saves the random seed, unmounts, syncs and reboots or powers off.
/// Never returns: if the kernel refuses, init waits forever rather than exiting (which would
/// panic the kernel).
pub fn shutdown(sup: &mut Supervisor, action: PowerAction, why: &str) -> ! {
    let verb = match action {
        PowerAction::Reboot => "rebooting",
        PowerAction::Poweroff => "powering off",
    };
    info!("{verb} ({why})");
    crate::console::to_all_consoles(&format!("\ncairn: {verb} ({why})\n"));
    sup.stop(Duration::from_secs(10));
    // Nothing else should run, but make sure no process keeps the data partition busy.
    let _ = crate::sys::kill(-1, libc::SIGKILL);
    while crate::sys::reap_one().is_some() {}
    crate::entropy::save();
    crate::disk::unmount_all();
    let cmd = match action {
        PowerAction::Reboot => libc::RB_AUTOBOOT,
        PowerAction::Poweroff => libc::RB_POWER_OFF,
    };
    let e = crate::sys::reboot(cmd);
    error!("reboot(2) failed: {e}");
    loop {
        crate::sys::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_power_key_bit() {
        // ACPI "Power Button": only KEY_POWER (bit 116 = word 1, bit 52).
        assert!(has_power_key("10000000000000 0"));
        // A keyboard with many keys including power.
        assert!(has_power_key(
            "fffffffffffffffe 0 0 0 1cfff 10000000000000 fffffffffffffffe"
        ));
        assert!(!has_power_key("0"));
        assert!(!has_power_key(""));
        assert!(!has_power_key("zz yy"));
    }
}
