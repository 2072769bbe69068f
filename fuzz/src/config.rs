//! cairn.toml: any text parses or gives an error naming its line, never a panic.

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = cairn_init::config::Config::parse(text, "fuzz.toml")
    {
        let _ = cfg.static_net();
    }
}
