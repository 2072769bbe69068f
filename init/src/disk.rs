//! Disks: find the ESP, the model partition and the data partition by GPT name and type,
//! grow the data partition to fill a bigger disk, mount them, and grow ext4 online.
//!
//! Nothing here ever formats a partition. A data partition that does not mount leaves the
//! appliance in degraded, read-only mode with the reason shown on the console and in the API.

use crate::gpt::{Gpt, SECTOR};
use crate::layout;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// A partition found on a disk.
#[derive(Debug, Clone)]
pub struct PartDev {
    /// Disk name, e.g. `vda` or `sda`.
    pub disk: String,
    /// Partition number.
    pub number: u32,
    /// Device node, e.g. `/dev/vda2`.
    pub dev: PathBuf,
    /// Size in bytes per the partition table.
    pub bytes: u64,
}

/// The disk holding Cairn's partitions.
#[derive(Debug, Clone)]
pub struct Found {
    /// Disk name.
    pub disk: String,
    /// Disk size in sectors.
    pub sectors: u64,
    /// Its partition table.
    pub gpt: Gpt,
    /// The ESP, when present.
    pub esp: Option<PartDev>,
    /// The data partition.
    pub data: Option<PartDev>,
    /// The read-only model partition, when the image carries models.
    pub models: Option<PartDev>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whole disks the kernel knows, largest first within each kind, skipping RAM and loop devices.
fn disks() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let skip = ["loop", "ram", "zram", "sr", "fd", "dm-", "md"]
                .iter()
                .any(|p| name.starts_with(p));
            if !skip && read_u64(&e.path().join("size")).unwrap_or(0) > 0 {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// The sysfs name of partition `number` of `disk` (`vda2`, `nvme0n1p2`, `mmcblk0p2`).
fn partition_name(disk: &str, number: u32) -> Option<String> {
    let rd = std::fs::read_dir(Path::new("/sys/block").join(disk)).ok()?;
    for e in rd.flatten() {
        if read_u64(&e.path().join("partition")) == Some(number as u64) {
            return Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

fn part_dev(disk: &str, gpt: &Gpt, number: u32) -> Option<PartDev> {
    let p = gpt.partitions.iter().find(|p| p.number == number)?;
    let name = partition_name(disk, number)?;
    Some(PartDev {
        disk: disk.to_string(),
        number,
        dev: Path::new("/dev").join(name),
        bytes: p.size_bytes(),
    })
}

/// Looks for a disk whose GPT has a partition named `data_label` (preferring one that also
/// has an ESP). Returns `None` while no such disk has appeared.
pub fn find(data_label: &str) -> Option<Found> {
    let mut best: Option<Found> = None;
    for disk in disks() {
        let base = Path::new("/sys/block").join(&disk);
        if read_u64(&base.join("queue/logical_block_size")).unwrap_or(512) != SECTOR {
            continue;
        }
        let Some(sectors) = read_u64(&base.join("size")) else {
            continue;
        };
        let dev = Path::new("/dev").join(&disk);
        let Ok(mut f) = std::fs::File::open(&dev) else {
            continue;
        };
        let Ok(gpt) = Gpt::read(&mut f, sectors) else {
            continue;
        };
        let Some(data) = gpt.by_name(data_label).map(|p| p.number) else {
            continue;
        };
        let esp = gpt
            .by_type(layout::ESP_TYPE)
            .and_then(|p| part_dev(&disk, &gpt, p.number));
        let data = part_dev(&disk, &gpt, data);
        let models = gpt
            .by_name(layout::MODELS_LABEL)
            .and_then(|p| part_dev(&disk, &gpt, p.number));
        let found = Found {
            disk,
            sectors,
            gpt,
            esp,
            data,
            models,
        };
        let better = match &best {
            None => true,
            Some(b) => b.esp.is_none() && found.esp.is_some(),
        };
        if better && found.data.is_some() {
            best = Some(found);
        }
    }
    best
}

pub use crate::bootinfo::Growth;

/// Moves the backup GPT to the end of a bigger disk and enlarges the data partition, then
/// makes the kernel re-read the table. Must run before anything on the disk is mounted.
pub fn grow_partition(found: &Found, data_label: &str) -> Result<Option<Growth>, String> {
    let Some(data) = found.gpt.by_name(data_label) else {
        return Ok(None);
    };
    let Some(grown) = found.gpt.grown(found.sectors, data.number) else {
        return Ok(None);
    };
    let before = data.size_bytes();
    let after = grown.by_name(data_label).map_or(before, |p| p.size_bytes());
    let dev = Path::new("/dev").join(&found.disk);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    grown
        .write(&mut f)
        .map_err(|e| format!("writing the grown partition table: {e}"))?;
    f.sync_all()
        .map_err(|e| format!("syncing the partition table: {e}"))?;
    drop(f);
    crate::sys::reread_partitions(&dev).map_err(|e| format!("re-reading partitions: {e}"))?;
    // The kernel re-creates the partition devices; wait until the new size shows.
    let part = partition_name(&found.disk, data.number).unwrap_or_default();
    for _ in 0..200 {
        let sysfs = Path::new("/sys/block")
            .join(&found.disk)
            .join(&part)
            .join("size");
        if read_u64(&sysfs).map(|s| s * SECTOR) == Some(after)
            && Path::new("/dev").join(&part).exists()
        {
            break;
        }
        crate::sys::sleep(std::time::Duration::from_millis(10));
    }
    info!(
        "grew {} from {} MiB to {} MiB",
        data_label,
        before >> 20,
        after >> 20
    );
    Ok(Some(Growth {
        from_bytes: before,
        to_bytes: after,
    }))
}

/// Mounts the ESP read-only at `/boot`.
pub fn mount_esp(esp: &PartDev) -> Result<(), String> {
    let flags = libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC;
    crate::sys::mount(
        &esp.dev.to_string_lossy(),
        layout::BOOT_MOUNT,
        "vfat",
        flags,
        // Readable by root and the appliance's group (the appliance reads `cairn.toml`).
        Some(format!("uid=0,gid={},umask=0027", layout::APPLIANCE_GID).as_str()),
    )
    .map_err(|e| format!("mounting ESP {}: {e}", esp.dev.display()))
}

/// Mounts the model partition read-only at `/models` (ext4 without a journal).
pub fn mount_models(models: &PartDev) -> Result<(), String> {
    let flags = libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID | libc::MS_NOEXEC;
    crate::sys::mount(
        &models.dev.to_string_lossy(),
        layout::MODELS_MOUNT,
        "ext4",
        flags,
        None,
    )
    .map_err(|e| format!("mounting model partition {}: {e}", models.dev.display()))
}

/// Mounts the data partition read-write at `/data` (ext4; never formats).
pub fn mount_data(data: &PartDev) -> Result<(), String> {
    let flags = libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOSUID;
    crate::sys::mount(
        &data.dev.to_string_lossy(),
        layout::DATA_MOUNT,
        "ext4",
        flags,
        Some("errors=remount-ro"),
    )
    .map_err(|e| format!("mounting data partition {}: {e}", data.dev.display()))
}

/// Grows the mounted data filesystem to fill its partition (online, EXT4_IOC_RESIZE_FS).
pub fn grow_filesystem(part_bytes: u64) -> Result<bool, String> {
    let (bsize, blocks, _) = crate::sys::statvfs(layout::DATA_MOUNT)
        .map_err(|e| format!("statvfs {}: {e}", layout::DATA_MOUNT))?;
    if bsize == 0 {
        return Ok(false);
    }
    let want = part_bytes / bsize;
    // statvfs excludes metadata overhead, so compare with a margin of 5 %.
    if want <= blocks + blocks / 20 {
        return Ok(false);
    }
    crate::sys::ext4_resize(layout::DATA_MOUNT, want)
        .map_err(|e| format!("online resize to {want} blocks: {e}"))?;
    let (_, after, _) = crate::sys::statvfs(layout::DATA_MOUNT).unwrap_or((bsize, want, 0));
    info!(
        "data filesystem grown from {} MiB to {} MiB",
        (blocks * bsize) >> 20,
        (after * bsize) >> 20
    );
    Ok(true)
}

/// Remounts `/data` read-only and unmounts it (at shutdown); best effort.
pub fn unmount_all() {
    crate::sys::sync();
    for m in [layout::DATA_MOUNT, layout::BOOT_MOUNT] {
        if let Err(e) = crate::sys::umount(m, 0) {
            if e.raw_os_error() == Some(libc::EINVAL) {
                continue; // not mounted
            }
            warn!("unmounting {m}: {e}; remounting read-only");
            let _ = crate::sys::mount("", m, "", libc::MS_REMOUNT | libc::MS_RDONLY, None);
        }
    }
    crate::sys::sync();
}
