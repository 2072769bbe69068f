//! The image build is reproducible: the same inputs give byte-identical artifacts.

use anyhow::{Context, Result, ensure};
use cairn_e2e::{Arch, artifacts, scratch};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn digest(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// Rebuilds twice from the inputs `cargo xtask image` recorded and compares every artifact.
fn rebuild_twice(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let rec = cairn_image::recorded_inputs(&a.dir)?;
    let s = |k: &str| {
        rec[k]
            .as_str()
            .map(String::from)
            .with_context(|| format!("build-inputs.json lacks {k}"))
    };
    let dir = scratch(arch, "reproducible")?;
    let mut digests = Vec::new();
    for run in ["first", "second"] {
        let inputs = cairn_image::Inputs {
            arch,
            target: cairn_image::Target::load(arch)?,
            init_bin: PathBuf::from(s("init_bin")?),
            cairn_bin: PathBuf::from(s("cairn_bin")?),
            kernel_deb: Some(PathBuf::from(s("kernel_deb")?)),
            source_date_epoch: rec["source_date_epoch"].as_u64().context("no epoch")?,
            out_dir: dir.join(run),
            data_mib: rec["data_mib"].as_u64().context("no data_mib")?,
            version: s("version")?,
            force: true,
            // The same models as the original build (the e2e images carry the defaults).
            models: serde_json::from_value(rec["models"].clone())
                .context("build-inputs.json models")?,
        };
        let out = cairn_image::build(&inputs)?;
        digests.push([
            digest(&out.image)?,
            digest(&out.initramfs)?,
            digest(&out.uki)?,
        ]);
    }
    ensure!(digests[0] == digests[1], "two builds differ: {:?}", digests);
    let original = digest(&a.image)?;
    ensure!(
        original == digests[0][0],
        "rebuilt cairn.img {} differs from target/cairn/{arch}/cairn.img {original}",
        digests[0][0]
    );
    Ok(())
}

#[test]
#[ignore = "needs the built artifacts; run it with cargo xtask test"]
fn x86_64_image_is_reproducible() {
    if let Err(e) = rebuild_twice(Arch::X86_64) {
        panic!("{e:#}");
    }
}

#[test]
#[ignore = "needs the built artifacts; run it with cargo xtask test"]
fn aarch64_image_is_reproducible() {
    if let Err(e) = rebuild_twice(Arch::Aarch64) {
        panic!("{e:#}");
    }
}
