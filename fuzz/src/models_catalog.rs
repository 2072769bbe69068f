//! Model catalogs and the operator's `models.toml`: the first byte picks which, the rest is the
//! file. A catalog is parsed and walked; a `models.toml` goes through the service's real start
//! (`Inference::new` reads it from disk) and must leave the service up with the reason.
use cairn::inference::{DeviceChoice, Inference, InferenceOptions, LoadPolicy};
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

/// Runs the target on one input; a panic is a finding.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(c) = cairn_models::catalog::Catalog::parse(text) {
            let ids: Vec<String> = c.defaults().map(|m| m.id.clone()).collect();
            for id in ids {
                assert!(c.get(&id).is_some());
            }
        }
        return;
    }
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"));
    let path = dir.path().join("models.toml");
    std::fs::write(&path, text).expect("write models.toml");
    let opts = InferenceOptions {
        store: None,
        registry: Some(path),
        device: DeviceChoice::Cpu,
        threads: 1,
        load: LoadPolicy::Lazy,
    };
    let inf = Inference::new(&opts).expect("a broken models.toml never stops the service");
    let listed = inf.list();
    // Every model is either listed or the file is reported broken.
    assert!(listed.is_empty() || inf.warnings().is_empty());
    let _ = inf.default_chat();
}
