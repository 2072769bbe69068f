//! `cargo xtask test`: formatting and lints, every unit and integration test, both images,
//! then the end-to-end tests that boot them in QEMU.

use crate::build::{self, ImageOptions, cargo};
use crate::deps;
use anyhow::{Result, bail};
use cairn_image::Arch;
use std::path::PathBuf;
use std::time::Instant;

/// Power cuts per architecture in `memory_survives_power_cuts` under `cargo xtask test`
/// (`CAIRN_MEMORY_CUTS` overrides).
pub const CI_POWER_CUTS: usize = 3;

/// Options of `xtask test`.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Only this architecture's images and boots.
    pub arch: Option<Arch>,
    /// Skip the QEMU tests.
    pub no_e2e: bool,
    /// Skip fmt and clippy.
    pub no_lint: bool,
    /// Parallel QEMU tests.
    pub jobs: usize,
}

fn step(name: &str, cmd: &mut std::process::Command) -> Result<()> {
    let t = Instant::now();
    eprintln!("xtask: == {name}");
    let st = cmd.current_dir(build::repo_root()).status()?;
    if !st.success() {
        bail!("{name} failed");
    }
    eprintln!("xtask: == {name}: ok ({} s)", t.elapsed().as_secs());
    Ok(())
}

/// Installs `tests/console/node_modules` from the lock file with `npm ci`, unless the copy
/// there was installed from the same lock file.
fn console_modules() -> Result<()> {
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        bail!(
            "node {version} is too old for playwright-core (the console tests need node 20 or \
             newer; Debian 12's nodejs is 18: install nodejs 20 from NodeSource or Debian 13)"
        );
    }
    let dir = build::repo_root().join("tests/console");
    let lock = std::fs::read(dir.join("package-lock.json"))?;
    // npm ci writes node_modules/.package-lock.json: equal content means up to date.
    let installed = std::fs::read(dir.join("node_modules/.package-lock.json")).ok();
    let same = installed.is_some_and(|i| {
        let deps = |b: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .map(|v| v["packages"].clone())
        };
        let mut want = deps(&lock);
        // The top-level package ("") is not listed in node_modules' copy.
        if let Some(serde_json::Value::Object(m)) = want.as_mut() {
            m.remove("");
        }
        want.is_some() && want == deps(&i)
    });
    if same {
        return Ok(());
    }
    step(
        "npm ci (tests/console)",
        // `step` runs in the repository root: name the package folder.
        std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir),
    )
}

/// What the ignored tests need besides the build: the default models, the official client's
/// and componentize-py's Python environments (their interpreter and componentize-py's program).
fn downloads() -> Result<(PathBuf, PathBuf)> {
    let t = Instant::now();
    crate::models::fetch_models("default")?;
    let python = crate::pyenv::venv(
        "openai",
        &build::repo_root().join("tests/openai/requirements.txt"),
    )?;
    let componentize = crate::pyenv::venv(
        "componentize-py",
        &build::repo_root().join("sdk/python/requirements.txt"),
    )?
    .with_file_name("componentize-py");
    eprintln!(
        "xtask: == models and Python environments: ok ({} s)",
        t.elapsed().as_secs()
    );
    Ok((python, componentize))
}

/// `cargo test` of every library, binary and test target of the workspace, built as the image's
/// binaries are (release profile, static musl for `arch`): one build serves the tests and the
/// image, and the tests run the code that ships. Always the whole workspace: Cargo unifies
/// dependency features over the packages selected, and selecting fewer rebuilds half of them.
/// (Examples are left out: the SDK's are agents, built for wasm32-wasip2 by the agent tests.)
pub(crate) fn workspace_tests(arch: Arch) -> Result<std::process::Command> {
    let mut c = build::musl_cargo(arch, "test")?;
    c.args(["--workspace", "--lib", "--bins", "--tests"]);
    Ok(c)
}

/// Runs everything.
pub fn test(opts: &TestOptions) -> Result<()> {
    let started = Instant::now();
    let host = Arch::host().unwrap_or(Arch::X86_64);
    let arches: Vec<Arch> = match opts.arch {
        Some(a) => vec![a],
        None => Arch::ALL.to_vec(),
    };
    let mut needs = deps::for_image();
    needs.extend(deps::for_unit_tests());
    needs.extend(crate::pyenv::needs());
    needs.push(deps::prog("qemu-user", "qemu-aarch64"));
    needs.extend(deps::for_console_tests());
    needs.extend(deps::for_build(Arch::Aarch64));
    needs.extend(deps::for_build(host));
    for a in &arches {
        needs.extend(deps::for_build(*a));
        needs.extend(deps::for_qemu(*a));
    }
    deps::ensure(&needs)?;
    // The downloads (npm packages, models, Python wheels) wait on the network, the builds on
    // the CPU: they run side by side, the downloads in this thread.
    let (npm_done, npm) = std::sync::mpsc::channel::<Result<()>>();
    let downloads = std::thread::spawn(move || -> Result<(PathBuf, PathBuf)> {
        // The console's browser tests drive Chromium with playwright-core from tests/console.
        let r = console_modules();
        let failed = r.is_err();
        let _ = npm_done.send(r);
        if failed {
            bail!("npm ci failed");
        }
        downloads()
    });
    if !opts.no_lint {
        step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        // In the test build's profile and target (release, static musl): clippy only type-checks
        // the crates, which a full build cannot reuse, but the proc macros and build scripts it
        // compiles and runs (syn, serde_derive, wasmtime's and cranelift's generators, ring's and
        // mimalloc's C code, ~100 units) are host or build-script units the test build then
        // reuses instead of building them a second time in the dev profile.
        step(
            "cargo clippy",
            build::musl_cargo(host, "clippy")?.args([
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        // The Metal backend only builds for Apple targets: type-check it there (no Apple
        // toolchain or SDK is needed to check the Rust; the appliance itself links C code, so
        // only cairn-models, where the backend lives, is checked).
        deps::ensure_rust_target("aarch64-apple-darwin")?;
        step(
            "cargo check --features metal (aarch64-apple-darwin)",
            // `--release`: its proc macros and build scripts are the test build's.
            cargo().args([
                "check",
                "--release",
                "--locked",
                "-p",
                "cairn-models",
                "--features",
                "metal",
                "--target",
                "aarch64-apple-darwin",
            ]),
        )?;
    }
    // The agent tests build the SDK's example agents as components.
    deps::ensure_rust_target("wasm32-wasip2")?;
    // The console's tests need npm ci's packages.
    npm.recv()
        .map_err(|_| anyhow::anyhow!("the download thread ended before npm ci"))??;
    step(
        "unit and integration tests",
        workspace_tests(host)?.env("CAIRN_CHROMIUM", deps::CHROMIUM),
    )?;
    // The images carry the models, and the ignored tests need the Python environments.
    let (python, componentize) = downloads
        .join()
        .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
    if !opts.no_e2e {
        for a in &arches {
            // The end-to-end images carry the default models: the OpenAI API is tested offline.
            build::image(
                *a,
                &ImageOptions {
                    models: Some("default".into()),
                    ..ImageOptions::default()
                },
            )?;
        }
    }
    // The aarch64 kernels (NEON, dotprod, i8mm) on an emulated CPU that has them all. The whole
    // workspace is selected for the same reason as above: the aarch64 image's build is reused.
    step(
        "aarch64 kernel tests (qemu-aarch64 -cpu max)",
        build::musl_cargo(Arch::Aarch64, "test")?
            .args(["--workspace", "--test", "kernels"])
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER",
                "qemu-aarch64 -cpu max",
            ),
    )?;
    // The model tests, the Python agent, the official OpenAI client, the router and the
    // console's chat on the real models, and the end-to-end tests that boot the images in QEMU.
    let mut cmd = workspace_tests(host)?;
    cmd.env("CAIRN_OPENAI_PYTHON", &python)
        .env("CAIRN_COMPONENTIZE_PY", &componentize)
        .env("CAIRN_CHROMIUM", deps::CHROMIUM);
    // Each power cut of the memory durability test costs a boot per architecture: CI cuts 3
    // times; `cargo xtask bench memory --power-cuts N` runs the long loops.
    if std::env::var_os("CAIRN_MEMORY_CUTS").is_none() {
        cmd.env("CAIRN_MEMORY_CUTS", CI_POWER_CUTS.to_string());
    }
    if opts.no_e2e {
        // A developer's shortcut, not what CI runs (no images, so no boots).
        cmd.args(["--exclude", "cairn-e2e"]);
    }
    // Every failure at once: a failed model test must not hide the state of the boots.
    cmd.args(["--no-fail-fast", "--", "--ignored"])
        .arg(format!("--test-threads={}", opts.jobs.max(1)));
    for a in Arch::ALL {
        if !arches.contains(&a) {
            cmd.args(["--skip", a.name()]);
        }
    }
    step("model, client and end-to-end tests (QEMU)", &mut cmd)?;
    eprintln!(
        "xtask: all tests passed in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}
