//! `cargo xtask fuzz`: builds the cargo-fuzz targets of `fuzz/` and runs each on its committed
//! corpus for a while; a crash fails it, naming the input that crashed.
//!
//! New inputs the fuzzer finds go to `target/fuzz-corpus/<target>/` (the committed corpus in
//! `fuzz/corpus/<target>/` is only read: interesting finds are added there by hand), crashes
//! to `fuzz/artifacts/<target>/`.

use crate::build::{self, cargo};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Options of `xtask fuzz`.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// Seconds each target runs after its corpus (libFuzzer's `-max_total_time`).
    pub seconds: u64,
    /// Targets to run (all when empty).
    pub targets: Vec<String>,
}

/// The flags every build and run uses. No AddressSanitizer: the targets are Rust, whose
/// bounds and overflow checks (debug assertions are on) catch what ASan would in safe code, and
/// ASan would instrument the whole dependency tree of the appliance. 16 codegen units instead of
/// cargo-fuzz's 1: the cold build on 2 cores is what CI waits for.
const BUILD_FLAGS: [&str; 4] = ["--sanitizer", "none", "--codegen-units", "16"];

fn fuzz_dir() -> PathBuf {
    build::repo_root().join("fuzz")
}

/// `cargo fuzz …` in `fuzz/`, with the stable toolchain accepting cargo-fuzz's unstable flags.
fn cargo_fuzz() -> Command {
    let mut c = cargo();
    c.arg("fuzz")
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1");
    c
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo_fuzz()
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    let st = cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("cargo install cargo-fuzz")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed");
    }
    Ok(())
}

/// Every target `fuzz/Cargo.toml` declares.
pub fn all_targets() -> Result<Vec<String>> {
    let out = cargo_fuzz()
        .arg("list")
        .output()
        .context("cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Builds every target (one build: they share the appliance's dependencies).
pub fn build_all() -> Result<()> {
    let t = Instant::now();
    let st = cargo_fuzz()
        .arg("build")
        .args(BUILD_FLAGS)
        .status()
        .context("cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed");
    }
    eprintln!("xtask: fuzz targets built in {} s", t.elapsed().as_secs());
    Ok(())
}

fn files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Runs `target` on its committed corpus, then for `seconds` more; returns whether it passed
/// and the crash files it wrote.
pub fn run_target(target: &str, seconds: u64) -> Result<(bool, Vec<PathBuf>)> {
    let corpus = fuzz_dir().join("corpus").join(target);
    if !corpus.is_dir() {
        bail!("{target}: no committed corpus in {}", corpus.display());
    }
    let found = build::repo_root()
        .join("target")
        .join("fuzz-corpus")
        .join(target);
    std::fs::create_dir_all(&found)?;
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let before = files(&artifacts);
    let t = Instant::now();
    // The first corpus directory is where libFuzzer writes new inputs.
    let st = cargo_fuzz()
        .args(["run"])
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&found)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=30")
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1")
        .status()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let crashes: Vec<PathBuf> = files(&artifacts).difference(&before).cloned().collect();
    let passed = st.success() && crashes.is_empty();
    eprintln!(
        "xtask: fuzz {target}: {} in {} s",
        if passed { "no crash" } else { "FAILED" },
        t.elapsed().as_secs()
    );
    Ok((passed, crashes))
}

/// Every target on its committed corpus plus `seconds`, after one build; fails naming each
/// crash file.
pub fn run_all(targets: &[String], seconds: u64) -> Result<()> {
    build_all()?;
    let mut failed: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for t in targets {
        let (passed, crashes) = run_target(t, seconds)?;
        if !passed {
            failed.push((t.clone(), crashes));
        }
    }
    if failed.is_empty() {
        eprintln!(
            "xtask: fuzz: no crash in {} targets ({seconds} s each after the corpus)",
            targets.len()
        );
        return Ok(());
    }
    for (t, crashes) in &failed {
        if crashes.is_empty() {
            eprintln!("xtask: fuzz {t}: failed without a crash file (see its output above)");
        }
        for c in crashes {
            eprintln!(
                "xtask: fuzz {t}: crash {} (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz \
                 run {} {t} {})",
                c.display(),
                BUILD_FLAGS.join(" "),
                c.display()
            );
        }
    }
    let names: Vec<&str> = failed.iter().map(|(t, _)| t.as_str()).collect();
    bail!(
        "fuzz: {} of {} targets failed: {}",
        failed.len(),
        targets.len(),
        names.join(", ")
    )
}

/// `cargo xtask fuzz`.
pub fn fuzz(opts: &FuzzOptions) -> Result<()> {
    ensure_cargo_fuzz()?;
    let all = all_targets()?;
    let targets = if opts.targets.is_empty() {
        all
    } else {
        for t in &opts.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?} (targets: {})", all.join(", "));
            }
        }
        opts.targets.clone()
    };
    run_all(&targets, opts.seconds)
}
