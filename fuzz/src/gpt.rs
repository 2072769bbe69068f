//! GPT on a hostile disk: read, grow and write back, never a panic or an out-of-bounds access.

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let mut disk = data.to_vec();
    let sectors = (disk.len() / 512) as u64;
    disk.truncate(sectors as usize * 512);
    let mut dev = std::io::Cursor::new(disk);
    if let Ok(gpt) = cairn_init::gpt::Gpt::read(&mut dev, sectors)
        && let Some(grown) = gpt.grown(sectors + 2048, 2)
    {
        let mut out = std::io::Cursor::new(vec![0u8; ((sectors + 2048) * 512) as usize]);
        let _ = grown.write(&mut out);
    }
}
