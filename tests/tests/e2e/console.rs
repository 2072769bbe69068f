//! The web console of the booted x86_64 image in a real browser: Chromium (playwright-core,
//! `tests/console/console.mjs`) onboards with the setup code read from the serial console,
//! walks every page, logs out and in, searches memory, renames the site, changes the host name
//! and (for real, then reverts) the network, installs a signed agent by upload and runs it,
//! loads the on-device model and streams a chat reply from it; after an ACPI
//! power-off and a new boot on the same disk the second phase logs in, finds the new site name
//! and checks the lockout. Screenshots land in `target/cairn/e2e/x86_64/console/shots`.

use crate::common;
use anyhow::{Context, Result, ensure};
use cairn_e2e::{Arch, BootPlan, artifacts, disk_copy, repo_root, scratch, setup_code};
use std::path::Path;
use std::time::Duration;

fn browser(phase: &str, port: u16, shots: &Path, extra: &[(&str, String)]) -> Result<()> {
    let chromium = std::env::var("CAIRN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = repo_root().join("tests/console");
    ensure!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new(&chromium).is_file(),
        "the browser tests need Chromium and tests/console/node_modules: run `cargo xtask test` \
         (or `cargo xtask deps` and `cd tests/console && npm ci`)"
    );
    let out = std::process::Command::new("node")
        .arg("console.mjs")
        .current_dir(&dir)
        .env("CAIRN_URL", format!("https://127.0.0.1:{port}"))
        .env("CAIRN_PHASE", phase)
        .env("CAIRN_CHROMIUM", &chromium)
        .env("CAIRN_SCREENSHOTS", shots)
        .env("CAIRN_SITE_NAME", "north-3 (booted image)")
        // Emulated without KVM: every wait is longer.
        .env("CAIRN_SLOW", "6")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .context("running node")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- console.mjs against the booted image, phase {phase} ---\n{text}");
    ensure!(out.status.success(), "phase {phase} failed:\n{text}");
    Ok(())
}

fn console_of_the_booted_image(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "console")?;
    let disk = disk_copy(&a, &dir, 1 << 30)?;
    let shots = dir.join("shots");
    {
        // Booted, but not onboarded: the browser does that with the code on the console.
        let mut b = cairn_e2e::start(&a, &dir.join("first"), &disk, &BootPlan::default())?;
        b.vm.wait_for_console(cairn_init::layout::READY_MARKER, cairn_e2e::BOOT_TIMEOUT)?;
        b.vm.wait_https(b.port, "/healthz", Duration::from_secs(60))?;
        let code = setup_code(&b.vm.console()).context("the console shows no setup code")?;
        // A signed agent for the upload scenario (the page trusts its key first), and the
        // model the image carries for the chat.
        let key = common::key();
        let package = dir.join("console-echo.cpkg");
        std::fs::write(
            &package,
            common::package(&key, "echo", "console-echo", "[capabilities]\nkv = true\n"),
        )?;
        browser(
            "first",
            b.port,
            &shots,
            &[
                ("CAIRN_SETUP_CODE", code),
                ("CAIRN_AGENT_PACKAGE", package.display().to_string()),
                ("CAIRN_AGENT_NAME", "console-echo".into()),
                ("CAIRN_AGENT_KEY", key.public_hex()),
                ("CAIRN_CHAT_MODEL", "smollm2-135m-instruct-q4_1".into()),
            ],
        )?;
        b.vm.powerdown()?;
        b.vm.wait_exit(Duration::from_secs(120))?;
    }
    let mut b = cairn_e2e::start(&a, &dir.join("second"), &disk, &BootPlan::default())?;
    b.vm.wait_for_console(cairn_init::layout::READY_MARKER, cairn_e2e::BOOT_TIMEOUT)?;
    b.vm.wait_https(b.port, "/healthz", Duration::from_secs(60))?;
    ensure!(
        setup_code(&b.vm.console()).is_none(),
        "an onboarded appliance showed a setup code again"
    );
    browser("second", b.port, &shots, &[])?;
    Ok(())
}

#[test]
#[ignore = "boots QEMU; run it with cargo xtask test"]
fn console_of_the_booted_x86_64_image() {
    if let Err(e) = console_of_the_booted_image(Arch::X86_64) {
        panic!("{e:#}");
    }
}
