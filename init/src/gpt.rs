//! GUID Partition Table: read, write and grow (UEFI 2.10 §5.3).
//!
//! Hand-written because PID 1 must never panic on a hostile disk and must move the backup
//! header when the image lands on a bigger stick; the `gpt` crate asserts on some inputs and
//! sizes the entry array to the partition count rather than the 16 KiB UEFI asks for. The same
//! code writes the image (cairn-image) and grows it on first boot (cairn-init), so both sides
//! agree on one layout. Only 512-byte logical sectors are supported (USB sticks, virtio, NVMe
//! formatted 512e); a 4Kn disk is reported as unsupported rather than misread.

// Sizes and offsets come from the disk: no cast may silently cut one.
#![deny(clippy::cast_possible_truncation)]

use crate::bytes::{bytes16, le32, le64, put, set};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Logical sector size.
pub const SECTOR: u64 = 512;
/// [`SECTOR`] as a buffer length.
const SECTOR_BYTES: usize = 512;
/// Number of partition entries (128 × 128 bytes = 16 KiB, the UEFI minimum).
pub const NUM_ENTRIES: u32 = 128;
/// Size of one partition entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors taken by the entry array.
pub const ENTRY_SECTORS: u64 = (NUM_ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 2048;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE: u32 = 92;

/// A GUID in its on-disk (mixed-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds a GUID from its textual fields, e.g. `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`
    /// is `from_fields(0xC12A7328, 0xF81F, 0x11D2, [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B])`.
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// Builds a version-4-shaped GUID from 16 bytes of a hash (RFC 9562 variant bits set),
    /// so images can derive stable GUIDs from their content.
    pub fn from_hash(bytes: [u8; 16]) -> Guid {
        let mut b = bytes;
        b[7] = (b[7] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// True for the all-zero GUID (an unused entry).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            b[3],
            b[2],
            b[1],
            b[0],
            b[5],
            b[4],
            b[7],
            b[6],
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// EFI System Partition type.
pub const TYPE_ESP: Guid = Guid::from_fields(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// Linux filesystem data type.
pub const TYPE_LINUX_DATA: Guid = Guid::from_fields(
    0x0FC63DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (entry index + 1), as the kernel numbers it.
    pub number: u32,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (UTF-16 on disk, at most 36 code units).
    pub name: String,
}

impl Partition {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba.saturating_sub(self.first_lba) + 1).saturating_mul(SECTOR)
    }
}

/// A whole partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Disk size in sectors the table was laid out for (backup header at `sectors - 1`).
    pub sectors: u64,
    /// Used partitions, by number.
    pub partitions: Vec<Partition>,
}

/// Why a table could not be read or changed.
#[derive(Debug)]
pub enum GptError {
    /// The device could not be read or written.
    Io(io::Error),
    /// Neither header is valid; the string says why.
    Invalid(String),
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Io(e) => write!(f, "I/O error: {e}"),
            GptError::Invalid(s) => write!(f, "no valid GPT: {s}"),
        }
    }
}

impl std::error::Error for GptError {}

impl From<io::Error> for GptError {
    fn from(e: io::Error) -> Self {
        GptError::Io(e)
    }
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid(bytes16(b, at))
}

/// A parsed header (either copy).
#[derive(Debug, Clone)]
struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn parse_header(sector: &[u8], expect_lba: u64) -> Result<Header, String> {
    if sector.get(0..8) != Some(SIGNATURE.as_slice()) {
        return Err("signature missing".into());
    }
    let size = le32(sector, 12);
    if !(HEADER_SIZE as usize..=SECTOR_BYTES).contains(&(size as usize)) {
        return Err(format!("header size {size} out of range"));
    }
    let mut h = sector.get(..size as usize).unwrap_or_default().to_vec();
    let crc = le32(&h, 16);
    if let Some(c) = h.get_mut(16..20) {
        c.fill(0);
    }
    if crc32fast::hash(&h) != crc {
        return Err("header checksum mismatch".into());
    }
    let hdr = Header {
        my_lba: le64(sector, 24),
        alternate_lba: le64(sector, 32),
        first_usable: le64(sector, 40),
        last_usable: le64(sector, 48),
        disk_guid: guid_at(sector, 56),
        entries_lba: le64(sector, 72),
        num_entries: le32(sector, 80),
        entry_size: le32(sector, 84),
        entries_crc: le32(sector, 88),
    };
    if hdr.my_lba != expect_lba {
        return Err(format!(
            "header claims LBA {} but sits at {expect_lba}",
            hdr.my_lba
        ));
    }
    if hdr.entry_size < 128 || !hdr.entry_size.is_multiple_of(8) || hdr.entry_size > 4096 {
        return Err(format!("entry size {} unsupported", hdr.entry_size));
    }
    if hdr.num_entries == 0 || hdr.num_entries > 4096 {
        return Err(format!("entry count {} unsupported", hdr.num_entries));
    }
    if hdr.first_usable > hdr.last_usable {
        return Err("first usable LBA is after last usable LBA".into());
    }
    Ok(hdr)
}

fn read_at<D: Read + Seek>(dev: &mut D, lba: u64, len: usize) -> io::Result<Vec<u8>> {
    let off = lba
        .checked_mul(SECTOR)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "LBA out of range"))?;
    dev.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len];
    dev.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(dev: &mut D, lba: u64, data: &[u8]) -> io::Result<()> {
    dev.seek(SeekFrom::Start(lba * SECTOR))?;
    dev.write_all(data)
}

fn decode_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| crate::bytes::le16(c, 0))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

impl Gpt {
    /// Reads the table of a device of `sectors` sectors: the primary header, or the backup if
    /// the primary is damaged (its alternate LBA, then the last sector).
    pub fn read<D: Read + Seek>(dev: &mut D, sectors: u64) -> Result<Gpt, GptError> {
        if sectors < 3 + 2 * ENTRY_SECTORS {
            return Err(GptError::Invalid(format!(
                "device of {sectors} sectors is too small"
            )));
        }
        let primary = read_at(dev, 1, SECTOR_BYTES)?;
        let (hdr, why_primary) = match parse_header(&primary, 1) {
            Ok(h) => match Self::read_entries(dev, &h, sectors) {
                Ok(parts) => return Ok(Self::from_header(&h, parts, sectors)),
                Err(e) => (Some(h), e),
            },
            Err(e) => (None, e),
        };
        let mut candidates = vec![sectors - 1];
        if let Some(h) = hdr.as_ref().filter(|h| h.alternate_lba < sectors - 1) {
            candidates.insert(0, h.alternate_lba);
        }
        let mut why = format!("primary: {why_primary}");
        for lba in candidates {
            let sec = read_at(dev, lba, SECTOR_BYTES)?;
            match parse_header(&sec, lba).and_then(|h| {
                let parts = Self::read_entries(dev, &h, sectors)?;
                Ok((h, parts))
            }) {
                Ok((h, parts)) => return Ok(Self::from_header(&h, parts, sectors)),
                Err(e) => why.push_str(&format!("; backup at {lba}: {e}")),
            }
        }
        Err(GptError::Invalid(why))
    }

    fn from_header(h: &Header, partitions: Vec<Partition>, sectors: u64) -> Gpt {
        // `sectors` records where the table's backup lives, which may be before the device's
        // end when the image was written to a bigger disk.
        let laid_out = if h.my_lba == 1 {
            h.alternate_lba.saturating_add(1).min(sectors)
        } else {
            h.my_lba.saturating_add(1)
        };
        Gpt {
            disk_guid: h.disk_guid,
            sectors: laid_out,
            partitions,
        }
    }

    fn read_entries<D: Read + Seek>(
        dev: &mut D,
        h: &Header,
        sectors: u64,
    ) -> Result<Vec<Partition>, String> {
        let len = h.num_entries as usize * h.entry_size as usize;
        let end = h.entries_lba + (len as u64).div_ceil(SECTOR);
        if h.entries_lba < 2 || end > sectors {
            return Err("entry array lies outside the device".into());
        }
        let raw = read_at(dev, h.entries_lba, len).map_err(|e| e.to_string())?;
        if crc32fast::hash(&raw) != h.entries_crc {
            return Err("entry array checksum mismatch".into());
        }
        let mut parts = Vec::new();
        for (i, e) in raw.chunks_exact(h.entry_size as usize).enumerate() {
            let type_guid = guid_at(e, 0);
            if type_guid.is_zero() {
                continue;
            }
            let p = Partition {
                number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                type_guid,
                guid: guid_at(e, 16),
                first_lba: le64(e, 32),
                last_lba: le64(e, 40),
                attributes: le64(e, 48),
                name: decode_name(e.get(56..128).unwrap_or_default()),
            };
            if p.first_lba > p.last_lba
                || p.first_lba < h.first_usable
                || p.last_lba > h.last_usable
            {
                return Err(format!(
                    "partition {} lies outside the usable area",
                    p.number
                ));
            }
            parts.push(p);
        }
        Ok(parts)
    }

    /// First sector partitions may use.
    pub fn first_usable(&self) -> u64 {
        2 + ENTRY_SECTORS
    }

    /// Last sector partitions may use, given `self.sectors`.
    pub fn last_usable(&self) -> u64 {
        self.sectors.saturating_sub(2 + ENTRY_SECTORS)
    }

    /// Checks the partitions fit and do not overlap.
    pub fn validate(&self) -> Result<(), String> {
        let mut spans: Vec<(u64, u64, u32)> = Vec::new();
        for p in &self.partitions {
            if p.number == 0 || p.number > NUM_ENTRIES {
                return Err(format!("partition number {} out of range", p.number));
            }
            if p.first_lba > p.last_lba
                || p.first_lba < self.first_usable()
                || p.last_lba > self.last_usable()
            {
                return Err(format!(
                    "partition {} ({}) does not fit the disk",
                    p.number, p.name
                ));
            }
            if p.name.encode_utf16().count() > 36 {
                return Err(format!(
                    "partition name {:?} is longer than 36 UTF-16 units",
                    p.name
                ));
            }
            spans.push((p.first_lba, p.last_lba, p.number));
        }
        spans.sort();
        for w in spans.windows(2) {
            if let [a, b] = w
                && b.0 <= a.1
            {
                return Err(format!("partitions {} and {} overlap", a.2, b.2));
            }
        }
        Ok(())
    }

    fn entries_bytes(&self) -> Vec<u8> {
        let mut raw = vec![0u8; (NUM_ENTRIES * ENTRY_SIZE) as usize];
        for p in &self.partitions {
            let at = (p.number.saturating_sub(1) * ENTRY_SIZE) as usize;
            if let Some(e) = raw.get_mut(at..at + ENTRY_SIZE as usize) {
                put(e, 0, &p.type_guid.0);
                put(e, 16, &p.guid.0);
                put(e, 32, &p.first_lba.to_le_bytes());
                put(e, 40, &p.last_lba.to_le_bytes());
                put(e, 48, &p.attributes.to_le_bytes());
                for (i, u) in p.name.encode_utf16().take(36).enumerate() {
                    put(e, 56 + 2 * i, &u.to_le_bytes());
                }
            }
        }
        raw
    }

    fn header_bytes(&self, primary: bool, entries_crc: u32) -> Vec<u8> {
        let last = self.sectors - 1;
        let (my, alt, entries) = if primary {
            (1, last, 2)
        } else {
            (last, 1, last - ENTRY_SECTORS)
        };
        let mut h = vec![0u8; SECTOR_BYTES];
        put(&mut h, 0, SIGNATURE);
        put(&mut h, 8, &0x0001_0000u32.to_le_bytes());
        put(&mut h, 12, &HEADER_SIZE.to_le_bytes());
        put(&mut h, 24, &my.to_le_bytes());
        put(&mut h, 32, &alt.to_le_bytes());
        put(&mut h, 40, &self.first_usable().to_le_bytes());
        put(&mut h, 48, &self.last_usable().to_le_bytes());
        put(&mut h, 56, &self.disk_guid.0);
        put(&mut h, 72, &entries.to_le_bytes());
        put(&mut h, 80, &NUM_ENTRIES.to_le_bytes());
        put(&mut h, 84, &ENTRY_SIZE.to_le_bytes());
        put(&mut h, 88, &entries_crc.to_le_bytes());
        let crc = crc32fast::hash(h.get(..HEADER_SIZE as usize).unwrap_or_default());
        put(&mut h, 16, &crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> Vec<u8> {
        let mut m = vec![0u8; SECTOR_BYTES];
        let size = u32::try_from(self.sectors - 1).unwrap_or(u32::MAX);
        // One partition of type 0xEE covering the disk, as UEFI requires.
        put(&mut m, 446 + 1, &[0x00, 0x02, 0x00]);
        set(&mut m, 446 + 4, 0xEE);
        put(&mut m, 446 + 5, &[0xFF, 0xFF, 0xFF]);
        put(&mut m, 446 + 8, &1u32.to_le_bytes());
        put(&mut m, 446 + 12, &size.to_le_bytes());
        put(&mut m, 510, &[0x55, 0xAA]);
        m
    }

    /// Writes protective MBR, backup table, then primary table. The backup goes first so a
    /// power cut mid-write leaves one valid, consistent copy.
    pub fn write<D: Write + Seek>(&self, dev: &mut D) -> Result<(), GptError> {
        self.validate().map_err(GptError::Invalid)?;
        let entries = self.entries_bytes();
        let crc = crc32fast::hash(&entries);
        let last = self.sectors - 1;
        write_at(dev, last - ENTRY_SECTORS, &entries)?;
        write_at(dev, last, &self.header_bytes(false, crc))?;
        write_at(dev, 0, &self.protective_mbr())?;
        write_at(dev, 2, &entries)?;
        write_at(dev, 1, &self.header_bytes(true, crc))?;
        dev.flush()?;
        Ok(())
    }

    /// Plans growth onto a device of `device_sectors`: the backup table moves to the end and,
    /// when `grow_number` is the last partition, it is enlarged to the new last usable sector
    /// (rounded down to 4 KiB). Returns `None` when the table already ends at the device's end.
    pub fn grown(&self, device_sectors: u64, grow_number: u32) -> Option<Gpt> {
        if device_sectors <= self.sectors {
            return None;
        }
        let mut g = self.clone();
        g.sectors = device_sectors;
        let last_part = g.partitions.iter().map(|p| p.last_lba).max().unwrap_or(0);
        let limit = g.last_usable();
        if let Some(p) = g.partitions.iter_mut().find(|p| p.number == grow_number)
            && p.last_lba == last_part
        {
            let end = ((limit + 1) / 8) * 8;
            if end > p.last_lba + 1 {
                p.last_lba = end - 1;
            }
        }
        Some(g)
    }

    /// The partition with this GPT name.
    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The first partition of this type.
    pub fn by_type(&self, t: Guid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.type_guid == t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample(sectors: u64) -> Gpt {
        Gpt {
            disk_guid: Guid::from_hash([7; 16]),
            sectors,
            partitions: vec![
                Partition {
                    number: 1,
                    type_guid: TYPE_ESP,
                    guid: Guid::from_hash([1; 16]),
                    first_lba: 2048,
                    last_lba: 4095,
                    attributes: 0,
                    name: "CAIRN-ESP".into(),
                },
                Partition {
                    number: 2,
                    type_guid: TYPE_LINUX_DATA,
                    guid: Guid::from_hash([2; 16]),
                    first_lba: 4096,
                    last_lba: 8191,
                    attributes: 0,
                    name: "CAIRN-DATA".into(),
                },
            ],
        }
    }

    fn disk(sectors: u64) -> Cursor<Vec<u8>> {
        Cursor::new(vec![0u8; usize::try_from(sectors * SECTOR).unwrap()])
    }

    #[test]
    fn guid_text_form() {
        assert_eq!(TYPE_ESP.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            TYPE_LINUX_DATA.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        let g = Guid::from_hash([0xff; 16]).to_string();
        assert_eq!(&g[14..15], "4", "version nibble: {g}");
    }

    #[test]
    fn write_then_read_round_trips() {
        let g = sample(8192 + 34);
        let mut d = disk(g.sectors);
        g.write(&mut d).unwrap();
        let back = Gpt::read(&mut d, g.sectors).unwrap();
        assert_eq!(back, g);
        assert_eq!(&d.get_ref()[510..512], &[0x55, 0xAA]);
        assert_eq!(d.get_ref()[446 + 4], 0xEE);
    }

    #[test]
    fn falls_back_to_backup_when_primary_is_damaged() {
        let g = sample(8192 + 34);
        let mut d = disk(g.sectors);
        g.write(&mut d).unwrap();
        d.get_mut()[512 + 20] ^= 0xff; // corrupt the primary header
        assert_eq!(Gpt::read(&mut d, g.sectors).unwrap(), g);
        d.get_mut()[2 * 512 + 5] ^= 0xff; // and the primary entries (header fixed again)
        d.get_mut()[512 + 20] ^= 0xff;
        assert_eq!(Gpt::read(&mut d, g.sectors).unwrap(), g);
    }

    #[test]
    fn both_copies_damaged_is_an_error_not_a_panic() {
        let g = sample(8192 + 34);
        let mut d = disk(g.sectors);
        g.write(&mut d).unwrap();
        d.get_mut()[512] = b'X';
        let last = usize::try_from((g.sectors - 1) * 512).unwrap();
        d.get_mut()[last] = b'X';
        let e = Gpt::read(&mut d, g.sectors).unwrap_err().to_string();
        assert!(e.contains("signature missing"), "{e}");
        assert!(Gpt::read(&mut disk(10), 10).is_err());
    }

    #[test]
    fn grows_onto_a_bigger_disk() {
        let g = sample(8192 + 34);
        let mut d = disk(g.sectors);
        g.write(&mut d).unwrap();
        // The image is copied to a disk four times bigger.
        let big = 4 * g.sectors;
        d.get_mut()
            .resize(usize::try_from(big * SECTOR).unwrap(), 0);
        let read = Gpt::read(&mut d, big).unwrap();
        assert_eq!(
            read.sectors, g.sectors,
            "the table still describes the small image"
        );
        let grown = read.grown(big, 2).unwrap();
        assert_eq!(grown.by_name("CAIRN-DATA").unwrap().first_lba, 4096);
        let last = grown.by_name("CAIRN-DATA").unwrap().last_lba;
        assert!(last <= grown.last_usable() && (last + 1).is_multiple_of(8));
        assert!(last > big - 100);
        grown.write(&mut d).unwrap();
        let again = Gpt::read(&mut d, big).unwrap();
        assert_eq!(again, grown);
        assert!(again.grown(big, 2).is_none(), "growing twice is a no-op");
    }

    #[test]
    fn overlapping_or_oversized_partitions_are_refused() {
        let mut g = sample(8192 + 34);
        g.partitions[1].first_lba = 4000;
        assert!(g.validate().unwrap_err().contains("overlap"));
        let mut g = sample(8192 + 34);
        g.partitions[1].last_lba = 9000;
        assert!(g.validate().unwrap_err().contains("does not fit"));
        assert!(g.write(&mut disk(g.sectors)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn read_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), flip in 0usize..40000) {
            let sectors = 80u64;
            let g = sample(sectors + 8192);
            let mut d = disk(g.sectors);
            g.write(&mut d).unwrap();
            let n = d.get_ref().len();
            let at = flip % n;
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = d.get_mut().get_mut(at + i) { *x = *b; }
            }
            let _ = Gpt::read(&mut d, g.sectors);
        }
    }
}
