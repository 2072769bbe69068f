//! Static musl binaries for the image, cross-compiled for aarch64 on x86_64, and the images.

use crate::deps;
use anyhow::{Context, Result, bail};
use cairn_image::{Arch, Target};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    cairn_image::target::repo_root()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<repo>/target`).
pub fn cargo_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Where the image artifacts of `arch` go: `<repo>/target/cairn/<arch>`.
pub fn artifacts_dir(arch: Arch) -> PathBuf {
    repo_root().join("target").join("cairn").join(arch.name())
}

/// The cargo command (the one running xtask).
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// SOURCE_DATE_EPOCH: the environment's, else the last commit's time, else a fixed date.
pub fn source_date_epoch() -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    let git = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(repo_root())
        .output();
    if let Ok(o) = git
        && let Ok(v) = String::from_utf8_lossy(&o.stdout).trim().parse()
    {
        return v;
    }
    1_767_225_600 // 2026-01-01
}

/// Paths of the static binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// cairn-init.
    pub init: PathBuf,
    /// cairn.
    pub cairn: PathBuf,
    /// The boot benchmark's hello-world init.
    pub floor: PathBuf,
}

/// Environment for cross C compilers (ring's and other crates' C code).
fn cross_env(cmd: &mut Command, arch: Arch) {
    match arch {
        Arch::X86_64 => {
            cmd.env("CC_x86_64_unknown_linux_musl", "gcc");
            cmd.env("AR_x86_64_unknown_linux_musl", "ar");
        }
        Arch::Aarch64 => {
            cmd.env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc");
            cmd.env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar");
        }
    }
}

/// `cargo <sub> --release --locked --target <arch's musl target>` with the environment the
/// image's binaries are built in (cross C compiler, remapped paths, SOURCE_DATE_EPOCH).
///
/// `cargo xtask test` runs the tests through this too, so the tests and the image share one
/// build and the tests exercise the code that ships.
pub fn musl_cargo(arch: Arch, sub: &str) -> Result<Command> {
    let target = Target::load(arch)?;
    deps::ensure(&deps::for_build(arch))?;
    deps::ensure_rust_target(&target.rust_target)?;
    let root = repo_root();
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    // Paths of this machine must not end up in the binaries.
    let rustflags = format!(
        "--remap-path-prefix={}=/cairn --remap-path-prefix={home}=/cargo",
        root.display()
    );
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .args([
            sub,
            "--release",
            "--locked",
            "--target",
            &target.rust_target,
        ])
        .env("SOURCE_DATE_EPOCH", source_date_epoch().to_string())
        .env("RUSTFLAGS", rustflags);
    cross_env(&mut cmd, arch);
    Ok(cmd)
}

/// Builds cairn-init, cairn and floor-init as static musl binaries for `arch`.
pub fn static_binaries(arch: Arch) -> Result<Binaries> {
    let target = Target::load(arch)?;
    let mut cmd = musl_cargo(arch, "build")?;
    // The whole workspace's libraries and binaries, not just the two shipped: Cargo unifies
    // dependency features over the packages selected, and with the same selection as
    // `cargo xtask test` the image reuses the test build instead of rebuilding half of it.
    cmd.args(["--workspace", "--lib", "--bins"]);
    eprintln!("xtask: building static binaries for {arch}");
    let st = cmd.status().context("running cargo")?;
    if !st.success() {
        bail!("building the {arch} binaries failed");
    }
    let dir = cargo_target_dir().join(&target.rust_target).join("release");
    let bins = Binaries {
        init: dir.join("cairn-init"),
        cairn: dir.join("cairn"),
        floor: dir.join("floor-init"),
    };
    for p in [&bins.init, &bins.cairn, &bins.floor] {
        if !p.exists() {
            bail!("cargo did not produce {}", p.display());
        }
    }
    Ok(bins)
}

/// Options of `xtask image`.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Use this kernel package.
    pub kernel_deb: Option<PathBuf>,
    /// Data partition size in the image, MiB.
    pub data_mib: Option<u64>,
    /// Rebuild even if up to date.
    pub force: bool,
    /// Models to bake into the image: `default`, `all`, `none` or ids (`None`: none).
    pub models: Option<String>,
}

/// Builds (or keeps, when up to date) the artifacts for `arch`.
pub fn image(arch: Arch, opts: &ImageOptions) -> Result<cairn_image::Outputs> {
    deps::ensure(&deps::for_image())?;
    let bins = static_binaries(arch)?;
    let target = Target::load(arch)?;
    let inputs = cairn_image::Inputs {
        arch,
        target,
        init_bin: bins.init,
        cairn_bin: bins.cairn,
        kernel_deb: opts.kernel_deb.clone(),
        source_date_epoch: source_date_epoch(),
        out_dir: artifacts_dir(arch),
        data_mib: opts.data_mib.unwrap_or(16),
        version: env!("CARGO_PKG_VERSION").to_string(),
        force: opts.force,
        models: match &opts.models {
            Some(which) => crate::models::image_inputs(which)?,
            None => Vec::new(),
        },
    };
    eprintln!("xtask: assembling the {arch} image");
    let out = cairn_image::build(&inputs)?;
    let size = std::fs::metadata(&out.image)?.len();
    eprintln!(
        "xtask: {} {} ({} MiB)",
        if out.rebuilt { "built" } else { "up to date:" },
        out.image.display(),
        size >> 20
    );
    Ok(out)
}

/// Relative path for messages.
pub fn rel(p: &Path) -> String {
    p.strip_prefix(repo_root())
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}
