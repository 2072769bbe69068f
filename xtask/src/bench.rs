//! `cargo xtask bench <area>`: Cairn measured against a named peer in the same run.
//!
//! `boot`: per architecture, the median of N boots from QEMU start to "appliance ready",
//! next to the same kernel on the same virtual hardware booting a hello-world init (the floor),
//! as a ratio; idle RSS of cairn-init and cairn; image size without models.
//!
//! `inference`: chat and embedding speed next to llama.cpp and sentence-transformers (see
//! [`inference`]).
//!
//! `agents`: instantiate latency, trivial tasks, idle agents' memory next to native process
//! spawns (see [`agents`]).
//!
//! `memory`: insert, recall latency and quality, and size on disk next to SQLite (see
//! [`memory`]).
//!
//! `update`: whole-box backup and restore per 10,000 memory records next to `tar | age` of
//! the stopped data directory (see [`update`]).

mod agents;
mod inference;
mod memory;
mod update;

use crate::build::{self, ImageOptions};
use crate::deps;
use anyhow::{Context, Result, bail};
use cairn_image::Arch;
use cairn_image::initramfs::{Node, Tree};
use cairn_qemu::{Attach, Boot, Drive, Forward, Vm, VmConfig};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn figure(
    name: &str,
    unit: &str,
    value: f64,
    peer: Option<(&str, f64)>,
    target: Option<Value>,
) -> Value {
    let mut f = json!({"name": name, "unit": unit, "value": (value * 10.0).round() / 10.0});
    if let Some((peer_name, peer_value)) = peer {
        f["peer"] = json!(peer_name);
        f["peer_value"] = json!((peer_value * 10.0).round() / 10.0);
        f["ratio"] = json!((value / peer_value * 1000.0).round() / 1000.0);
    }
    if let Some(t) = target {
        f["target"] = t;
    }
    f
}

/// The floor's initramfs: only the hello-world init.
fn floor_initramfs(floor_bin: &Path, out: &Path) -> Result<()> {
    let mut t = Tree::new();
    t.add("dev", Node::Dir)?;
    t.add("dev/console", Node::CharDev(5, 1))?;
    t.file("init", std::fs::read(floor_bin)?, 0o755)?;
    let cpio = t.to_cpio(0)?;
    std::fs::write(out, cairn_image::initramfs::gzip(&cpio)?)?;
    Ok(())
}

fn vm_config(
    arch: Arch,
    work: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    disk: &Path,
    port: u16,
) -> VmConfig {
    let mut cfg = VmConfig::new(
        arch,
        Boot::Direct {
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            cmdline: cmdline.to_string(),
        },
        work,
    );
    cfg.drives.push(Drive {
        path: disk.to_path_buf(),
        attach: Attach::Virtio,
        cache: cairn_qemu::WriteCache::Host,
    });
    cfg.network = Some(vec![Forward {
        host: port,
        guest: cairn_init::layout::HTTPS_PORT,
    }]);
    cfg.no_reboot = true;
    cfg
}

/// One boot of the floor: ms from QEMU start to the hello line, and the guest's boot clock
/// when init started.
fn floor_once(cfg: &VmConfig) -> Result<(f64, f64)> {
    let mut vm = Vm::start(cfg)?;
    let (d, end) = vm.wait_for_console_from("cairn-floor: hello from init at ", 0, BOOT_TIMEOUT)?;
    vm.wait_for_console_from(" ms", end, Duration::from_secs(10))?;
    let console = vm.console();
    let guest = console
        .split("cairn-floor: hello from init at ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("the floor did not print its boot time")?;
    let _ = vm.wait_exit(Duration::from_secs(60));
    Ok((d.as_secs_f64() * 1000.0, guest))
}

/// Onboards the appliance with the setup code on its console (or logs in when the disk was
/// onboarded by an earlier boot); returns the session cookie (reads need no CSRF token).
fn onboard(vm: &Vm, port: u16) -> Result<String> {
    let console = vm.console();
    let code: Option<String> = console
        .rfind("etup code:")
        .map(|at| console[at + 10..].trim_start().chars().take(14).collect());
    let (path, body) = match code {
        Some(code) => (
            "/api/v1/auth/onboard",
            serde_json::json!({"code": code, "username": "bench", "password": "bench password 1"}),
        ),
        None => (
            "/api/v1/auth/login",
            serde_json::json!({"username": "bench", "password": "bench password 1"}),
        ),
    };
    let r = cairn_qemu::http::request(
        "POST",
        port,
        path,
        Some(&serde_json::to_vec(&body)?),
        Duration::from_secs(120),
    )?;
    if r.status != 200 {
        anyhow::bail!("{path} answered {}: {}", r.status, r.text());
    }
    Ok(r.header("set-cookie")
        .and_then(|c| c.split(';').next())
        .context("no session cookie")?
        .to_string())
}

/// One boot of Cairn: ms from QEMU start to ready, the guest's own timeline, and (when asked)
/// the idle RSS after `idle`.
fn cairn_once(
    cfg: &VmConfig,
    port: u16,
    idle: Option<Duration>,
) -> Result<(f64, Value, Option<Value>)> {
    let mut vm = Vm::start(cfg)?;
    let d = vm.wait_for_console(cairn_init::layout::READY_MARKER, BOOT_TIMEOUT)?;
    vm.wait_https(port, "/healthz", Duration::from_secs(60))?;
    let cookie = onboard(&vm, port)?;
    let system = || -> Result<Value> {
        cairn_qemu::http::request_with(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "GET",
            "/api/v1/system",
            &[("Cookie", &cookie)],
            None,
            None,
            Duration::from_secs(30),
        )?
        .json()
    };
    let sys = system()?;
    let timeline = sys["boot"]["timeline"].clone();
    let rss = match idle {
        Some(wait) => {
            std::thread::sleep(wait);
            Some(system()?["processes"].clone())
        }
        None => None,
    };
    vm.powerdown()?;
    vm.wait_exit(Duration::from_secs(120))?;
    Ok((d.as_secs_f64() * 1000.0, timeline, rss))
}

fn bench_boot_arch(arch: Arch, runs: usize) -> Result<Value> {
    deps::ensure(&deps::for_qemu(arch))?;
    let out = build::image(arch, &ImageOptions::default())?;
    let bins = build::static_binaries(arch)?;
    let work = build::artifacts_dir(arch).join("bench-boot");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let floor_rd = work.join("floor-initramfs");
    floor_initramfs(&bins.floor, &floor_rd)?;
    let cmdline = std::fs::read_to_string(&out.cmdline)?.trim().to_string();
    let disk = work.join("disk.img");
    cairn_image::disk::enlarged_copy(&out.image, &disk, 2 << 30)?;
    let port = cairn_qemu::free_port()?;
    let ours = vm_config(
        arch,
        &work.join("cairn"),
        &out.vmlinuz,
        &out.initramfs,
        &cmdline,
        &disk,
        port,
    );
    let floor = vm_config(
        arch,
        &work.join("floor"),
        &out.vmlinuz,
        &floor_rd,
        &cmdline,
        &disk,
        port,
    );
    // First boot grows the disk and makes the certificate: prepare, do not measure.
    eprintln!("bench boot {arch}: first boot (not measured)");
    cairn_once(&ours, port, None)?;
    let (mut f, mut c) = (Vec::new(), Vec::new());
    let mut kernel_ms = Vec::new();
    let mut floor_kernel_ms = Vec::new();
    let mut init_to_ready = Vec::new();
    let mut rss = Value::Null;
    for i in 0..runs {
        // Interleave so both see the same machine load.
        let (fl, fk) = floor_once(&floor)?;
        floor_kernel_ms.push(fk);
        let last = i + 1 == runs;
        let (ms, tl, r) = cairn_once(&ours, port, last.then_some(Duration::from_secs(5)))?;
        if let Some(r) = r {
            rss = r;
        }
        let (k, ready) = (
            tl["init_ms"].as_f64().unwrap_or(0.0),
            tl["ready_ms"].as_f64().unwrap_or(0.0),
        );
        eprintln!(
            "bench boot {arch}: run {}/{runs}: floor {fl:.0} ms, cairn {ms:.0} ms (guest: kernel {k:.0}, ready {ready:.0})",
            i + 1
        );
        f.push(fl);
        c.push(ms);
        kernel_ms.push(k);
        init_to_ready.push(ready - k);
    }
    let (fm, cm) = (median(&mut f), median(&mut c));
    let proc_rss = |name: &str| {
        rss.as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .and_then(|p| p["rss_kib"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let image_bytes = std::fs::metadata(&out.image)?.len() as f64;
    let accel = cairn_qemu::accel::detect(arch);
    Ok(json!({
        "accel": accel.to_string(),
        "runs": runs,
        "figures": [
            figure("qemu_start_to_ready", "ms", cm, Some(("hello-world init, same kernel and VM (QEMU start to init)", fm)), Some(json!({"max_ratio": 1.3}))),
            figure("guest_kernel_to_init", "ms", median(&mut kernel_ms), Some(("hello-world init", median(&mut floor_kernel_ms))), None),
            figure("guest_init_to_ready", "ms", median(&mut init_to_ready), None, None),
            figure("idle_rss_cairn_init", "KiB", proc_rss("cairn-init"), None, Some(json!({"max": 2048}))),
            figure("idle_rss_cairn", "KiB", proc_rss("cairn"), None, Some(json!({"max": 30720}))),
            figure("image_size_without_models", "MiB", image_bytes / (1 << 20) as f64, None, Some(json!({"max": 64}))),
        ],
        "samples_ms": {"floor": f, "cairn": c},
    }))
}

/// What `cargo xtask bench` was asked besides the area.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The architecture (boot: default both; memory's power cuts: default this machine's).
    pub arch: Option<Arch>,
    /// Repetitions per configuration.
    pub runs: Option<usize>,
    /// memory: record counts.
    pub records: Option<Vec<usize>>,
    /// memory: power cuts of the booted image.
    pub power_cuts: Option<usize>,
}

/// Runs a benchmark area and prints the report.
pub fn bench(area: &str, opts: &Options, as_json: bool) -> Result<()> {
    let (arch, runs) = (opts.arch, opts.runs);
    // With `--json` stdout carries the one report object: everything else this process and
    // the programs it starts print (pip, cargo, apt-get, the measured programs) goes to stderr.
    let json_out = if as_json {
        Some(stdout_for_report()?)
    } else {
        None
    };
    let (report, table): (Value, fn(&Value)) = match area {
        "boot" => {
            let runs = runs.unwrap_or(5);
            if runs < 5 {
                bail!("the boot benchmark takes at least 5 runs (got {runs})");
            }
            let mut per_arch = serde_json::Map::new();
            for a in arch.map(|a| vec![a]).unwrap_or_else(|| Arch::ALL.to_vec()) {
                per_arch.insert(
                    a.name().into(),
                    bench_boot_arch(a, runs).with_context(|| format!("boot benchmark for {a}"))?,
                );
            }
            (
                json!({"area": "boot", "peer": "the same Debian kernel booting a hello-world init", "arches": per_arch}),
                print_table,
            )
        }
        "inference" => {
            if arch.is_some_and(|a| Some(a) != Arch::host()) {
                bail!("the inference benchmark runs on this machine's architecture only");
            }
            (inference::run(runs.unwrap_or(3))?, inference::print_table)
        }
        "memory" => (
            memory::run(
                opts.records.clone(),
                runs.unwrap_or(3),
                opts.power_cuts
                    .filter(|&n| n > 0)
                    .map(|n| (n, arch.or_else(Arch::host).unwrap_or(Arch::X86_64))),
            )?,
            inference::print_table,
        ),
        "agents" => (agents::run()?, inference::print_table),
        "update" => {
            let records = match opts.records.as_deref() {
                None => 10_000,
                Some([n]) if *n > 0 => *n,
                Some(_) => bail!("bench update takes one record count (--records N)"),
            };
            (
                update::run(records, runs.unwrap_or(3))?,
                inference::print_table,
            )
        }
        other => {
            bail!(
                "unknown benchmark area {other:?}; available: boot, inference, memory, agents, update"
            )
        }
    };
    match json_out {
        Some(mut out) => {
            use std::io::Write;
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
            out.flush()?;
        }
        None => table(&report),
    }
    Ok(())
}

/// Moves this process's stdout to stderr and returns the original stdout, for the report.
fn stdout_for_report() -> Result<std::fs::File> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    std::io::stdout().flush()?;
    // SAFETY: dup of a descriptor this process owns; the new descriptor is owned by the File.
    let saved = unsafe { libc::dup(std::io::stdout().as_raw_fd()) };
    if saved < 0 {
        bail!("dup(stdout): {}", std::io::Error::last_os_error());
    }
    // SAFETY: `saved` is a fresh descriptor owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(saved) };
    // SAFETY: dup2 onto stdout, which stays open; both descriptors are this process's.
    if unsafe { libc::dup2(std::io::stderr().as_raw_fd(), std::io::stdout().as_raw_fd()) } < 0 {
        bail!("dup2(stderr, stdout): {}", std::io::Error::last_os_error());
    }
    Ok(file)
}

fn print_table(report: &Value) {
    println!(
        "benchmark: {} (peer: {})",
        report["area"].as_str().unwrap_or(""),
        report["peer"].as_str().unwrap_or("")
    );
    if let Some(arches) = report["arches"].as_object() {
        for (arch, r) in arches {
            println!(
                "\n{arch} ({}, {} runs, medians)",
                r["accel"].as_str().unwrap_or(""),
                r["runs"]
            );
            for f in r["figures"].as_array().into_iter().flatten() {
                let mut line = format!(
                    "  {:<28} {:>10} {:<4}",
                    f["name"].as_str().unwrap_or(""),
                    f["value"],
                    f["unit"].as_str().unwrap_or("")
                );
                if f.get("peer_value").is_some() {
                    line.push_str(&format!(
                        "  peer {:>8} {}  ratio {}",
                        f["peer_value"],
                        f["unit"].as_str().unwrap_or(""),
                        f["ratio"]
                    ));
                }
                if let Some(t) = f.get("target") {
                    line.push_str(&format!("  target {t}"));
                }
                println!("{line}");
            }
        }
    }
}
