//! Machine settings on the booted image (`docs/console.md`, "Machine settings"): a host name
//! change applies at once; a network change that cuts the operator off really cuts them off
//! and comes back by itself when nobody confirms it; a confirmed static setup survives a
//! reboot; the operator can set the clock. (QEMU starts each process with the host's time in
//! its RTC, so the RTC write is not checked across the reboot.)

use anyhow::{Result, bail, ensure};
use cairn_e2e::{Arch, BootPlan, Booted, artifacts, boot, both_arches, disk_copy, scratch};
use cairn_qemu::http;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both_arches!(network_change_is_reverted_unless_confirmed);

const GIB: u64 = 1 << 30;

/// Whether `/healthz` answers within a few seconds.
fn reachable(b: &Booted) -> bool {
    http::request("GET", b.port, "/healthz", None, Duration::from_secs(4))
        .is_ok_and(|r| r.status == 200)
}

fn settings(b: &Booted) -> Result<Value> {
    let (st, v) = b.get("/api/v1/system/settings")?;
    ensure!(st == 200, "settings answered {st}: {v}");
    Ok(v)
}

fn network_change_is_reverted_unless_confirmed(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "settings")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    let mut b = boot(&a, &dir, &disk, &BootPlan::default())?;
    let v = settings(&b)?;
    ensure!(
        v["managed"] == true,
        "init does not manage the settings: {v}"
    );
    ensure!(
        v["in_force"]["network"]["mode"] == "dhcp",
        "not on DHCP at first: {v}"
    );

    // The host name applies at once, without touching the network.
    let before = b.system()?["boot"]["network"]["configured_ms"].clone();
    ensure!(before.is_u64(), "network not configured: {before}");
    let (st, v) = b.send(
        "PUT",
        "/api/v1/system/settings",
        &json!({"hostname": "edge-e2e"}),
    )?;
    ensure!(st == 200, "host name change answered {st}: {v}");
    let sys = b.system()?;
    ensure!(
        sys["hostname"] == "edge-e2e",
        "host name not in force: {}",
        sys["hostname"]
    );
    ensure!(
        sys["boot"]["network"]["configured_ms"] == before,
        "a host name change restarted the network: {}",
        sys["boot"]["network"]
    );

    // An address QEMU's port forward does not reach: the operator is cut off for real...
    let (st, v) = b.send(
        "PUT",
        "/api/v1/system/settings",
        &json!({"network": {"mode": "static", "address": "10.0.2.99/24", "gateway": "10.0.2.2"},
                "confirm_within_s": 20}),
    )?;
    ensure!(st == 202, "network change answered {st}: {v}");
    let changed = Instant::now();
    let mut cut = false;
    while changed.elapsed() < Duration::from_secs(15) {
        if !reachable(&b) {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ensure!(cut, "the appliance stayed reachable at its old address");
    // ...until the deadline passes and the previous settings come back by themselves.
    let back = loop {
        if reachable(&b) {
            break changed.elapsed();
        }
        if changed.elapsed() > Duration::from_secs(120) {
            bail!(
                "not reachable again after the deadline:\n{}",
                b.vm.console()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    ensure!(
        back >= Duration::from_secs(15),
        "reachable again after {back:?}, before the deadline"
    );
    let v = settings(&b)?;
    ensure!(
        v["pending"].is_null(),
        "still pending after the revert: {v}"
    );
    ensure!(
        v["settings"]["network"]["mode"] == "dhcp" && v["in_force"]["network"]["mode"] == "dhcp",
        "DHCP not restored: {v}"
    );
    ensure!(
        v["settings"]["hostname"] == "edge-e2e",
        "the revert took the host name too: {v}"
    );

    // A static setup that keeps the operator connected, confirmed in time.
    let (st, v) = b.send(
        "PUT",
        "/api/v1/system/settings",
        &json!({"network": {"mode": "static", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
                            "dns": ["10.0.2.3"]},
                "confirm_within_s": 60}),
    )?;
    ensure!(st == 202, "static change answered {st}: {v}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v = settings(&b)?;
        let net = &v["in_force"]["network"];
        if net["mode"] == "static" && net["state"] == "configured" {
            break;
        }
        ensure!(Instant::now() < until, "static settings not in force: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (st, v) = b.send("POST", "/api/v1/system/settings/confirm", &json!({}))?;
    ensure!(st == 200, "confirm answered {st}: {v}");

    // The operator sets the clock an hour ahead; init sets it (and the RTC).
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let (st, v) = b.send(
        "POST",
        "/api/v1/system/clock",
        &json!({"unix": host_now + 3600}),
    )?;
    ensure!(st == 200, "clock answered {st}: {v}");
    std::thread::sleep(Duration::from_secs(1));
    let (_, c) = b.get("/api/v1/system/clock")?;
    let t = c["unix"].as_i64().unwrap_or(0);
    ensure!(
        (host_now + 3590..host_now + 3700).contains(&t) && c["source"] == "operator",
        "clock not set: {c} (host {host_now})"
    );

    // The settings survive a reboot.
    let (st, v) = b.send("POST", "/api/v1/system/power", &json!({"action": "reboot"}))?;
    ensure!(st == 202, "reboot answered {st}: {v}");
    b.vm.wait_exit(Duration::from_secs(120))?;
    drop(b);
    let b = boot(&a, &dir, &disk, &BootPlan::default())?;
    let sys = b.system()?;
    let net = &sys["boot"]["network"];
    ensure!(
        sys["hostname"] == "edge-e2e"
            && net["mode"] == "static"
            && net["addresses"] == json!(["10.0.2.15/24"])
            && net["dns"] == json!(["10.0.2.3"]),
        "settings lost in the reboot: hostname {} network {net}",
        sys["hostname"]
    );
    Ok(())
}
