//! The booted image answers the official `openai` Python client from its baked-in models on
//! an air-gapped network (the VM's NIC reaches nothing but the forwarded HTTPS port).
//!
//! Needs images built with `--models default` and `CAIRN_OPENAI_PYTHON` (a Python with the
//! pinned client); `cargo xtask test` provides both.

use anyhow::{Context, Result, ensure};
use cairn_e2e::{Arch, BootPlan, artifacts, boot, disk_copy, repo_root, scratch};

const GIB: u64 = 1 << 30;

fn openai_client_against_booted_image(arch: Arch) -> Result<()> {
    let python = std::env::var("CAIRN_OPENAI_PYTHON").context(
        "CAIRN_OPENAI_PYTHON must name a Python with the openai client (cargo xtask test sets it)",
    )?;
    let a = artifacts(arch)?;
    let dir = scratch(arch, "openai")?;
    let disk = disk_copy(&a, &dir, 2 * GIB)?;
    let plan = BootPlan {
        air_gapped: true,
        memory_mib: 2048,
        ..Default::default()
    };
    let b = boot(&a, &dir, &disk, &plan)?;
    let sys = b.system()?;
    ensure!(
        sys["boot"]["data"]["models"].is_string(),
        "the model partition was not mounted: {}",
        sys["boot"]["data"]
    );
    let mut cmd = std::process::Command::new(python);
    cmd.arg(repo_root().join("tests/openai/check_client.py"))
        .args(["--base-url", &format!("https://127.0.0.1:{}/v1", b.port)])
        .args(["--api-key", &b.token]);
    // Emulated CPUs run the model tens of times slower (x86_64 under TCG has no AVX, so this
    // also runs the portable kernels): fewer and shorter generations here; the hosted test
    // runs every check.
    cmd.arg("--quick");
    let st = cmd.status().context("running the openai client checks")?;
    ensure!(
        st.success(),
        "the openai client checks failed against the booted {arch} image"
    );
    ensure!(
        !b.vm.console().contains("panicked"),
        "a panic was logged on the console"
    );
    Ok(())
}

mod openai_client_against_booted_image {
    #[test]
    #[ignore = "boots QEMU; run it with cargo xtask test"]
    fn x86_64() {
        if let Err(e) = super::openai_client_against_booted_image(cairn_e2e::Arch::X86_64) {
            panic!("{e:#}");
        }
    }
    #[test]
    #[ignore = "boots QEMU; run it with cargo xtask test"]
    fn aarch64() {
        if let Err(e) = super::openai_client_against_booted_image(cairn_e2e::Arch::Aarch64) {
            panic!("{e:#}");
        }
    }
}
