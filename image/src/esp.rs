//! The EFI System Partition: a FAT32 volume written with the `fatfs` crate, with a fixed
//! timestamp and a volume serial derived from the content.

use anyhow::{Context, Result};
use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};
use std::io::{Cursor, Write};

/// Smallest FAT32 volume with 512-byte clusters (65,525 clusters plus FATs and reserved).
const MIN_FAT32_BYTES: u64 = 34 << 20;

/// A fixed clock for reproducible directory entries.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// FAT timestamps for a Unix time (clamped to FAT's 1980-2107 range).
fn fat_time(epoch: u64) -> DateTime {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + if month <= 2 { 1 } else { 0 }) as u16;
    DateTime {
        date: Date {
            year: year.clamp(1980, 2107),
            month,
            day,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs % 3600 / 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Builds the ESP image holding `files` (path, content), sized to fit them with slack.
pub fn build(files: &[(&str, &[u8])], volume_id: u32, epoch: u64) -> Result<Vec<u8>> {
    let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // Content plus 10 % and 2 MiB of slack for directory clusters and later config edits.
    let want = (payload + payload / 10 + (2 << 20)).max(MIN_FAT32_BYTES);
    let size = want.div_ceil(1 << 20) << 20;
    let mut img = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut img,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(512)
            .volume_id(volume_id)
            .volume_label(*b"CAIRN-ESP  "),
    )
    .context("formatting the ESP")?;
    img.set_position(0);
    // The time provider must be 'static; one small leak per image build.
    let clock: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    {
        let fs = FileSystem::new(&mut img, FsOptions::new().time_provider(clock))
            .context("opening the new ESP")?;
        for (path, data) in files {
            let root = fs.root_dir();
            let mut dir = root.clone();
            let parts: Vec<&str> = path.split('/').collect();
            let (name, parents) = parts.split_last().context("empty ESP path")?;
            for p in parents {
                dir = match dir.open_dir(p) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(p)?,
                };
            }
            let mut f = dir.create_file(name)?;
            f.truncate()?;
            f.write_all(data)
                .with_context(|| format!("writing {path} to the ESP (is it large enough?)"))?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(img.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn files_read_back_and_output_is_reproducible() {
        let uki = vec![0x5au8; 300_000];
        let files: [(&str, &[u8]); 2] = [
            ("EFI/BOOT/BOOTX64.EFI", &uki),
            ("cairn.toml.example", b"# x\n"),
        ];
        let a = build(&files, 0x1234_5678, 1_767_225_600).unwrap();
        let b = build(&files, 0x1234_5678, 1_767_225_600).unwrap();
        assert_eq!(a, b, "same inputs, same bytes");
        assert_eq!(a.len() as u64, MIN_FAT32_BYTES);
        let fs = FileSystem::new(Cursor::new(a), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        assert_eq!(fs.volume_id(), 0x1234_5678);
        let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, uki);
        let e = fs
            .root_dir()
            .iter()
            .find_map(|e| e.ok().filter(|e| e.file_name() == "cairn.toml.example"))
            .unwrap();
        assert_eq!(e.modified().date.year, 2026);
    }

    #[test]
    fn grows_for_large_payloads() {
        let big = vec![1u8; 40 << 20];
        let img = build(&[("EFI/BOOT/BOOTAA64.EFI", &big)], 1, 0).unwrap();
        assert!(img.len() as u64 >= (40 << 20) + (2 << 20));
    }

    #[test]
    fn fat_dates() {
        let t = fat_time(1_767_225_600); // 2026-01-01T00:00:00Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2026, 1, 1));
        let t = fat_time(0);
        assert_eq!(t.date.year, 1980, "clamped");
    }
}
