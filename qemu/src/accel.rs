//! Accelerator detection: KVM only when a guest really runs under it here, else TCG.
//!
//! `/dev/kvm` opening is not enough: on some hosts QEMU dies as soon as a vCPU starts (an MSR
//! the host refuses), on others QEMU's `query-kvm` says enabled and the guest executes nothing
//! at all. So the probe boots a tiny guest under KVM — a few instructions run from the reset
//! vector that write a marker to the first serial port and power the VM off — and uses KVM only
//! when the marker arrives within [`PROBE_TIMEOUT`]. The answer is cached for the life of the
//! process; a boot that later shows KVM printing nothing ([`kvm_failed`]) turns it to TCG.
//! `CAIRN_ACCEL=tcg|kvm` overrides.

use crate::{Arch, Boot, VmConfig};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Probe: KVM if usable for this guest, else TCG.
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

/// How long the probe guest may take to print its marker.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probe guest prints on its serial port when it runs.
pub const PROBE_MARKER: &str = "cairn-probe-ok";

/// The decision for this process: `None` until probed.
static DECIDED: Mutex<Option<Accel>> = Mutex::new(None);

/// Where the accelerator choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `CAIRN_ACCEL` names it.
    Forced,
    /// The probe (or a later boot) chose it.
    Probed,
}

/// The accelerator to use for a guest of `arch` on this host.
pub fn detect(arch: Arch) -> Accel {
    detect_with_source(arch).0
}

/// [`detect`], saying whether `CAIRN_ACCEL` forced the answer (a forced KVM is never replaced
/// by TCG behind the user's back).
pub fn detect_with_source(arch: Arch) -> (Accel, Source) {
    match std::env::var("CAIRN_ACCEL").as_deref() {
        Ok("tcg") => return (Accel::Tcg, Source::Forced),
        Ok("kvm") => return (Accel::Kvm, Source::Forced),
        _ => {}
    }
    if Arch::host() != Some(arch) {
        return (Accel::Tcg, Source::Probed);
    }
    let mut decided = DECIDED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = *decided {
        return (a, Source::Probed);
    }
    let (accel, note) = decide(kvm_opens(), || guest_runs(arch, Accel::Kvm, PROBE_TIMEOUT));
    if let Some(note) = note {
        eprintln!("cairn-qemu: {note}");
    }
    *decided = Some(accel);
    (accel, Source::Probed)
}

/// Records that a boot under KVM printed nothing: every later [`detect`] in this process
/// answers TCG.
pub fn kvm_failed() {
    *DECIDED.lock().unwrap_or_else(|p| p.into_inner()) = Some(Accel::Tcg);
}

/// The probe's decision from its two findings: whether `/dev/kvm` opens, and (asked only when
/// it does) whether the tiny guest printed its marker under KVM. Returns the accelerator and,
/// when KVM is not used, a line saying why.
pub fn decide(
    kvm_opens: Result<(), String>,
    guest_runs_under_kvm: impl FnOnce() -> Result<(), String>,
) -> (Accel, Option<String>) {
    if let Err(e) = kvm_opens {
        return (
            Accel::Tcg,
            Some(format!(
                "KVM is not usable ({e}); using TCG (software emulation, slow)"
            )),
        );
    }
    match guest_runs_under_kvm() {
        Ok(()) => (Accel::Kvm, None),
        Err(e) => (
            Accel::Tcg,
            Some(format!(
                "/dev/kvm opens, but a test guest under KVM did not run ({e}); falling back \
                 to TCG (software emulation, slow)"
            )),
        ),
    }
}

fn kvm_opens() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// The probe guest for `arch`: a flat firmware image that writes [`PROBE_MARKER`] and a line
/// break to the first serial port, then powers the VM off (x86: `isa-debug-exit` at port 0xf4;
/// aarch64: PSCI `SYSTEM_OFF`).
pub fn probe_image(arch: Arch) -> Vec<u8> {
    let msg = format!("{PROBE_MARKER}\r\n\0");
    match arch {
        Arch::X86_64 => {
            // 64 KiB (QEMU wants a multiple of 64 KiB), mapped just below 4 GiB; the CPU starts
            // in real mode at offset 0xfff0 with the code segment's base at 0xffff0000.
            let mut img = vec![0xffu8; 0x1_0000];
            #[rustfmt::skip]
            let code: [u8; 22] = [
                0xba, 0xf8, 0x03, // 0xff00: mov dx, 0x3f8 (COM1)
                0xbe, 0x40, 0xff, // 0xff03: mov si, 0xff40 (the message)
                0x2e, 0xac,       // 0xff06: lodsb al, cs:[si]
                0x84, 0xc0,       // 0xff08: test al, al
                0x74, 0x03,       // 0xff0a: jz 0xff0f
                0xee,             // 0xff0c: out dx, al
                0xeb, 0xf7,       // 0xff0d: jmp 0xff06
                0xb0, 0x00,       // 0xff0f: mov al, 0
                0xe6, 0xf4,       // 0xff11: out 0xf4, al (isa-debug-exit)
                0xf4,             // 0xff13: hlt
                0xeb, 0xfd,       // 0xff14: jmp 0xff13
            ];
            img[0xff00..0xff00 + code.len()].copy_from_slice(&code);
            img[0xff40..0xff40 + msg.len()].copy_from_slice(msg.as_bytes());
            // The reset vector: jmp 0xff00.
            img[0xfff0..0xfff3].copy_from_slice(&[0xe9, 0x0d, 0xff]);
            img
        }
        Arch::Aarch64 => {
            // Loaded into the flash at address 0 of `virt`, where the CPU starts (EL1).
            let code: [u32; 11] = [
                0xd2a1_2001, // mov x1, #0x09000000 (PL011 UART)
                0x1000_0142, // adr x2, msg (0x2c)
                0x3840_1440, // 1: ldrb w0, [x2], #1
                0x3400_0060, // cbz w0, 2f
                0x3900_0020, // strb w0, [x1]
                0x17ff_fffd, // b 1b
                0x5280_0100, // 2: mov w0, #0x8
                0x72b0_8000, // movk w0, #0x8400, lsl #16 (PSCI SYSTEM_OFF)
                0xd400_0002, // hvc #0
                0xd503_207f, // 3: wfi
                0x17ff_ffff, // b 3b
            ];
            let mut img: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
            img.extend_from_slice(msg.as_bytes());
            img
        }
    }
}

/// Boots the probe guest under `accel` and succeeds when it prints [`PROBE_MARKER`] within
/// `timeout`; the error says what happened instead.
pub fn guest_runs(arch: Arch, accel: Accel, timeout: Duration) -> Result<(), String> {
    run_image(arch, accel, &probe_image(arch), timeout)
}

/// Boots the flat firmware `image` and waits for [`PROBE_MARKER`] on its console.
fn run_image(arch: Arch, accel: Accel, image: &[u8], timeout: Duration) -> Result<(), String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "cairn-probe-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> anyhow::Result<()> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("probe.bin");
        std::fs::write(&path, image)?;
        let mut cfg = VmConfig::new(arch, Boot::Firmware { image: path }, &dir);
        cfg.accel = accel;
        cfg.network = None;
        cfg.memory_mib = 64;
        cfg.cpus = 1;
        cfg.no_reboot = true;
        if arch == Arch::X86_64 {
            cfg.extra = vec![
                "-device".into(),
                "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            ];
        }
        let mut vm = crate::Vm::start(&cfg)?;
        vm.wait_for_console(PROBE_MARKER, timeout)?;
        Ok(())
    })();
    // QEMU's own complaint, if any (e.g. "failed to set MSR 0x10a").
    let stderr = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| {
        // The first line is the reason; the console tail after it is empty or noise.
        let e = format!("{e:#}");
        let reason = e.lines().next().unwrap_or_default();
        let reason = reason.trim_end_matches("; console tail:");
        match stderr
            .lines()
            .rev()
            .find(|l| l.contains("error") || l.contains("failed"))
        {
            Some(l) => format!("{reason}; QEMU said: {}", l.trim()),
            None => reason.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_that_opens_but_runs_nothing_falls_back_to_tcg_with_a_message() {
        let (a, note) = decide(Ok(()), || {
            Err("console did not show \"cairn-probe-ok\" within 10 s".into())
        });
        assert_eq!(a, Accel::Tcg);
        let note = note.expect("the fallback is announced");
        assert!(note.contains("falling back to TCG"), "{note}");
        assert!(note.contains("did not show"), "the reason is kept: {note}");
    }

    #[test]
    fn kvm_is_used_only_when_the_guest_runs() {
        assert_eq!(decide(Ok(()), || Ok(())), (Accel::Kvm, None));
        let mut asked = false;
        let (a, note) = decide(Err("/dev/kvm: Permission denied".into()), || {
            asked = true;
            Ok(())
        });
        assert_eq!(a, Accel::Tcg);
        assert!(!asked, "no guest is booted when /dev/kvm does not open");
        assert!(note.unwrap().contains("Permission denied"));
    }

    /// The probe guest itself, run for real under TCG: proves its code prints the marker, so a
    /// silent run under KVM means KVM, not the guest.
    #[test]
    fn probe_guest_prints_its_marker_under_tcg() {
        for arch in Arch::ALL {
            if let Err(e) = guest_runs(arch, Accel::Tcg, Duration::from_secs(120)) {
                panic!(
                    "{arch}: {e} (the QEMU tests need Debian's {} package)",
                    crate::qemu_package(arch)
                );
            }
        }
    }

    #[test]
    fn a_guest_that_prints_nothing_is_reported_not_waited_on() {
        // Halts at the reset vector: what a guest under a KVM that runs nothing looks like.
        let silent = vec![0xf4u8; 0x1_0000];
        let e = run_image(Arch::X86_64, Accel::Tcg, &silent, Duration::from_secs(2)).unwrap_err();
        assert!(
            e.contains("did not show \"cairn-probe-ok\" within 2 s"),
            "{e}"
        );
    }
}
