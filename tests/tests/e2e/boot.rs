//! Boots of the real images that need a disk or machine of their own: UEFI from a USB stick
//! bigger than the image with an operator's broken `cairn.toml` on it, no network device, and
//! an unmountable data partition. Bad disks or configs degrade the boot instead of stopping it.
//! The everyday life of an appliance (power-off, reboot, a killed service, settings, agents,
//! the OpenAI API) is `lifecycle.rs`, on one disk and two boots.

use anyhow::{Context, Result, bail, ensure};
use cairn_e2e::{Arch, BootPlan, Checks, artifacts, boot, both_arches, disk_copy, scratch};
use serde_json::json;

both_arches!(
    usb_stick_boot,
    boot_without_network_device_is_ready,
    unmountable_data_partition_degrades_read_only,
);

const GIB: u64 = 1 << 30;

/// A user flashes the image to a USB stick bigger than the image, edits `cairn.toml` on its
/// ESP on another computer (and gets it wrong), and boots the stick under UEFI firmware.
fn usb_stick_boot(arch: Arch) -> Result<()> {
    let a = artifacts(arch)?;
    let dir = scratch(arch, "usb-stick")?;
    let image_bytes = std::fs::metadata(&a.image)?.len();
    let disk = disk_copy(&a, &dir, 4 * GIB)?;
    write_esp_file(
        &disk,
        "cairn.toml",
        b"# operator's file\nhostname = \"edge-7\"\n[network]\nmode = dhcp\n",
    )?;
    let plan = BootPlan {
        uefi_usb: true,
        ..Default::default()
    };
    let mut c = Checks::new(arch);
    let Some(b) = c.step("UEFI boot from the USB stick", || {
        boot(&a, &dir, &disk, &plan)
    }) else {
        return c.finish();
    };
    let Some(sys) = c.step("system", || b.system()) else {
        return c.finish();
    };
    c.check("uefi_usb_stick_boot_reaches_healthz", || {
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
    });
    c.check("malformed_config_is_reported_and_ignored", || {
        let console = b.vm.console();
        ensure!(
            console.contains("/boot/cairn.toml line 4"),
            "the error does not name the line:\n{console}"
        );
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
    });
    c.check("enlarged_image_grows_data_partition (API)", || {
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
        Ok(())
    });
    drop(b);
    c.check("enlarged_image_grows_data_partition (GPT)", || {
        // The grown table is valid and spans the disk (read from the host).
        let mut f = std::fs::File::open(&disk)?;
        let sectors = 4 * GIB / 512;
        let gpt =
            cairn_init::gpt::Gpt::read(&mut f, sectors).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(gpt.sectors == sectors, "backup GPT not moved to the end");
        Ok(())
    });
    c.finish()
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
