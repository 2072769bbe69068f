//! Debian packages: resolve, download (with `apt-get download`, through apt's architecture
//! options for foreign architectures) into a cache outside the repository, and extract (with
//! `dpkg-deb -x`). Downloads are kept, so rebuilding works offline and from the same inputs.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A downloaded package.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Debian architecture.
    pub arch: String,
    /// The `.deb` file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
}

/// The cache for downloads and extractions: `$CAIRN_CACHE`, else `$XDG_CACHE_HOME/cairn`,
/// else `~/.cache/cairn`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("cairn");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("cairn")
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn host_debian_arch() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg (is this a Debian-based machine?)")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// apt options for a (possibly foreign) architecture, with its own package lists.
fn apt_options(debian_arch: &str, cache: &Path) -> Result<Vec<String>> {
    if host_debian_arch()? == debian_arch {
        return Ok(Vec::new());
    }
    let lists = cache.join(format!("apt-lists-{debian_arch}"));
    std::fs::create_dir_all(lists.join("partial"))?;
    Ok(vec![
        format!("-oAPT::Architecture={debian_arch}"),
        format!("-oAPT::Architectures={debian_arch}"),
        format!("-oDir::State::Lists={}", lists.display()),
    ])
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure apt has package lists for `debian_arch` (runs `apt-get update` once for foreign
/// architectures, into the cache).
pub fn ensure_lists(debian_arch: &str) -> Result<()> {
    let cache = cache_dir();
    let opts = apt_options(debian_arch, &cache)?;
    if opts.is_empty() {
        return Ok(());
    }
    let lists = cache.join(format!("apt-lists-{debian_arch}"));
    let has_lists = std::fs::read_dir(&lists)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists {
        eprintln!("  apt: fetching {debian_arch} package lists");
        run(
            Command::new("apt-get").args(&opts).args(["update", "-qq"]),
            &format!("apt-get update for {debian_arch}"),
        )?;
    }
    Ok(())
}

/// The candidate version of a package and, for a metapackage, its first dependency.
fn show(name: &str, debian_arch: &str) -> Result<(String, Option<String>)> {
    let opts = apt_options(debian_arch, &cache_dir())?;
    let text = run(
        Command::new("apt-cache").args(&opts).args([
            "show",
            "--no-all-versions",
            &format!("{name}:{debian_arch}"),
        ]),
        &format!("looking up {name} for {debian_arch}"),
    )?;
    let mut version = None;
    let mut depends = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Version: ") {
            version = Some(v.trim().to_string());
        }
        if let Some(d) = line.strip_prefix("Depends: ") {
            depends = d
                .split(',')
                .next()
                .and_then(|d| d.split_whitespace().next())
                .map(String::from);
        }
    }
    let version = version.with_context(|| format!("apt has no version of {name}"))?;
    Ok((version, depends))
}

/// Resolves a kernel metapackage (`linux-image-amd64`) to the real package it depends on.
pub fn resolve_kernel(meta: &str, debian_arch: &str) -> Result<String> {
    ensure_lists(debian_arch)?;
    let (_, dep) = show(meta, debian_arch)?;
    match dep {
        Some(d) if d.starts_with("linux-image-") => Ok(d),
        _ => Ok(meta.to_string()),
    }
}

/// Downloads the candidate version of `name` for `debian_arch` into the cache (once).
pub fn download(name: &str, debian_arch: &str) -> Result<Package> {
    ensure_lists(debian_arch)?;
    let (version, _) = show(name, debian_arch)?;
    let dir = cache_dir().join("debs");
    std::fs::create_dir_all(&dir)?;
    let file_version = version.replace(':', "%3a");
    let path = dir.join(format!("{name}_{file_version}_{debian_arch}.deb"));
    if !path.exists() {
        eprintln!("  apt: downloading {name} {version} ({debian_arch})");
        let opts = apt_options(debian_arch, &cache_dir())?;
        run(
            Command::new("apt-get").current_dir(&dir).args(&opts).args([
                "download",
                "-q",
                &format!("{name}:{debian_arch}={version}"),
            ]),
            &format!("downloading {name}"),
        )?;
        if !path.exists() {
            bail!("apt-get download did not produce {}", path.display());
        }
    }
    from_file(&path)
}

/// Describes a local `.deb` (for `--kernel-deb`).
pub fn from_file(path: &Path) -> Result<Package> {
    let field = |f: &str| -> Result<String> {
        Ok(run(
            Command::new("dpkg-deb").args(["-f"]).arg(path).arg(f),
            &format!("reading {} of {}", f, path.display()),
        )?
        .trim()
        .to_string())
    };
    Ok(Package {
        name: field("Package")?,
        version: field("Version")?,
        arch: field("Architecture")?,
        path: path.to_path_buf(),
        sha256: sha256_file(path)?,
    })
}

/// Extracts a package into the cache (once per content hash); returns the directory.
pub fn extract(pkg: &Package) -> Result<PathBuf> {
    let dir = cache_dir().join("extract").join(&pkg.sha256[..16]);
    let done = dir.join(".cairn-extracted");
    if done.exists() {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    run(
        Command::new("dpkg-deb").arg("-x").arg(&pkg.path).arg(&dir),
        &format!("extracting {}", pkg.path.display()),
    )?;
    std::fs::write(&done, b"")?;
    Ok(dir)
}
