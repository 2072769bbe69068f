//! Accelerator detection: KVM only when it really runs a guest here, else TCG.
//!
//! On some hosts `/dev/kvm` opens but QEMU dies as soon as a vCPU runs (e.g. an MSR the host
//! refuses), so the probe boots a firmware-only guest for a moment and checks it is still
//! running. The answer is cached for the life of the process. `CAIRN_ACCEL=tcg|kvm` overrides.

use crate::{Arch, qemu_binary};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
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

static KVM_WORKS: OnceLock<bool> = OnceLock::new();

/// The accelerator to use for a guest of `arch` on this host.
pub fn detect(arch: Arch) -> Accel {
    match std::env::var("CAIRN_ACCEL").as_deref() {
        Ok("tcg") => return Accel::Tcg,
        Ok("kvm") => return Accel::Kvm,
        _ => {}
    }
    if Arch::host() != Some(arch) {
        return Accel::Tcg;
    }
    if *KVM_WORKS.get_or_init(|| probe_kvm(arch)) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn probe_kvm(arch: Arch) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let machine = match arch {
        Arch::X86_64 => "q35",
        Arch::Aarch64 => "virt",
    };
    let child = Command::new(qemu_binary(arch))
        .args([
            "-accel", "kvm", "-cpu", "host", "-machine", machine, "-m", "64",
        ])
        .args(["-nodefaults", "-display", "none", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return false;
    };
    let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
    // Let the guest run its firmware for a while, then ask whether it still runs.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = stdin.write_all(b"{\"execute\":\"query-status\"}\n{\"execute\":\"quit\"}\n");
    let mut running = false;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("\"status\": \"running\"") || line.contains("\"status\":\"running\"") {
            running = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    running
}
