//! The module index and modalias matching: any text, any modalias, never a panic.

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (index, alias) = text
        .split_once('\u{1}')
        .unwrap_or((&text, "pci:v00001AF4d00001000"));
    if let Ok(idx) = cairn_init::modindex::ModuleIndex::parse(index) {
        for name in idx.matches(alias) {
            let _ = idx.load_order(name);
        }
        let _ = idx.resolve(alias);
    }
    let _ = cairn_init::modindex::glob_match(index, alias);
}
