//! Helpers for Cairn's end-to-end tests: find the built artifacts, make scratch disks, boot
//! them in QEMU the way a user would (direct kernel boot, or UEFI from a USB stick), and talk
//! to the appliance over HTTPS through the forwarded port.
//!
//! The tests boot real images, so they are `#[ignore]`d for a plain `cargo test`;
//! `cargo xtask test` builds both images and runs them with `--ignored`.

use anyhow::{Context, Result, bail};
pub use cairn_qemu::Arch;
use cairn_qemu::{Attach, Boot, Drive, Forward, Vm, VmConfig, WriteCache, http};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a boot may take under TCG on a slow, busy machine before a test gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The repository root, from the run-time `CARGO_MANIFEST_DIR` that `cargo test` sets (see
/// `cairn_image::target::repo_root`: shared target directories make the compiled-in one stale).
pub fn repo_root() -> PathBuf {
    cairn_image::target::repo_root()
}

/// Built artifacts of one architecture (`target/cairn/<arch>`).
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Architecture.
    pub arch: Arch,
    /// The directory.
    pub dir: PathBuf,
    /// GPT disk image.
    pub image: PathBuf,
    /// Kernel.
    pub vmlinuz: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
}

/// The artifacts `cargo xtask image --arch <arch>` produced.
pub fn artifacts(arch: Arch) -> Result<Artifacts> {
    let dir = repo_root().join("target/cairn").join(arch.name());
    let a = Artifacts {
        arch,
        image: dir.join("cairn.img"),
        vmlinuz: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs"),
        cmdline: std::fs::read_to_string(dir.join("cmdline"))
            .with_context(|| {
                format!("no {arch} artifacts in {}: run `cargo xtask image --arch {arch}` (or `cargo xtask test`)", dir.display())
            })?
            .trim()
            .to_string(),
        dir,
    };
    for p in [&a.image, &a.vmlinuz, &a.initramfs] {
        if !p.exists() {
            bail!(
                "{} is missing: run `cargo xtask image --arch {arch}`",
                p.display()
            );
        }
    }
    Ok(a)
}

/// A fresh scratch directory for one test (kept afterwards: serial logs are the artifacts).
pub fn scratch(arch: Arch, test: &str) -> Result<PathBuf> {
    let d = repo_root()
        .join("target/cairn/e2e")
        .join(arch.name())
        .join(test);
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A private copy of the image as a disk of `bytes` (sparse).
pub fn disk_copy(a: &Artifacts, dir: &Path, bytes: u64) -> Result<PathBuf> {
    let p = dir.join("disk.img");
    std::fs::copy(&a.image, &p).with_context(|| format!("copying {}", a.image.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)?
        .set_len(bytes)?;
    Ok(p)
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// UEFI from a USB stick (true) or direct kernel boot with a virtio disk (false).
    pub uefi_usb: bool,
    /// Attach a NIC with the HTTPS port forwarded.
    pub network: bool,
    /// Extra kernel command line (direct boot only).
    pub extra_cmdline: String,
    /// The NIC reaches nothing but the forwarded port (an air-gapped site).
    pub air_gapped: bool,
    /// Guest memory, MiB (0: the harness default).
    pub memory_mib: u32,
    /// The disk's writes wait in a volatile cache until the guest flushes, and a kill loses
    /// them ([`cairn_qemu::LazyDisk`]): for power-cut tests.
    pub volatile_cache: bool,
}

impl Default for BootPlan {
    fn default() -> Self {
        BootPlan {
            uefi_usb: false,
            network: true,
            extra_cmdline: String::new(),
            air_gapped: false,
            memory_mib: 0,
            volatile_cache: false,
        }
    }
}

/// A booted appliance.
pub struct Booted {
    /// The VM.
    pub vm: Vm,
    /// Host port forwarded to the appliance's HTTPS port (0 without network).
    pub port: u16,
    /// An admin API token (empty until [`Booted::authenticate`]; [`boot`] does it).
    pub token: String,
}

/// The administrator the end-to-end tests create.
pub const ADMIN: &str = "admin";
/// Its password.
pub const PASSWORD: &str = "correct horse battery staple";

/// The one-time setup code the console shows, if it shows one.
pub fn setup_code(console: &str) -> Option<String> {
    let at = console.rfind("etup code:")?;
    let rest = console[at + 10..].trim_start();
    let code: String = rest.chars().take(14).collect();
    (code.len() == 14 && code.chars().nth(4) == Some('-')).then_some(code)
}

/// A request with an API token.
pub fn authed(
    port: u16,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<http::Response> {
    let bearer = format!("Bearer {token}");
    http::request_with(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        method,
        path,
        &[("Authorization", &bearer)],
        body,
        None,
        timeout,
    )
}

/// Starts a VM on `disk` (not waiting for anything).
pub fn start(a: &Artifacts, dir: &Path, disk: &Path, plan: &BootPlan) -> Result<Booted> {
    let target = cairn_image::Target::load(a.arch)?;
    let boot = if plan.uefi_usb {
        Boot::Uefi {
            code: target.uefi.code.clone(),
            vars: target.uefi.vars.clone(),
        }
    } else {
        Boot::Direct {
            kernel: a.vmlinuz.clone(),
            initrd: a.initramfs.clone(),
            cmdline: format!("{} {}", a.cmdline, plan.extra_cmdline)
                .trim()
                .to_string(),
        }
    };
    let mut cfg = VmConfig::new(a.arch, boot, dir);
    cfg.drives.push(Drive {
        path: disk.to_path_buf(),
        attach: if plan.uefi_usb {
            Attach::UsbStick
        } else {
            Attach::Virtio
        },
        cache: if plan.volatile_cache {
            WriteCache::Volatile
        } else {
            WriteCache::Host
        },
    });
    let port = if plan.network {
        cairn_qemu::free_port()?
    } else {
        0
    };
    cfg.network = plan.network.then(|| {
        vec![Forward {
            host: port,
            guest: cairn_init::layout::HTTPS_PORT,
        }]
    });
    // Tests see a reboot as QEMU exiting.
    cfg.no_reboot = true;
    cfg.air_gapped = plan.air_gapped;
    if plan.memory_mib > 0 {
        cfg.memory_mib = plan.memory_mib;
    }
    let vm = Vm::start(&cfg)?;
    Ok(Booted {
        vm,
        port,
        token: String::new(),
    })
}

/// Boots and waits until the appliance reports ready on the console and over HTTPS.
pub fn boot(a: &Artifacts, dir: &Path, disk: &Path, plan: &BootPlan) -> Result<Booted> {
    let mut b = start(a, dir, disk, plan)?;
    b.vm.wait_for_console(cairn_init::layout::READY_MARKER, BOOT_TIMEOUT)?;
    if plan.network {
        b.vm.wait_https(b.port, "/healthz", Duration::from_secs(60))?;
        b.authenticate()?;
    }
    Ok(b)
}

impl Booted {
    /// Onboards the appliance the way an operator does, with the setup code read from the
    /// console (or logs in when this disk was onboarded before), and makes an admin API token.
    pub fn authenticate(&mut self) -> Result<()> {
        let t = Duration::from_secs(120);
        let (path, body) = match setup_code(&self.vm.console()) {
            Some(code) => (
                "/api/v1/auth/onboard",
                serde_json::json!({"code": code, "username": ADMIN, "password": PASSWORD}),
            ),
            None => (
                "/api/v1/auth/login",
                serde_json::json!({"username": ADMIN, "password": PASSWORD}),
            ),
        };
        let r = http::request(
            "POST",
            self.port,
            path,
            Some(&serde_json::to_vec(&body)?),
            t,
        )?;
        if r.status != 200 {
            bail!("{path} answered {}: {}", r.status, r.text());
        }
        let csrf = r.json()?["csrf"].as_str().unwrap_or_default().to_string();
        let cookie = r
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .context("no session cookie")?
            .to_string();
        let name = format!(
            "e2e-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let body = serde_json::to_vec(&serde_json::json!({"name": name, "scope": "admin"}))?;
        let r = http::request_with(
            std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            "POST",
            "/api/v1/auth/tokens",
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
            Some(&body),
            None,
            t,
        )?;
        if r.status != 201 {
            bail!("making a token answered {}: {}", r.status, r.text());
        }
        self.token = r.json()?["token"].as_str().context("no token")?.to_string();
        Ok(())
    }

    /// A request with the admin token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<http::Response> {
        authed(self.port, &self.token, method, path, body, timeout)
    }

    /// GET a JSON document.
    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.request("GET", path, None, Duration::from_secs(30))?;
        Ok((r.status, r.json().unwrap_or(Value::Null)))
    }

    /// A request with a JSON body.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let b = serde_json::to_vec(body)?;
        let r = self.request(method, path, Some(&b), Duration::from_secs(30))?;
        Ok((r.status, r.json().unwrap_or(Value::Null)))
    }

    /// `/api/v1/system`.
    pub fn system(&self) -> Result<Value> {
        let (st, v) = self.get("/api/v1/system")?;
        if st != 200 {
            bail!("/api/v1/system answered {st}: {v}");
        }
        Ok(v)
    }
}

/// Named checks against booted appliances: each boot serves many checks, and a failed check
/// does not hide the ones after it. Every result is printed as it happens; [`Checks::finish`]
/// fails the test with the list of failures.
pub struct Checks {
    arch: Arch,
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    /// No checks run yet.
    pub fn new(arch: Arch) -> Self {
        Checks {
            arch,
            passed: 0,
            failed: Vec::new(),
        }
    }

    /// Runs one check; its value when it passed.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
        let t = std::time::Instant::now();
        match f() {
            Ok(v) => {
                eprintln!("[{}] ok: {name} ({} s)", self.arch, t.elapsed().as_secs());
                self.passed += 1;
                Some(v)
            }
            Err(e) => {
                eprintln!("[{}] FAILED: {name}: {e:#}", self.arch);
                self.failed.push(format!("{name}: {e:#}"));
                None
            }
        }
    }

    /// Runs one check that returns nothing; whether it passed.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> bool {
        self.step(name, f).is_some()
    }

    /// Passes when every check passed; otherwise fails naming each failure.
    pub fn finish(self) -> Result<()> {
        if self.failed.is_empty() {
            eprintln!("[{}] all {} checks passed", self.arch, self.passed);
            return Ok(());
        }
        bail!(
            "{} of {} checks failed:\n{}",
            self.failed.len(),
            self.failed.len() + self.passed,
            self.failed.join("\n")
        )
    }
}

/// Fails when the console logged a panic.
pub fn no_panic_on(b: &Booted) -> Result<()> {
    let c = b.vm.console();
    match c.find("panicked") {
        Some(at) => {
            let from = c[..at].rfind('\n').map_or(0, |i| i + 1);
            let line: String = c[from..].chars().take(300).collect();
            bail!("a panic was logged on the console: {line}")
        }
        None => Ok(()),
    }
}

/// Generates one test per architecture, ignored unless run through `cargo xtask test`.
#[macro_export]
macro_rules! both_arches {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            #[ignore = "boots QEMU; run it with cargo xtask test"]
            fn x86_64() {
                if let Err(e) = super::$name(cairn_e2e::Arch::X86_64) {
                    panic!("{e:#}");
                }
            }
            #[test]
            #[ignore = "boots QEMU; run it with cargo xtask test"]
            fn aarch64() {
                if let Err(e) = super::$name(cairn_e2e::Arch::Aarch64) {
                    panic!("{e:#}");
                }
            }
        }
    )*};
}
