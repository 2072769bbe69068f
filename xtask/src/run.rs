//! `cargo xtask run`: build what is stale and boot the image in QEMU with the console on the
//! terminal and HTTPS forwarded to 127.0.0.1:8443. The VM's disk (a copy of the image grown
//! to 8 GiB, as if written to a USB stick) lives under `target/cairn/<arch>/run/` and keeps the
//! data partition between runs; a rebuilt image refreshes only its ESP there.

use crate::build::{self, ImageOptions};
use crate::deps;
use anyhow::{Context, Result, bail};
use cairn_image::{Arch, Target};
use cairn_init::gpt::{Gpt, SECTOR};
use cairn_qemu::{Attach, Boot, Console, Drive, Forward, Vm, VmConfig};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Size of the VM's disk.
const RUN_DISK_BYTES: u64 = 8 << 30;

/// Options of `xtask run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Guest architecture.
    pub arch: Arch,
    /// Boot the kernel directly instead of through UEFI.
    pub direct: bool,
    /// Host port for HTTPS.
    pub port: u16,
    /// Start from a fresh disk (drops the data partition).
    pub fresh: bool,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Models baked into the image (`default`, `all`, `none` or ids).
    pub models: String,
}

/// The partitions the image build owns (all but the data partition): name, first and last
/// sector.
fn image_parts(path: &Path) -> Result<Vec<(String, u64, u64)>> {
    let mut f = std::fs::File::open(path)?;
    let sectors = f.metadata()?.len() / SECTOR;
    let gpt = Gpt::read(&mut f, sectors).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    gpt.by_name(cairn_init::layout::ESP_LABEL)
        .context("image has no ESP")?;
    Ok(gpt
        .partitions
        .iter()
        .filter(|p| p.name != cairn_init::layout::DATA_LABEL)
        .map(|p| (p.name.clone(), p.first_lba, p.last_lba))
        .collect())
}

/// Makes the run disk: a new copy of the image, or the old disk with its ESP and model
/// partition refreshed from the new image (the data partition is kept).
fn prepare_disk(image: &Path, disk: &Path, fresh: bool) -> Result<()> {
    if fresh || !disk.exists() {
        cairn_image::disk::enlarged_copy(image, disk, RUN_DISK_BYTES)?;
        eprintln!(
            "xtask: new VM disk {} (8 GiB, grows on first boot)",
            build::rel(disk)
        );
        return Ok(());
    }
    let new = image_parts(image)?;
    let old = image_parts(disk)?;
    if new != old {
        bail!(
            "the image's partition layout (ESP, models) changed since {} was made; run with \
             --fresh to recreate the VM disk (this drops its data partition)",
            build::rel(disk)
        );
    }
    let mut src = std::fs::File::open(image)?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(disk)?;
    for (_, first, last) in &new {
        let start = first * SECTOR;
        src.seek(SeekFrom::Start(start))?;
        dst.seek(SeekFrom::Start(start))?;
        let copied = std::io::copy(&mut (&mut src).take((last - first + 1) * SECTOR), &mut dst)?;
        if copied != (last - first + 1) * SECTOR {
            bail!(
                "{} is shorter than its partition table says",
                image.display()
            );
        }
    }
    dst.sync_all()?;
    eprintln!(
        "xtask: VM disk {} kept; ESP and models refreshed from the new image",
        build::rel(disk)
    );
    Ok(())
}

/// Builds and boots.
pub fn run(opts: &RunOptions) -> Result<()> {
    let arch = opts.arch;
    deps::ensure(&deps::for_qemu(arch))?;
    if std::net::TcpListener::bind(("127.0.0.1", opts.port)).is_err() {
        bail!(
            "127.0.0.1:{} is in use (another `cargo xtask run`?); pick another with --port",
            opts.port
        );
    }
    let out = build::image(
        arch,
        &ImageOptions {
            models: Some(opts.models.clone()),
            ..ImageOptions::default()
        },
    )?;
    let target = Target::load(arch)?;
    let work = build::artifacts_dir(arch).join("run");
    std::fs::create_dir_all(&work)?;
    let disk = work.join("disk.img");
    prepare_disk(&out.image, &disk, opts.fresh)?;
    let boot = if opts.direct {
        Boot::Direct {
            kernel: out.vmlinuz.clone(),
            initrd: out.initramfs.clone(),
            cmdline: std::fs::read_to_string(&out.cmdline)?.trim().to_string(),
        }
    } else {
        Boot::Uefi {
            code: target.uefi.code.clone(),
            vars: target.uefi.vars.clone(),
        }
    };
    let mut cfg = VmConfig::new(arch, boot, &work);
    cfg.drives.push(Drive {
        path: disk,
        attach: if opts.direct {
            Attach::Virtio
        } else {
            Attach::UsbStick
        },
        cache: cairn_qemu::WriteCache::Host,
    });
    cfg.network = Some(vec![Forward {
        host: opts.port,
        guest: cairn_init::layout::HTTPS_PORT,
    }]);
    cfg.memory_mib = opts.memory_mib;
    cfg.console = Console::Terminal;
    // Probes KVM with a tiny guest (cached for `Vm::start`), saying so when it falls back.
    let accel = cairn_qemu::accel::detect(arch);
    eprintln!(
        "xtask: booting {arch} ({}, {accel}); console below, quit with Ctrl-A X\n\
         xtask: the console will be at https://127.0.0.1:{} (check the fingerprint on the banner)",
        if opts.direct {
            "direct kernel boot"
        } else {
            "UEFI, USB stick"
        },
        opts.port
    );
    // `cfg.accel` stays `Auto`: a guest that prints nothing under KVM is booted again under TCG.
    let mut vm = Vm::start(&cfg)?;
    let st = vm.wait()?;
    eprintln!(
        "xtask: QEMU exited ({st}); serial log in {}",
        build::rel(&work.join("serial.log"))
    );
    Ok(())
}
