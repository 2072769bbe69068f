//! `cargo xtask test`: formatting and lints, every unit and integration test, both images,
//! then the end-to-end tests that boot them in QEMU.

use crate::build::{self, ImageOptions, cargo};
use crate::deps;
use anyhow::{Result, bail};
use cairn_image::Arch;
use std::time::Instant;

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

/// The profile of the optimised test steps (release code generation, no LTO link).
const TEST_PROFILE: &str = "test-release";

/// `cargo test` of one package in [`TEST_PROFILE`].
fn optimised_test(package: &str) -> std::process::Command {
    let mut c = cargo();
    c.args(["test", "--profile", TEST_PROFILE, "--locked", "-p", package]);
    c
}

/// Runs everything.
pub fn test(opts: &TestOptions) -> Result<()> {
    let started = Instant::now();
    let arches: Vec<Arch> = match opts.arch {
        Some(a) => vec![a],
        None => Arch::ALL.to_vec(),
    };
    let mut needs = deps::for_image();
    needs.extend(deps::for_unit_tests());
    needs.extend(crate::pyenv::needs());
    needs.push(deps::prog("qemu-user", "qemu-aarch64"));
    needs.extend(deps::for_console_tests());
    needs.extend(deps::for_build(cairn_image::Arch::Aarch64));
    for a in &arches {
        needs.extend(deps::for_build(*a));
        needs.extend(deps::for_qemu(*a));
    }
    deps::ensure(&needs)?;
    if !opts.no_lint {
        step(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The agent tests build the SDK's example agents as components.
    deps::ensure_rust_target("wasm32-wasip2")?;
    // The console's browser tests drive Chromium with playwright-core from tests/console.
    console_modules()?;
    step(
        "unit and integration tests",
        cargo()
            .args(["test", "--workspace", "--locked"])
            .env("CAIRN_CHROMIUM", deps::CHROMIUM),
    )?;
    // The Python agent (sdk/python) built with the pinned componentize-py and run through the
    // runtime. The debug build: test-release's Cranelift (opt-level "s") compiles the 18 MB
    // component no faster. `--workspace` keeps the build above's features: nothing rebuilds.
    let componentize = crate::pyenv::venv(
        "componentize-py",
        &build::repo_root().join("sdk/python/requirements.txt"),
    )?
    .with_file_name("componentize-py");
    step(
        "Python agent test",
        cargo()
            .args(["test", "--workspace", "--locked", "--test", "python_agents"])
            .args(["--", "--ignored"])
            .env("CAIRN_COMPONENTIZE_PY", &componentize),
    )?;
    // The tests on real models and the official client run optimised, as the appliance does.
    crate::models::fetch_models("default")?;
    let python = crate::pyenv::venv(
        "openai",
        &build::repo_root().join("tests/openai/requirements.txt"),
    )?;
    step(
        "model tests (optimised)",
        optimised_test("cairn-models").args(["--", "--ignored"]),
    )?;
    // Only the appliance's test targets that hold model tests (the rest ran above).
    step(
        "OpenAI-client, router and console chat tests on the models (optimised)",
        optimised_test("cairn")
            .args([
                "--test",
                "openai_client",
                "--test",
                "router",
                "--test",
                "console",
            ])
            .args(["--", "--ignored"])
            .env("CAIRN_OPENAI_PYTHON", &python)
            .env("CAIRN_CHROMIUM", deps::CHROMIUM),
    )?;
    // The aarch64 kernels (NEON, dotprod, i8mm) on an emulated CPU that has them all.
    deps::ensure_rust_target("aarch64-unknown-linux-musl")?;
    step(
        "aarch64 kernel tests (qemu-aarch64 -cpu max)",
        optimised_test("cairn-models")
            .args([
                "--target",
                "aarch64-unknown-linux-musl",
                "--test",
                "kernels",
            ])
            .env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER",
                "qemu-aarch64 -cpu max",
            ),
    )?;
    if opts.no_e2e {
        return Ok(());
    }
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
    let mut cmd = cargo();
    cmd.env("CAIRN_OPENAI_PYTHON", &python)
        .args(["test", "-p", "cairn-e2e", "--locked", "--", "--ignored"])
        .arg(format!("--test-threads={}", opts.jobs.max(1)));
    if let Some(a) = opts.arch {
        cmd.arg(a.name());
    }
    step("end-to-end tests in QEMU", &mut cmd)?;
    eprintln!(
        "xtask: all tests passed in {} s",
        started.elapsed().as_secs()
    );
    Ok(())
}
