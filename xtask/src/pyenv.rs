//! Python virtual environments for the official clients and the peers the tests and
//! benchmarks drive (the `openai` client, sentence-transformers) and for the toolchain of the
//! Python agents (componentize-py), made with `python3 -m venv`
//! and `pip install` under the cargo target directory, and reused while their pinned
//! requirements are unchanged.

use crate::build;
use crate::deps;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a venv needs from the host.
pub fn needs() -> Vec<deps::Need> {
    vec![
        deps::prog("python3", "python3"),
        deps::file("python3-venv", "/usr/share/doc/python3-venv"),
    ]
}

/// The interpreter of venv `name` with the pinned `requirements` file installed (made or
/// updated when the requirements changed).
pub fn venv(name: &str, requirements: &Path) -> Result<PathBuf> {
    deps::ensure(&needs())?;
    let reqs = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let dir = build::cargo_target_dir().join("cairn-py").join(name);
    let python = dir.join("bin/python");
    let stamp = dir.join("cairn-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == reqs) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "xtask: creating the {name} Python environment in {}",
        build::rel(&dir)
    );
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("running python3 -m venv")?;
    if !st.success() {
        bail!(
            "python3 -m venv {} failed (install python3-venv)",
            dir.display()
        );
    }
    let st = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements)
        .status()
        .context("running pip install")?;
    if !st.success() {
        bail!("pip install -r {} failed", requirements.display());
    }
    std::fs::write(&stamp, reqs)?;
    Ok(python)
}
