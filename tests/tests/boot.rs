//! Boot the real images in QEMU and check what a user would: the console comes up, the API
//! answers, data survives a power-off, a killed appliance comes back, a bigger disk is used,
//! and bad disks or configs degrade the boot instead of stopping it.

use anyhow::{Context, Result, bail, ensure};
use cairn_e2e::{Arch, BootPlan, artifacts, boot, both_arches, disk_copy, scratch};
use serde_json::json;
use std::time::Duration;

both_arches!(
    direct_boot_reaches_healthz,
    uefi_usb_stick_boot_reaches_healthz,
    data_survives_acpi_power_off,
    killed_appliance_is_restarted,
    enlarged_image_grows_data_partition,
    boot_without_network_device_is_ready,
    unmountable_data_partition_degrades_read_only,
    malformed_config_is_reported_and_ignored,
    reboot_through_the_api,
);

const GIB: u64 = 1 << 30;

fn direct_boot_reaches_healthz(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "direct")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    let b = boot(&a, &dir, &disk, &BootPlan::default())?;
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
    let r = cairn_qemu::http::request("GET", b.port, "/healthz", None, Duration::from_secs(10))?;
    ensure!(
        r.fingerprint == fp,
        "served certificate {} != banner {fp}",
        r.fingerprint
    );
    Ok(())
}

fn uefi_usb_stick_boot_reaches_healthz(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "uefi-usb")?;
    let disk = disk_copy(&a, &dir, 2 * GIB)?;
    let plan = BootPlan {
        uefi_usb: true,
        ..Default::default()
    };
    let b = boot(&a, &dir, &disk, &plan)?;
    let sys = b.system()?;
    let dev = sys["boot"]["data"]["device"].as_str().unwrap_or_default();
    ensure!(
        dev.starts_with("/dev/sd"),
        "data should be on the USB stick (sdX), is {dev:?}"
    );
    ensure!(
        sys["boot"]["modules"]["loaded"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "usb_storage")),
        "usb_storage not loaded: {}",
        sys["boot"]["modules"]
    );
    ensure!(
        sys["boot"]["data"]["esp"].as_str().is_some(),
        "ESP not found"
    );
    Ok(())
}

fn data_survives_acpi_power_off(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "power-off")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    let value =
        json!({"written_at": format!("{:?}", std::time::SystemTime::now()), "arch": arch.name()});
    {
        let mut b = boot(&a, &dir, &disk, &BootPlan::default())?;
        let (st, r) = b.send("PUT", "/api/v1/settings/e2e.persist", &value)?;
        ensure!(st == 200 && r["durable"] == true, "PUT: {st} {r}");
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
    }
    let b = boot(&a, &dir.join("second"), &disk, &BootPlan::default())?;
    let (st, r) = b.get("/api/v1/settings/e2e.persist")?;
    ensure!(st == 200, "after reboot: {st} {r}");
    ensure!(
        r["value"] == value,
        "read back {} != written {value}",
        r["value"]
    );
    Ok(())
}

fn killed_appliance_is_restarted(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "kill")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    // Magic SysRq from the keyboard is how an operator at the box kills every process but init.
    let plan = BootPlan {
        extra_cmdline: "sysrq_always_enabled".into(),
        ..Default::default()
    };
    let mut b = boot(&a, &dir, &disk, &plan)?;
    let before = b.system()?;
    let pid = before["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cairn"))
        .and_then(|p| p["pid"].as_u64())
        .context("no cairn pid")?;
    let mark = b.vm.console_len();
    b.vm.send_keys(&["alt", "sysrq", "i"])?;
    b.vm.wait_for_console_from(
        "appliance killed by signal 9",
        mark,
        Duration::from_secs(60),
    )?;
    b.vm.wait_for_console_from(
        cairn_init::layout::READY_MARKER,
        mark,
        cairn_e2e::BOOT_TIMEOUT,
    )?;
    b.vm.wait_https(b.port, "/healthz", Duration::from_secs(60))?;
    let after = b.system()?;
    let new_pid = after["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cairn"))
        .and_then(|p| p["pid"].as_u64())
        .context("no cairn pid after restart")?;
    ensure!(new_pid != pid, "same pid {pid} after the kill");
    ensure!(
        after["boot"]["appliance"]["restarts"] == 1,
        "restarts: {}",
        after["boot"]["appliance"]
    );
    Ok(())
}

fn enlarged_image_grows_data_partition(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "grow")?;
    let image_bytes = std::fs::metadata(&a.image)?.len();
    let disk = disk_copy(&a, &dir, 4 * GIB)?;
    let b = boot(&a, &dir, &disk, &BootPlan::default())?;
    let sys = b.system()?;
    let grown = &sys["boot"]["data"]["grown"];
    ensure!(
        grown["to_bytes"].as_u64().unwrap_or(0) > 3 * GIB,
        "partition not grown: {grown}"
    );
    let fs = sys["disks"][0]["total_bytes"].as_u64().unwrap_or(0);
    ensure!(
        fs > 3 * GIB,
        "file system is {fs} bytes; the image was {image_bytes}"
    );
    // The grown table is valid and spans the disk (read from the host).
    drop(b);
    let mut f = std::fs::File::open(&disk)?;
    let sectors = 4 * GIB / 512;
    let gpt = cairn_init::gpt::Gpt::read(&mut f, sectors).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(gpt.sectors == sectors, "backup GPT not moved to the end");
    Ok(())
}

fn boot_without_network_device_is_ready(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "no-network")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    let plan = BootPlan {
        network: false,
        ..Default::default()
    };
    let b = boot(&a, &dir, &disk, &plan)?;
    let c = b.vm.console();
    ensure!(
        c.contains("no network interface"),
        "banner should say there is no network"
    );
    ensure!(!c.contains("cannot continue"), "no network is not fatal");
    Ok(())
}

fn unmountable_data_partition_degrades_read_only(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "degraded")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    // Wipe the ext4 superblock (1 KiB into the partition).
    let (first, _) = {
        let mut f = std::fs::File::open(&disk)?;
        let g =
            cairn_init::gpt::Gpt::read(&mut f, GIB / 512).map_err(|e| anyhow::anyhow!("{e}"))?;
        let p = g
            .by_name(cairn_init::layout::DATA_LABEL)
            .context("no data partition")?;
        (p.first_lba, p.last_lba)
    };
    let sb = first * 512 + 1024;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk)?;
        f.seek(SeekFrom::Start(sb))?;
        f.write_all(&[0u8; 1024])?;
    }
    let b = boot(&a, &dir, &disk, &BootPlan::default())?;
    ensure!(
        b.vm.console().contains("DEGRADED, READ-ONLY"),
        "console does not say degraded"
    );
    let sys = b.system()?;
    ensure!(
        sys["data"]["mode"] == "degraded",
        "API data mode: {}",
        sys["data"]
    );
    ensure!(
        sys["boot"]["data"]["state"] == "degraded",
        "boot info: {}",
        sys["boot"]["data"]
    );
    let (st, h) = b.get("/healthz")?;
    ensure!(st == 200 && h["status"] == "degraded", "healthz {st} {h}");
    let (st, r) = b.send("PUT", "/api/v1/settings/x", &json!(1))?;
    ensure!(
        st == 503 && r["error"]["code"] == "read_only",
        "write in degraded mode: {st} {r}"
    );
    drop(b);
    // Nothing reformatted it: the superblock is still blank.
    let bytes = std::fs::read(&disk)?;
    let s = sb as usize;
    ensure!(
        bytes[s..s + 1024].iter().all(|x| *x == 0),
        "the data partition was written to"
    );
    Ok(())
}

fn malformed_config_is_reported_and_ignored(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "bad-config")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    write_esp_file(
        &disk,
        "cairn.toml",
        b"# operator's file\nhostname = \"edge-7\"\n[network]\nmode = dhcp\n",
    )?;
    let b = boot(&a, &dir, &disk, &BootPlan::default())?;
    let c = b.vm.console();
    ensure!(
        c.contains("/boot/cairn.toml line 4"),
        "the error does not name the line:\n{c}"
    );
    let sys = b.system()?;
    ensure!(
        sys["hostname"] == "cairn",
        "defaults not kept: hostname {}",
        sys["hostname"]
    );
    ensure!(
        sys["boot"]["network"]["state"] == "configured",
        "network not up with defaults"
    );
    Ok(())
}

fn reboot_through_the_api(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "api-reboot")?;
    let disk = disk_copy(&a, &dir, GIB)?;
    let mut b = boot(&a, &dir, &disk, &BootPlan::default())?;
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

/// Writes a file onto the ESP of a disk image (as an operator would on another computer).
fn write_esp_file(disk: &std::path::Path, name: &str, data: &[u8]) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let sectors = f.metadata()?.len() / 512;
    let g = cairn_init::gpt::Gpt::read(&mut f, sectors).map_err(|e| anyhow::anyhow!("{e}"))?;
    let esp = g.by_name(cairn_init::layout::ESP_LABEL).context("no ESP")?;
    let (start, len) = (esp.first_lba * 512, esp.size_bytes());
    let mut part = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(start))?;
    std::io::Read::read_exact(&mut f, &mut part)?;
    {
        let fs = fatfs::FileSystem::new(std::io::Cursor::new(&mut part), fatfs::FsOptions::new())?;
        let mut file = fs.root_dir().create_file(name)?;
        file.truncate()?;
        file.write_all(data)?;
        drop(file);
        fs.unmount()?;
    }
    f.seek(SeekFrom::Start(start))?;
    f.write_all(&part)?;
    if part.len() as u64 != len {
        bail!("ESP size changed");
    }
    Ok(())
}
