//! An agent package from an uploader: parse it (manifest included), check its signature and
//! serialize it back; errors are fine, panics and unbounded allocations are not.
use cairn_agents::package::Package;

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    if let Ok(p) = Package::parse(data) {
        let _ = p.verify_signature();
        let _ = p.component_sha256();
        // What parses writes back byte for byte (the signature covers these bytes).
        assert_eq!(p.to_bytes(), data, "a parsed package does not round-trip");
    }
}
