//! `cargo xtask flash --arch A /dev/sdX`: write the image to a USB stick, safely.

use crate::build::{self, ImageOptions};
use anyhow::{Context, Result, bail};
use cairn_image::Arch;
use std::io::{Read, Write};
use std::path::Path;

fn sysfs_name(dev: &Path) -> Result<String> {
    let canon =
        std::fs::canonicalize(dev).with_context(|| format!("{} does not exist", dev.display()))?;
    let name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .context("odd device path")?
        .to_string();
    Ok(name)
}

/// Refuses anything that is not a whole, unmounted disk big enough for the image.
fn check_target(dev: &Path, image_bytes: u64) -> Result<(String, u64)> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(dev).with_context(|| format!("{} does not exist", dev.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device", dev.display());
    }
    let name = sysfs_name(dev)?;
    let sys = Path::new("/sys/class/block").join(&name);
    if sys.join("partition").exists() {
        bail!(
            "{} is a partition; give the whole disk (e.g. /dev/sdb, not /dev/sdb1)",
            dev.display()
        );
    }
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))?.trim().parse()?;
    let bytes = sectors * 512;
    if bytes < image_bytes {
        bail!(
            "{} holds {} MiB; the image needs {} MiB",
            dev.display(),
            bytes >> 20,
            image_bytes >> 20
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if let Some(m) = mounts.lines().find(|l| {
        l.split_whitespace()
            .next()
            .and_then(|d| Path::new(d).file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&name))
    }) {
        bail!(
            "{} (or one of its partitions) is mounted: {m}; unmount it first",
            dev.display()
        );
    }
    let removable = std::fs::read_to_string(sys.join("removable")).unwrap_or_default();
    Ok((
        if removable.trim() == "1" {
            "removable".into()
        } else {
            "NOT removable".into()
        },
        bytes,
    ))
}

/// Writes the image of `arch`, with `models` baked in, to `dev`.
pub fn flash(arch: Arch, dev: &Path, yes: bool, models: &str) -> Result<()> {
    let out = build::image(
        arch,
        &ImageOptions {
            models: Some(models.to_string()),
            ..ImageOptions::default()
        },
    )?;
    let len = std::fs::metadata(&out.image)?.len();
    let (kind, bytes) = check_target(dev, len)?;
    let model = std::fs::read_to_string(
        Path::new("/sys/class/block")
            .join(sysfs_name(dev)?)
            .join("device/model"),
    )
    .unwrap_or_default();
    eprintln!(
        "xtask: about to ERASE {} ({} {}, {} MiB) and write the {arch} image ({} MiB)",
        dev.display(),
        model.trim(),
        kind,
        bytes >> 20,
        len >> 20
    );
    if !yes {
        eprint!("type the device path again to continue: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != dev.to_string_lossy() {
            bail!("not confirmed; nothing written");
        }
    }
    let mut src = std::fs::File::open(&out.image)?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(dev)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        done += n as u64;
        eprint!("\rxtask: {} / {} MiB", done >> 20, len >> 20);
    }
    dst.sync_all()?;
    eprintln!("\nxtask: done; the data partition grows to fill the stick on first boot");
    Ok(())
}
