//! Unified kernel image: systemd-stub with `.osrel`, `.cmdline`, `.uname`, `.linux` and
//! `.initrd` sections appended, as `ukify`/`objcopy --add-section` would.
//!
//! Hand-written (about a hundred lines) because no crate edits an existing PE image; the
//! `object` crate is used to read the result back in tests. New sections are placed after the
//! stub's last section at SectionAlignment, their data appended at FileAlignment, and the
//! header fields that describe the image (section count, SizeOfImage, SizeOfInitializedData,
//! checksum) are updated.

use anyhow::{Result, bail, ensure};

const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;

fn rd16(b: &[u8], at: usize) -> Result<u16> {
    let s = b
        .get(at..at + 2)
        .ok_or_else(|| anyhow::anyhow!("PE truncated at {at:#x}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn rd32(b: &[u8], at: usize) -> Result<u32> {
    let s = b
        .get(at..at + 4)
        .ok_or_else(|| anyhow::anyhow!("PE truncated at {at:#x}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn wr32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Appends named sections to a PE32+ EFI stub.
pub fn add_sections(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    ensure!(
        stub.get(0..2) == Some(b"MZ"),
        "stub is not a PE image (no MZ header)"
    );
    let pe = rd32(stub, 0x3c)? as usize;
    ensure!(
        stub.get(pe..pe + 4) == Some(b"PE\0\0"),
        "stub has no PE signature"
    );
    let coff = pe + 4;
    let nsec = rd16(stub, coff + 2)? as usize;
    let opt_size = rd16(stub, coff + 16)? as usize;
    let opt = coff + 20;
    ensure!(rd16(stub, opt)? == 0x20b, "stub is not PE32+");
    let sect_align = rd32(stub, opt + 32)? as u64;
    let file_align = rd32(stub, opt + 36)? as u64;
    let size_of_headers = rd32(stub, opt + 60)? as usize;
    ensure!(sect_align > 0 && file_align > 0, "stub has zero alignment");
    let table = opt + opt_size;
    let table_end = table + 40 * (nsec + sections.len());
    ensure!(
        table_end <= size_of_headers,
        "stub has room for {} more section headers, {} needed",
        (size_of_headers.saturating_sub(table + 40 * nsec)) / 40,
        sections.len()
    );
    let mut next_va = 0u64;
    let mut file_end = stub.len() as u64;
    for i in 0..nsec {
        let h = table + 40 * i;
        let vsize = rd32(stub, h + 8)? as u64;
        let va = rd32(stub, h + 12)? as u64;
        let rsize = rd32(stub, h + 16)? as u64;
        let rptr = rd32(stub, h + 20)? as u64;
        next_va = next_va.max(align(va + vsize.max(rsize), sect_align));
        file_end = file_end.max(rptr + rsize);
    }
    if file_end > stub.len() as u64 {
        bail!("stub is truncated");
    }
    let mut out = stub.to_vec();
    out.resize(align(file_end, file_align) as usize, 0);
    let mut init_data = rd32(stub, opt + 8)? as u64;
    for (i, (name, data)) in sections.iter().enumerate() {
        ensure!(name.len() <= 8, "section name {name:?} longer than 8 bytes");
        let h = table + 40 * (nsec + i);
        let raw_size = align(data.len() as u64, file_align);
        let rptr = out.len() as u64;
        ensure!(
            next_va + raw_size < u32::MAX as u64,
            "UKI larger than 4 GiB"
        );
        let mut hdr = [0u8; 40];
        hdr[..name.len()].copy_from_slice(name.as_bytes());
        hdr[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        hdr[12..16].copy_from_slice(&(next_va as u32).to_le_bytes());
        hdr[16..20].copy_from_slice(&(raw_size as u32).to_le_bytes());
        hdr[20..24].copy_from_slice(&(rptr as u32).to_le_bytes());
        hdr[36..40]
            .copy_from_slice(&(IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ).to_le_bytes());
        out[h..h + 40].copy_from_slice(&hdr);
        out.extend_from_slice(data);
        out.resize((rptr + raw_size) as usize, 0);
        next_va = align(next_va + data.len() as u64, sect_align);
        init_data += raw_size;
    }
    let nsec_total = (nsec + sections.len()) as u16;
    out[coff + 2..coff + 4].copy_from_slice(&nsec_total.to_le_bytes());
    wr32(&mut out, opt + 8, init_data.min(u32::MAX as u64) as u32);
    wr32(&mut out, opt + 56, next_va as u32); // SizeOfImage
    let sum = pe_checksum(&out, opt + 64);
    wr32(&mut out, opt + 64, sum);
    Ok(out)
}

/// The PE image checksum (16-bit one's-complement sum of the file plus its length).
fn pe_checksum(data: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in data.chunks(2).enumerate() {
        if i * 2 == checksum_at || i * 2 == checksum_at + 2 {
            continue;
        }
        let w = u16::from_le_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]) as u64;
        sum += w;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The os-release text embedded as `.osrel`.
pub fn os_release(version: &str, arch: &str) -> String {
    format!(
        "NAME=\"Cairn\"\nID=cairn\nPRETTY_NAME=\"Cairn {version} ({arch})\"\nVERSION_ID={version}\n\
         HOME_URL=\"https://example.invalid/cairn\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection};

    fn stub() -> Option<Vec<u8>> {
        std::fs::read("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").ok()
    }

    #[test]
    fn sections_are_readable_back() {
        let Some(stub) = stub() else {
            // The builder installs systemd-boot-efi; the unit test needs the host copy.
            panic!("install systemd-boot-efi (cargo xtask deps) to run the UKI tests");
        };
        let uki = add_sections(
            &stub,
            &[
                (".osrel", b"ID=cairn\n"),
                (".cmdline", b"quiet"),
                (".linux", &[7u8; 5000]),
                (".initrd", &[9u8; 3]),
            ],
        )
        .unwrap();
        let obj = object::File::parse(&*uki).unwrap();
        let get = |n: &str| obj.section_by_name(n).unwrap().data().unwrap().to_vec();
        assert_eq!(&get(".osrel")[..9], b"ID=cairn\n");
        assert_eq!(&get(".cmdline")[..5], b"quiet");
        assert!(get(".linux")[..5000].iter().all(|b| *b == 7));
        assert_eq!(&get(".initrd")[..3], &[9, 9, 9]);
        assert!(obj.section_by_name(".text").is_some(), "stub sections kept");
        // Virtual addresses are increasing and aligned.
        let mut last = 0;
        for s in obj.sections() {
            assert!(s.address() >= last);
            last = s.address();
        }
    }

    #[test]
    fn refuses_non_pe_input() {
        assert!(add_sections(b"not a pe", &[]).is_err());
        assert!(add_sections(b"MZ", &[]).is_err());
        let mut fake = vec![0u8; 128];
        fake[0..2].copy_from_slice(b"MZ");
        fake[0x3c] = 0xff;
        assert!(add_sections(&fake, &[]).is_err());
    }
}
