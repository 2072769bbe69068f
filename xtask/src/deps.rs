//! Host dependencies: each command checks what it needs and installs it with apt-get when it
//! can (root on Debian), or says exactly what to install.

use anyhow::{Result, bail};
use cairn_image::Arch;
use std::path::Path;
use std::process::Command;

/// How to tell a dependency is present.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// A program on PATH.
    Program(&'static str),
    /// A file.
    File(&'static str),
}

/// One Debian package and how to see it is installed.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    package: &'static str,
    check: Check,
}

impl Need {
    fn present(&self) -> bool {
        match self.check {
            Check::Program(p) => which(p),
            Check::File(f) => Path::new(f).exists(),
        }
    }
}

/// True if `program` is on PATH.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A need satisfied by the program `p` on PATH, from Debian package `package`.
pub const fn prog(package: &'static str, p: &'static str) -> Need {
    Need {
        package,
        check: Check::Program(p),
    }
}
/// A need satisfied by the file `f`, from Debian package `package`.
pub const fn file(package: &'static str, f: &'static str) -> Need {
    Need {
        package,
        check: Check::File(f),
    }
}

/// What building the static binaries for `arch` needs.
pub fn for_build(arch: Arch) -> Vec<Need> {
    match arch {
        Arch::X86_64 => vec![prog("gcc", "gcc")],
        Arch::Aarch64 => vec![
            prog("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
            file(
                "libc6-dev-arm64-cross",
                "/usr/aarch64-linux-gnu/include/stdint.h",
            ),
        ],
    }
}

/// What assembling an image needs.
pub fn for_image() -> Vec<Need> {
    vec![
        prog("e2fsprogs", "mke2fs"),
        prog("e2fsprogs", "debugfs"),
        prog("dpkg", "dpkg-deb"),
        prog("apt", "apt-get"),
    ]
}

/// What booting `arch` in QEMU needs.
pub fn for_qemu(arch: Arch) -> Vec<Need> {
    match arch {
        Arch::X86_64 => vec![
            prog("qemu-system-x86", "qemu-system-x86_64"),
            file("ovmf", "/usr/share/OVMF/OVMF_CODE_4M.fd"),
        ],
        Arch::Aarch64 => vec![
            prog("qemu-system-arm", "qemu-system-aarch64"),
            file("qemu-efi-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd"),
        ],
    }
}

/// What the unit tests need beyond the build (the UKI test reads the host's stub).
pub fn for_unit_tests() -> Vec<Need> {
    vec![file(
        "systemd-boot-efi",
        "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    )]
}

/// What the console's real-browser tests need: Chromium, and node with npm for playwright-core.
pub fn for_console_tests() -> Vec<Need> {
    vec![
        file("chromium", CHROMIUM),
        prog("nodejs", "node"),
        prog("npm", "npm"),
    ]
}

/// The Chromium binary the console tests drive (`CAIRN_CHROMIUM`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// What `bench inference` needs beyond a Python venv: CMake and a C++ toolchain to build
/// llama.cpp, pip to fetch its sources.
pub fn for_bench_inference() -> Vec<Need> {
    vec![
        prog("cmake", "cmake"),
        prog("g++", "g++"),
        prog("make", "make"),
        prog("tar", "tar"),
        prog("python3-pip", "pip3"),
    ]
}

/// Installs what is missing, or fails naming the exact command to run.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|n| !n.present())
        .map(|n| n.package)
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !which("apt-get") {
        bail!(
            "missing host packages: {list}\n  install them with:\n    sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("xtask: installing host packages: {list}");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .envs(env)
        .status()?;
    if !update.success() {
        eprintln!("xtask: apt-get update failed; trying the install anyway");
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .envs(env)
        .status()?;
    if !st.success() {
        bail!("apt-get install {list} failed");
    }
    let still: Vec<&str> = needs
        .iter()
        .filter(|n| !n.present())
        .map(|n| n.package)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed {list}, but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// Adds a Rust target with rustup if it is not installed.
pub fn ensure_rust_target(triple: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let installed = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == triple),
        Err(_) => bail!(
            "rustup not found: install Rust with rustup, then run `rustup target add {triple}`"
        ),
    };
    if !installed {
        eprintln!("xtask: rustup target add {triple}");
        let st = Command::new("rustup")
            .args(["target", "add", triple])
            .status()?;
        if !st.success() {
            bail!("`rustup target add {triple}` failed");
        }
    }
    Ok(())
}
