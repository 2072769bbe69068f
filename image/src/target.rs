//! Build targets: `firmware/<arch>/target.toml`.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A supported CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// 64-bit x86 (PCs, q35).
    X86_64,
    /// 64-bit Arm (boards, servers, virt).
    Aarch64,
}

impl Arch {
    /// Every architecture Cairn builds for.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name used on the command line and in paths.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The architecture of the machine running this code.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(format!(
                "unknown architecture {other:?}: use x86_64 or aarch64"
            )),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// UEFI firmware QEMU boots the disk image with.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Uefi {
    /// Debian package that ships it.
    pub package: String,
    /// Read-only code volume.
    pub code: PathBuf,
    /// Template of the variable store (copied per VM).
    pub vars: PathBuf,
}

/// Curated kernel modules.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSelection {
    /// Loaded when a device asks for them.
    pub drivers: Vec<String>,
    /// Loaded at every boot.
    pub boot: Vec<String>,
}

/// One `target.toml`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Architecture name.
    pub arch: String,
    /// Debian's name for it.
    pub debian_arch: String,
    /// Rust target triple of the static binaries.
    pub rust_target: String,
    /// Kernel (meta)package.
    pub kernel_package: String,
    /// Package with the UKI stub.
    pub stub_package: String,
    /// Path of the stub inside that package.
    pub stub_path: String,
    /// Where the UKI goes on the ESP.
    pub efi_boot_path: String,
    /// Kernel command line.
    pub cmdline: String,
    /// QEMU's UEFI firmware.
    pub uefi: Uefi,
    /// Kernel modules.
    pub modules: ModuleSelection,
}

/// The repository root (the workspace that contains `firmware/`).
///
/// Cargo sets `CARGO_MANIFEST_DIR` when it runs a binary or a test, and that value wins over
/// the compiled-in one: clones that share a target directory (CI's cache) reuse each other's
/// artifacts, whose compiled-in path may name another clone.
pub fn repo_root() -> PathBuf {
    let here = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

impl Target {
    /// Loads `firmware/<arch>/target.toml` from the repository.
    pub fn load(arch: Arch) -> Result<Target> {
        Self::load_from(
            &repo_root()
                .join("firmware")
                .join(arch.name())
                .join("target.toml"),
        )
    }

    /// Loads a target file.
    pub fn load_from(path: &Path) -> Result<Target> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let t: Target =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if t.arch.parse::<Arch>().is_err() {
            bail!("{}: unknown arch {:?}", path.display(), t.arch);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shipped_targets_load() {
        for a in Arch::ALL {
            let t = Target::load(a).unwrap();
            assert_eq!(t.arch, a.name());
            assert!(t.modules.boot.contains(&"ext4".to_string()));
            assert!(t.efi_boot_path.starts_with("EFI/BOOT/BOOT"));
        }
    }

    #[test]
    fn wrong_arch_names_say_what_to_use() {
        let e = "riscv64".parse::<Arch>().unwrap_err();
        assert!(e.contains("x86_64 or aarch64"));
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
    }
}
