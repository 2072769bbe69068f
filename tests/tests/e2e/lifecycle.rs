//! One appliance through its life, per architecture, on two boots of one disk — what a user
//! does in the first days, checked as they would notice it:
//!
//! First boot (direct kernel boot, an air-gapped NIC that reaches nothing but the forwarded
//! HTTPS port):
//! - `direct_boot_reaches_healthz`: the console comes up, the API answers, the banner shows
//!   the address, the certificate fingerprint the client sees and the boot timeline;
//! - `appliance_runs_unprivileged`: the service runs as its own user, not root;
//! - `killed_appliance_is_restarted`: SysRq-i kills every process but init; the service
//!   comes back under a new pid;
//! - `openai_client_against_booted_image`: the official `openai` Python client against the
//!   baked-in models (`tests/openai/check_client.py --quick`);
//! - `agents_run_and_checkpoint`: a signed package is trusted, deployed, runs tasks and is
//!   checkpointed;
//! - `host_name_applies_at_once`, `network_change_is_reverted_unless_confirmed`,
//!   `confirmed_static_network`, `operator_sets_the_clock` (`docs/console.md`, "Machine
//!   settings"): a network change that cuts the operator off really cuts them off and comes
//!   back by itself when nobody confirms it;
//! - `backup_restores_under_init` (`docs/backup.md`): a backup downloaded, a setting written
//!   after it, the backup restored: init restarts the service, which swaps the backup in and
//!   comes back without the later setting and with its agent;
//! - `data_survives_acpi_power_off` (first half): an acknowledged setting, then the power
//!   button, and a clean shutdown on the console.
//!
//! Second boot, same disk:
//! - `data_survives_acpi_power_off`, `settings_survive_a_reboot`,
//!   `checkpoint_is_restored_after_a_reboot`: everything written on the first boot is there,
//!   and the agent resumes from its checkpoint;
//! - `reboot_through_the_api`: a bad action is refused, a reboot is clean.
//!
//! (QEMU starts each process with the host's time in its RTC, so the RTC write is not checked
//! across the reboot.)

use crate::common;
use anyhow::{Context, Result, bail, ensure};
use cairn_e2e::{
    Arch, BootPlan, Booted, Checks, artifacts, boot, both_arches, disk_copy, no_panic_on,
    repo_root, scratch,
};
use cairn_qemu::http;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both_arches!(appliance_lifecycle);

const GIB: u64 = 1 << 30;

fn plan() -> BootPlan {
    BootPlan {
        // Magic SysRq from the keyboard is how an operator at the box kills every process
        // but init.
        extra_cmdline: "sysrq_always_enabled".into(),
        air_gapped: true,
        // The on-device models answer the OpenAI client.
        memory_mib: 2048,
        ..Default::default()
    }
}

fn appliance_lifecycle(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "lifecycle")?;
    let disk = disk_copy(&a, &dir, 2 * GIB)?;
    let mut c = Checks::new(arch);
    let key = common::key();
    let persisted =
        json!({"written_at": format!("{:?}", std::time::SystemTime::now()), "arch": arch.name()});
    {
        let Some(mut b) = c.step("first boot", || {
            boot(&a, &dir.join("first"), &disk, &plan())
        }) else {
            return c.finish();
        };
        c.check("direct_boot_reaches_healthz", || {
            healthz_and_banner(&b, arch)
        });
        c.check("appliance_runs_unprivileged", || {
            let sys = b.system()?;
            let uid = |name: &str| {
                sys["processes"]
                    .as_array()
                    .and_then(|p| p.iter().find(|p| p["name"] == name))
                    .map(|p| p["uid"].clone())
            };
            ensure!(
                uid("cairn") == Some(json!(cairn_init::layout::APPLIANCE_UID)),
                "the appliance runs as {:?}: {}",
                uid("cairn"),
                sys["processes"]
            );
            ensure!(
                uid("cairn-init") == Some(json!(0)),
                "init: {:?}",
                uid("cairn-init")
            );
            ensure!(
                sys["boot"]["warnings"].as_array().is_none_or(|w| w
                    .iter()
                    .all(|x| !x.as_str().unwrap_or("").contains("as root"))),
                "init warned: {}",
                sys["boot"]["warnings"]
            );
            Ok(())
        });
        c.check("killed_appliance_is_restarted", || kill_and_restart(&mut b));
        c.check("openai_client_against_booted_image", || openai_client(&b));
        c.check("agents_run_and_checkpoint", || agents_first_boot(&b, &key));
        settings_first_boot(&mut c, &b);
        c.check("backup_restores_under_init", || backup_and_restore(&mut b));
        c.check("data_survives_acpi_power_off (write, power button)", || {
            let (st, r) = b.send("PUT", "/api/v1/settings/e2e.persist", &persisted)?;
            ensure!(st == 200 && r["durable"] == true, "PUT: {st} {r}");
            no_panic_on(&b)?;
            power_off(&mut b)
        });
    }
    let Some(mut b) = c.step("second boot", || {
        boot(&a, &dir.join("second"), &disk, &plan())
    }) else {
        return c.finish();
    };
    c.check("data_survives_acpi_power_off (read back)", || {
        let (st, r) = b.get("/api/v1/settings/e2e.persist")?;
        ensure!(st == 200, "after the power-off: {st} {r}");
        ensure!(
            r["value"] == persisted,
            "read back {} != written {persisted}",
            r["value"]
        );
        Ok(())
    });
    c.check("settings_survive_a_reboot", || {
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
    });
    c.check("checkpoint_is_restored_after_a_reboot", || {
        let (st, r) = b.get("/api/v1/agents/echo")?;
        ensure!(
            st == 200 && r["state"] == "running",
            "after reboot: {st} {r}"
        );
        let out = run_echo(&b, "again")?;
        ensure!(
            out == "again (task 4)",
            "the checkpoint was not restored: {out}"
        );
        Ok(())
    });
    c.check("no panic on the console", || no_panic_on(&b));
    c.check("reboot_through_the_api", || reboot_through_the_api(&mut b));
    c.finish()
}

fn healthz_and_banner(b: &Booted, arch: Arch) -> Result<()> {
    let (st, h) = b.get("/healthz")?;
    ensure!(st == 200 && h["status"] == "ok", "healthz: {st} {h}");
    let sys = b.system()?;
    ensure!(sys["arch"] == arch.name(), "arch {}", sys["arch"]);
    ensure!(sys["mode"] == "appliance", "mode {}", sys["mode"]);
    ensure!(sys["data"]["mode"] == "read-write", "data {}", sys["data"]);
    let t = &sys["boot"]["timeline"];
    for k in ["init_ms", "disks_ms", "ready_ms"] {
        ensure!(t[k].as_u64().unwrap_or(0) > 0, "timeline lacks {k}: {t}");
    }
    ensure!(
        sys["boot"]["modules"]["loaded"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "virtio_blk")),
        "virtio_blk not loaded: {}",
        sys["boot"]["modules"]
    );
    ensure!(
        sys["boot"]["network"]["state"] == "configured",
        "network {}",
        sys["boot"]["network"]
    );
    ensure!(
        sys["boot"]["data"]["models"].is_string(),
        "the model partition was not mounted: {}",
        sys["boot"]["data"]
    );
    ensure!(
        !sys["cpu"]["features"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "no CPU features"
    );
    // The banner shows the address, the certificate fingerprint and the timeline.
    let console = b.vm.console();
    let fp = sys["tls_fingerprint"].as_str().unwrap_or_default();
    ensure!(
        !fp.is_empty() && console.contains(fp),
        "banner lacks the fingerprint {fp}"
    );
    ensure!(
        console.contains("https://10.0.2.15/"),
        "banner lacks the console URL"
    );
    ensure!(
        console.contains("Boot:        kernel"),
        "banner lacks the timeline"
    );
    // The fingerprint the client saw is the one the banner shows.
    let r = http::request("GET", b.port, "/healthz", None, Duration::from_secs(10))?;
    ensure!(
        r.fingerprint == fp,
        "served certificate {} != banner {fp}",
        r.fingerprint
    );
    Ok(())
}

fn cairn_pid(sys: &Value) -> Option<u64> {
    sys["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cairn"))
        .and_then(|p| p["pid"].as_u64())
}

fn kill_and_restart(b: &mut Booted) -> Result<()> {
    let pid = cairn_pid(&b.system()?).context("no cairn pid")?;
    let mark = b.vm.console_len();
    b.vm.send_keys(&["alt", "sysrq", "i"])?;
    b.vm.wait_for_console_from(
        "appliance killed by signal 9",
        mark,
        Duration::from_secs(60),
    )?;
    service_back(b, mark)?;
    let after = b.system()?;
    let new_pid = cairn_pid(&after).context("no cairn pid after restart")?;
    ensure!(new_pid != pid, "same pid {pid} after the kill");
    ensure!(
        after["boot"]["appliance"]["restarts"] == 1,
        "restarts: {}",
        after["boot"]["appliance"]
    );
    Ok(())
}

/// Waits until init has started the service again (its ready line after console offset
/// `mark`) and it answers.
fn service_back(b: &mut Booted, mark: usize) -> Result<()> {
    b.vm.wait_for_console_from(
        cairn_init::layout::READY_MARKER,
        mark,
        cairn_e2e::BOOT_TIMEOUT,
    )?;
    b.vm.wait_https(b.port, "/healthz", Duration::from_secs(60))?;
    Ok(())
}

fn openai_client(b: &Booted) -> Result<()> {
    let python = std::env::var("CAIRN_OPENAI_PYTHON").context(
        "CAIRN_OPENAI_PYTHON must name a Python with the openai client (cargo xtask test sets it)",
    )?;
    // Emulated CPUs run the model tens of times slower (x86_64 under TCG has no AVX, so this
    // also runs the portable kernels): fewer and shorter generations here; the hosted test
    // runs every check.
    let st = std::process::Command::new(python)
        .arg(repo_root().join("tests/openai/check_client.py"))
        .args(["--base-url", &format!("https://127.0.0.1:{}/v1", b.port)])
        .args(["--api-key", &b.token])
        .arg("--quick")
        .status()
        .context("running the openai client checks")?;
    ensure!(
        st.success(),
        "the openai client checks failed (output above)"
    );
    Ok(())
}

fn run_echo(b: &Booted, input: &str) -> Result<String> {
    let (st, r) = b.send("POST", "/api/v1/agents/echo/runs", &json!({"input": input}))?;
    ensure!(
        st == 200 && r["status"] == "succeeded",
        "run {input}: {st} {r}"
    );
    Ok(r["output"].as_str().unwrap_or_default().to_string())
}

fn agents_first_boot(b: &Booted, key: &cairn_agents::package::SigningKey) -> Result<()> {
    let package = common::package(key, "echo", "echo", "[capabilities]\nkv = true\n");
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
        let out = run_echo(b, "hello")?;
        ensure!(out == format!("hello (task {i})"), "task {i}: {out}");
    }
    let (st, r) = b.send("POST", "/api/v1/agents/echo/checkpoint", &json!({}))?;
    ensure!(st == 200, "checkpoint: {st} {r}");
    Ok(())
}

/// A backup, a write, the restore: the service restarts under init and the write is gone.
fn backup_and_restore(b: &mut Booted) -> Result<()> {
    const PASSPHRASE: &str = "e2e backup passphrase";
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], b.port));
    let bearer = format!("Bearer {}", b.token);
    let slow = Duration::from_secs(300);
    let r = http::request_with(
        addr,
        "POST",
        "/api/v1/backup",
        &[("Authorization", &bearer)],
        Some(json!({"passphrase": PASSPHRASE}).to_string().as_bytes()),
        None,
        slow,
    )?;
    ensure!(r.status == 200, "backup: {} {}", r.status, r.text());
    let archive = r.body;
    ensure!(
        archive.starts_with(b"age-encryption.org/v1\n"),
        "not an age file"
    );
    let (st, r) = b.send("PUT", "/api/v1/settings/e2e.after-backup", &json!(true))?;
    ensure!(st == 200, "PUT: {st} {r}");
    let pid = cairn_pid(&b.system()?).context("no cairn pid")?;
    let mark = b.vm.console_len();
    let r = http::request_with(
        addr,
        "POST",
        "/api/v1/backup/restore",
        &[
            ("Authorization", &bearer),
            ("X-Cairn-Passphrase", PASSPHRASE),
        ],
        Some(&archive),
        None,
        slow,
    )?;
    ensure!(r.status == 202, "restore: {} {}", r.status, r.text());
    service_back(b, mark)?;
    let sys = b.system()?;
    ensure!(
        cairn_pid(&sys).is_some_and(|p| p != pid),
        "the service did not restart: {}",
        sys["processes"]
    );
    let (st, r) = b.get("/api/v1/settings/e2e.after-backup")?;
    ensure!(
        st == 404,
        "the write after the backup survived the restore: {st} {r}"
    );
    let (st, r) = b.get("/api/v1/agents/echo")?;
    ensure!(st == 200 && r["state"] == "running", "agent: {st} {r}");
    Ok(())
}

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

fn settings_first_boot(c: &mut Checks, b: &Booted) {
    c.check("host_name_applies_at_once", || {
        let v = settings(b)?;
        ensure!(
            v["managed"] == true,
            "init does not manage the settings: {v}"
        );
        ensure!(
            v["in_force"]["network"]["mode"] == "dhcp",
            "not on DHCP at first: {v}"
        );
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
        Ok(())
    });
    c.check("network_change_is_reverted_unless_confirmed", || {
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
            if !reachable(b) {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        ensure!(cut, "the appliance stayed reachable at its old address");
        // ...until the deadline passes and the previous settings come back by themselves.
        let back = loop {
            if reachable(b) {
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
        let v = settings(b)?;
        ensure!(
            v["pending"].is_null(),
            "still pending after the revert: {v}"
        );
        ensure!(
            v["settings"]["network"]["mode"] == "dhcp"
                && v["in_force"]["network"]["mode"] == "dhcp",
            "DHCP not restored: {v}"
        );
        ensure!(
            v["settings"]["hostname"] == "edge-e2e",
            "the revert took the host name too: {v}"
        );
        Ok(())
    });
    c.check("confirmed_static_network", || {
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
            let v = settings(b)?;
            let net = &v["in_force"]["network"];
            if net["mode"] == "static" && net["state"] == "configured" {
                break;
            }
            ensure!(Instant::now() < until, "static settings not in force: {v}");
            std::thread::sleep(Duration::from_millis(500));
        }
        let (st, v) = b.send("POST", "/api/v1/system/settings/confirm", &json!({}))?;
        ensure!(st == 200, "confirm answered {st}: {v}");
        Ok(())
    });
    c.check("operator_sets_the_clock", || {
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
        Ok(())
    });
}

/// Presses the power button and waits for a clean shutdown.
fn power_off(b: &mut Booted) -> Result<()> {
    b.vm.powerdown()?;
    let status = b.vm.wait_exit(Duration::from_secs(120))?;
    ensure!(status.success(), "QEMU exit {status}");
    let c = b.vm.console();
    ensure!(
        c.contains("powering off (power button)"),
        "no clean power-off on the console"
    );
    ensure!(
        c.contains("appliance stopped"),
        "appliance was not stopped cleanly"
    );
    Ok(())
}

fn reboot_through_the_api(b: &mut Booted) -> Result<()> {
    let (st, r) = b.send(
        "POST",
        "/api/v1/system/power",
        &json!({"action": "sideways"}),
    )?;
    ensure!(st == 400, "bad action accepted: {st} {r}");
    let (st, r) = b.send("POST", "/api/v1/system/power", &json!({"action": "reboot"}))?;
    ensure!(st == 202, "reboot refused: {st} {r}");
    // QEMU runs with -no-reboot, so a clean reboot ends the process.
    b.vm.wait_exit(Duration::from_secs(120))?;
    ensure!(
        b.vm.console()
            .contains("rebooting (requested through the API)"),
        "no clean reboot"
    );
    Ok(())
}
