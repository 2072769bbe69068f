//! The GPT disk image: protective MBR and GPT (cairn-init's `gpt` module, shared with the
//! first-boot grower), the ESP at 1 MiB, the read-only model partition when the image carries
//! models, the data partition last (so it can grow into a bigger disk), and the backup table
//! at the end. Partition and disk GUIDs are derived from the content.

use anyhow::{Context, Result};
use cairn_init::gpt::{ALIGN, Gpt, Guid, Partition, SECTOR};
use cairn_init::layout;
use sha2::{Digest, Sha256};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// A stable GUID from a label and content digests.
pub fn derived_guid(label: &str, parts: &[&[u8]]) -> Guid {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Guid::from_hash(b)
}

/// Where each partition landed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed {
    /// GPT name.
    pub name: String,
    /// Type GUID.
    pub type_guid: String,
    /// Unique GUID.
    pub guid: String,
    /// First sector.
    pub first_lba: u64,
    /// Last sector.
    pub last_lba: u64,
}

/// Writes the disk image: `esp` bytes, the model file system image at `models_path` (if
/// any) and the data file system image at `data_path`.
pub fn assemble(
    out: &Path,
    esp: &[u8],
    models_path: Option<&Path>,
    data_path: &Path,
    digest: &[u8],
) -> Result<Vec<Placed>> {
    let data_len = std::fs::metadata(data_path)?.len();
    let esp_sectors = (esp.len() as u64).div_ceil(SECTOR);
    let data_sectors = data_len.div_ceil(SECTOR);
    let esp_first = ALIGN;
    let after_esp = (esp_first + esp_sectors).div_ceil(ALIGN) * ALIGN;
    let models = match models_path {
        Some(p) => {
            let sectors = std::fs::metadata(p)?.len().div_ceil(SECTOR);
            Some((p, after_esp, after_esp + sectors - 1))
        }
        None => None,
    };
    let data_first = match models {
        Some((_, _, last)) => (last + 1).div_ceil(ALIGN) * ALIGN,
        None => after_esp,
    };
    let data_last = data_first + data_sectors - 1;
    // One aligned MiB at the end holds the backup table.
    let total = (data_last + 1).div_ceil(ALIGN) * ALIGN + ALIGN;
    let gpt = Gpt {
        disk_guid: derived_guid("cairn-disk", &[digest]),
        sectors: total,
        partitions: vec![
            Partition {
                number: 1,
                type_guid: layout::ESP_TYPE,
                guid: derived_guid(layout::ESP_LABEL, &[digest]),
                first_lba: esp_first,
                last_lba: esp_first + esp_sectors - 1,
                attributes: 0,
                name: layout::ESP_LABEL.into(),
            },
            Partition {
                number: if models.is_some() { 3 } else { 2 },
                type_guid: layout::DATA_TYPE,
                guid: derived_guid(layout::DATA_LABEL, &[digest]),
                first_lba: data_first,
                last_lba: data_last,
                attributes: 0,
                name: layout::DATA_LABEL.into(),
            },
        ],
    };
    let mut gpt = gpt;
    if let Some((_, first, last)) = models {
        gpt.partitions.insert(
            1,
            Partition {
                number: 2,
                type_guid: layout::MODELS_TYPE,
                guid: derived_guid(layout::MODELS_LABEL, &[digest]),
                first_lba: first,
                last_lba: last,
                // GPT attribute bit 60: read-only.
                attributes: 1 << 60,
                name: layout::MODELS_LABEL.into(),
            },
        );
    }
    let tmp = out.with_extension("img.tmp");
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.set_len(total * SECTOR)?;
        gpt.write(&mut f)
            .map_err(|e| anyhow::anyhow!("writing GPT: {e}"))?;
        f.seek(SeekFrom::Start(esp_first * SECTOR))?;
        f.write_all(esp)?;
        if let Some((p, first, _)) = models {
            f.seek(SeekFrom::Start(first * SECTOR))?;
            let mut m = std::fs::File::open(p)?;
            std::io::copy(&mut m, &mut f)?;
        }
        f.seek(SeekFrom::Start(data_first * SECTOR))?;
        let mut d = std::fs::File::open(data_path)?;
        std::io::copy(&mut d, &mut f)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, out)?;
    Ok(gpt
        .partitions
        .iter()
        .map(|p| Placed {
            name: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            guid: p.guid.to_string(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
        })
        .collect())
}

/// Copies a built image to `dst` and makes it `bytes` long (sparse), as when it is written to
/// a bigger stick. The partition table still describes the small image until first boot.
pub fn enlarged_copy(src: &Path, dst: &Path, bytes: u64) -> Result<()> {
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    let f = std::fs::OpenOptions::new().write(true).open(dst)?;
    f.set_len(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reads_back_with_aligned_partitions() {
        let dir = std::env::temp_dir().join(format!("cairn-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.img");
        std::fs::write(&data, vec![0xddu8; 3 << 20]).unwrap();
        let esp = vec![0xeeu8; 5 << 20];
        let out = dir.join("disk.img");
        let placed = assemble(&out, &esp, None, &data, b"digest").unwrap();
        let mut f = std::fs::File::open(&out).unwrap();
        let sectors = f.metadata().unwrap().len() / SECTOR;
        let gpt = Gpt::read(&mut f, sectors).unwrap();
        assert_eq!(gpt.partitions.len(), 2);
        for p in &gpt.partitions {
            assert_eq!(p.first_lba % ALIGN, 0);
        }
        assert_eq!(placed[1].name, "CAIRN-DATA");
        let bytes = std::fs::read(&out).unwrap();
        let esp_at = (gpt.partitions[0].first_lba * SECTOR) as usize;
        assert!(bytes[esp_at..esp_at + (5 << 20)].iter().all(|b| *b == 0xee));
        let data_at = (gpt.partitions[1].first_lba * SECTOR) as usize;
        assert!(
            bytes[data_at..data_at + (3 << 20)]
                .iter()
                .all(|b| *b == 0xdd)
        );
        // Same digest, same GUIDs.
        assert_eq!(derived_guid("x", &[b"d"]), derived_guid("x", &[b"d"]));
        assert_ne!(derived_guid("x", &[b"d"]), derived_guid("y", &[b"d"]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn models_partition_sits_between_esp_and_data() {
        let dir = std::env::temp_dir().join(format!("cairn-disk-m-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (data, models) = (dir.join("data.img"), dir.join("models.img"));
        std::fs::write(&data, vec![0xddu8; 3 << 20]).unwrap();
        std::fs::write(&models, vec![0xaau8; (2 << 20) + 512]).unwrap();
        let out = dir.join("disk.img");
        assemble(&out, &[0xee; 4096], Some(&models), &data, b"digest").unwrap();
        let mut f = std::fs::File::open(&out).unwrap();
        let sectors = f.metadata().unwrap().len() / SECTOR;
        let gpt = Gpt::read(&mut f, sectors).unwrap();
        let m = gpt.by_name(layout::MODELS_LABEL).unwrap();
        let d = gpt.by_name(layout::DATA_LABEL).unwrap();
        assert_eq!((m.number, d.number), (2, 3));
        assert!(m.last_lba < d.first_lba && d.first_lba.is_multiple_of(ALIGN));
        assert_eq!(m.attributes >> 60 & 1, 1, "read-only attribute");
        let bytes = std::fs::read(&out).unwrap();
        let at = (m.first_lba * SECTOR) as usize;
        assert!(bytes[at..at + (2 << 20) + 512].iter().all(|b| *b == 0xaa));
        // The data partition is still the last one, so it can grow.
        let bigger = gpt.grown(sectors + 100_000, d.number).unwrap();
        assert!(bigger.by_name(layout::DATA_LABEL).unwrap().last_lba > d.last_lba);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
