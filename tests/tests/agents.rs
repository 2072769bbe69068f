//! Agents in the booted image: a signed package is trusted and deployed over the API, runs
//! tasks, is checkpointed, and after a reboot through the API the agent resumes from its
//! checkpoint on the data partition.

#[path = "../../agents/tests/common/mod.rs"]
mod common;

use anyhow::{Result, ensure};
use cairn_e2e::{Arch, BootPlan, artifacts, boot, both_arches, disk_copy, scratch};
use serde_json::json;
use std::time::Duration;

both_arches!(checkpoint_is_restored_after_a_reboot);

fn run(b: &cairn_e2e::Booted, input: &str) -> Result<String> {
    let (st, r) = b.send("POST", "/api/v1/agents/echo/runs", &json!({"input": input}))?;
    ensure!(
        st == 200 && r["status"] == "succeeded",
        "run {input}: {st} {r}"
    );
    Ok(r["output"].as_str().unwrap_or_default().to_string())
}

fn checkpoint_is_restored_after_a_reboot(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "agents")?;
    let disk = disk_copy(&a, &dir, 1 << 30)?;
    let key = common::key();
    let package = common::package(&key, "echo", "echo", "[capabilities]\nkv = true\n");
    {
        let mut b = boot(&a, &dir.join("first"), &disk, &BootPlan::default())?;
        let (st, r) = b.send(
            "POST",
            "/api/v1/trust",
            &json!({"key": key.public_hex(), "name": "e2e publisher"}),
        )?;
        ensure!(st == 200 || st == 201, "trust: {st} {r}");
        let r = b.request(
            "POST",
            "/api/v1/agents",
            Some(&package),
            Duration::from_secs(300),
        )?;
        ensure!(r.status == 201, "install: {} {}", r.status, r.text());
        for i in 1..=3 {
            let out = run(&b, "hello")?;
            ensure!(out == format!("hello (task {i})"), "task {i}: {out}");
        }
        let (st, r) = b.send("POST", "/api/v1/agents/echo/checkpoint", &json!({}))?;
        ensure!(st == 200, "checkpoint: {st} {r}");
        let (st, r) = b.send("POST", "/api/v1/system/power", &json!({"action": "reboot"}))?;
        ensure!(st == 202, "reboot: {st} {r}");
        b.vm.wait_exit(Duration::from_secs(180))?;
    }
    let b = boot(&a, &dir.join("second"), &disk, &BootPlan::default())?;
    let (st, r) = b.get("/api/v1/agents/echo")?;
    ensure!(
        st == 200 && r["state"] == "running",
        "after reboot: {st} {r}"
    );
    let out = run(&b, "again")?;
    ensure!(
        out == "again (task 4)",
        "the checkpoint was not restored: {out}"
    );
    ensure!(
        !b.vm.console().contains("panicked"),
        "a panic was logged on the console"
    );
    Ok(())
}
