//! cairn-qemu: the QEMU harness used by `cargo xtask run/bench` and the end-to-end tests.
//!
//! Arch profiles (x86_64 on q35, aarch64 on virt), direct kernel or UEFI boot (OVMF/AAVMF
//! from Debian's packages with a writable copy of the variable store), disks attached as
//! virtio, NVMe or a USB stick (`qemu-xhci` + `usb-storage`), user-mode networking with port
//! forwards, serial capture to a file and a stream, QMP control (powerdown, reset, quit, keys),
//! a hard kill for power-cut tests, waits with timeouts on console markers and HTTPS
//! readiness, and detection of a usable KVM with fallback to TCG.

pub mod accel;
pub mod http;
pub mod lazydisk;
mod qmp;
mod serial;

pub use accel::Accel;
use anyhow::{Context, Result, bail};
pub use cairn_image::Arch;
pub use lazydisk::{CutReport, LazyDisk};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A guest booted under KVM that has printed nothing on its console after this long is taken
/// for a KVM that does not run guests: it is stopped and booted again under TCG.
pub const KVM_SILENCE_LIMIT: Duration = Duration::from_secs(20);

/// A private directory for one QEMU's sockets, made afresh for every start and removed with the
/// VM: no socket path is ever shared by two QEMUs or left over from an earlier boot, and it is
/// short (Unix socket paths hold at most 107 bytes; a work directory deep in a clone may not).
struct SockDir(PathBuf);

impl SockDir {
    fn new() -> Result<SockDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..1000 {
            let p = base.join(format!(
                "cairn-qemu-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => {
                    // The longest name inside, with its terminating NUL.
                    if p.join("serial.sock").as_os_str().len() >= 108 {
                        let _ = std::fs::remove_dir(&p);
                        bail!(
                            "the socket directory {} is too deep for a Unix socket path; set \
                             TMPDIR to a shorter directory",
                            p.display()
                        );
                    }
                    return Ok(SockDir(p));
                }
                // Left by an earlier process with this pid: take the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("making a socket directory in {}", base.display())
                    });
                }
            }
        }
        bail!("no free socket directory name in {}", base.display())
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the VM boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Kernel, initramfs and command line handed to QEMU directly.
    Direct {
        /// Kernel image.
        kernel: PathBuf,
        /// Initramfs.
        initrd: PathBuf,
        /// Command line.
        cmdline: String,
    },
    /// UEFI firmware boots from the attached disks.
    Uefi {
        /// Firmware code volume (read-only).
        code: PathBuf,
        /// Variable store template; the VM gets a private copy.
        vars: PathBuf,
    },
    /// A flat firmware image run from the reset vector (`-bios`), with no kernel or disk:
    /// the accelerator probe's tiny guest.
    Firmware {
        /// The image.
        image: PathBuf,
    },
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// virtio-blk (PCI).
    Virtio,
    /// NVMe.
    Nvme,
    /// A removable USB stick behind an xHCI controller.
    UsbStick,
}

/// Where the guest's writes wait before they are on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCache {
    /// QEMU writes to the image file at once (the host's page cache): a killed QEMU loses
    /// nothing the guest wrote, flushed or not.
    Host,
    /// A volatile cache ([`LazyDisk`]): writes reach the image only when the guest flushes, and
    /// a power cut ([`Vm::kill`]) loses the rest but a random subset. For power-cut tests.
    Volatile,
}

/// A raw disk image attached to the VM.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Image file.
    pub path: PathBuf,
    /// Bus.
    pub attach: Attach,
    /// Where unflushed writes wait.
    pub cache: WriteCache,
}

/// A host TCP port forwarded to a guest port.
#[derive(Debug, Clone, Copy)]
pub struct Forward {
    /// Port on 127.0.0.1 of the host.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Captured by the harness (file and stream).
    Capture,
    /// The terminal (interactive `xtask run`); also logged to the work dir.
    Terminal,
}

/// Everything about one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest architecture.
    pub arch: Arch,
    /// Boot method.
    pub boot: Boot,
    /// Disks.
    pub drives: Vec<Drive>,
    /// `None`: no network device at all; `Some`: user-mode NIC with these forwards.
    pub network: Option<Vec<Forward>>,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Directory for the serial log, sockets and the UEFI variable copy.
    pub work_dir: PathBuf,
    /// Accelerator (`Auto` probes KVM).
    pub accel: Accel,
    /// Serial console destination.
    pub console: Console,
    /// Exit instead of rebooting (tests see a reboot as the VM ending).
    pub no_reboot: bool,
    /// Air-gapped: the NIC reaches nothing outside the VM (`restrict=on`); forwards still work.
    pub air_gapped: bool,
    /// Extra QEMU arguments.
    pub extra: Vec<String>,
}

impl VmConfig {
    /// A config with the usual defaults: 1 GiB, 2 vCPUs, a NIC without forwards, TCG or KVM.
    pub fn new(arch: Arch, boot: Boot, work_dir: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            arch,
            boot,
            drives: Vec::new(),
            network: Some(Vec::new()),
            memory_mib: 1024,
            cpus: 2,
            work_dir: work_dir.into(),
            accel: Accel::Auto,
            console: Console::Capture,
            no_reboot: false,
            air_gapped: false,
            extra: Vec::new(),
        }
    }
}

/// The QEMU binary for an architecture.
pub fn qemu_binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    }
}

/// The Debian package that provides [`qemu_binary`].
pub fn qemu_package(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Aarch64 => "qemu-system-arm",
    }
}

/// The NBD socket of drive `i`, next to the serial socket in the VM's private directory.
fn nbd_socket(serial_sock: &Path, i: usize) -> PathBuf {
    serial_sock.with_file_name(format!("disk{i}.nbd"))
}

/// The full QEMU argument list for a config (without the binary).
pub fn command_line(
    cfg: &VmConfig,
    accel: Accel,
    serial_sock: &Path,
    qmp_sock: &Path,
) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &str| a.push(s.to_string());
    match cfg.arch {
        Arch::X86_64 => {
            push("-machine");
            push("q35");
        }
        Arch::Aarch64 => {
            push("-machine");
            push("virt");
        }
    }
    push("-cpu");
    push(match (cfg.arch, accel) {
        (_, Accel::Kvm) => "host",
        (Arch::X86_64, _) => "max",
        (Arch::Aarch64, _) => "cortex-a72",
    });
    push("-accel");
    push(match accel {
        Accel::Kvm => "kvm",
        _ => "tcg",
    });
    push("-m");
    push(&cfg.memory_mib.to_string());
    push("-smp");
    push(&cfg.cpus.to_string());
    push("-nodefaults");
    push("-display");
    push("none");
    push("-rtc");
    push("base=utc");
    if cfg.no_reboot {
        push("-no-reboot");
    }
    // Serial console.
    match cfg.console {
        Console::Capture => {
            push("-chardev");
            push(&format!(
                "socket,id=ser0,path={},server=on,wait=on",
                serial_sock.display()
            ));
            push("-serial");
            push("chardev:ser0");
        }
        Console::Terminal => {
            push("-chardev");
            push(&format!(
                "stdio,id=ser0,mux=on,signal=off,logfile={}",
                cfg.work_dir.join("serial.log").display()
            ));
            push("-serial");
            push("chardev:ser0");
            push("-mon");
            push("chardev=ser0,mode=readline");
        }
    }
    push("-qmp");
    push(&format!("unix:{},server=on,wait=off", qmp_sock.display()));
    // Entropy and a keyboard (for SysRq and Ctrl-Alt-Del from the harness; q35 has PS/2).
    push("-device");
    push("virtio-rng-pci");
    if cfg.arch == Arch::Aarch64 {
        push("-device");
        push("virtio-keyboard-pci");
    }
    // Boot.
    match &cfg.boot {
        Boot::Direct {
            kernel,
            initrd,
            cmdline,
        } => {
            push("-kernel");
            push(&kernel.to_string_lossy());
            push("-initrd");
            push(&initrd.to_string_lossy());
            push("-append");
            push(cmdline);
        }
        Boot::Uefi { code, vars } => {
            if !code.exists() {
                bail!(
                    "UEFI firmware {} is missing: install Debian's {} package",
                    code.display(),
                    match cfg.arch {
                        Arch::X86_64 => "ovmf",
                        Arch::Aarch64 => "qemu-efi-aarch64",
                    }
                );
            }
            let vars_copy = cfg.work_dir.join("uefi-vars.fd");
            if !vars_copy.exists() {
                std::fs::copy(vars, &vars_copy)
                    .with_context(|| format!("copying UEFI variables {}", vars.display()))?;
            }
            push("-drive");
            push(&format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ));
            push("-drive");
            push(&format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars_copy.display()
            ));
        }
        Boot::Firmware { image } => {
            push("-bios");
            push(&image.to_string_lossy());
        }
    }
    // Disks.
    let mut usb = false;
    for (i, d) in cfg.drives.iter().enumerate() {
        push("-drive");
        match d.cache {
            WriteCache::Host => push(&format!(
                "if=none,id=disk{i},format=raw,file={}",
                d.path.display()
            )),
            WriteCache::Volatile => push(&format!(
                "if=none,id=disk{i},format=raw,file.driver=nbd,file.server.type=unix,\
                 file.server.path={}",
                nbd_socket(serial_sock, i).display()
            )),
        }
        match d.attach {
            Attach::Virtio => {
                push("-device");
                push(&format!("virtio-blk-pci,drive=disk{i}"));
            }
            Attach::Nvme => {
                push("-device");
                push(&format!("nvme,drive=disk{i},serial=cairn{i}"));
            }
            Attach::UsbStick => {
                if !usb {
                    push("-device");
                    push("qemu-xhci,id=xhci");
                    usb = true;
                }
                push("-device");
                push(&format!(
                    "usb-storage,bus=xhci.0,drive=disk{i},removable=on"
                ));
            }
        }
    }
    // Network.
    if let Some(forwards) = &cfg.network {
        let mut net = "user,id=net0".to_string();
        if cfg.air_gapped {
            net.push_str(",restrict=on");
        }
        for f in forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
        }
        push("-netdev");
        push(&net);
        push("-device");
        push("virtio-net-pci,netdev=net0");
    }
    a.extend(cfg.extra.iter().cloned());
    Ok(a)
}

/// A running VM.
pub struct Vm {
    child: Child,
    /// The volatile-cache disks' servers (dropped after QEMU has ended).
    disks: Vec<LazyDisk>,
    cuts: Vec<CutReport>,
    serial: Arc<serial::Serial>,
    qmp_sock: PathBuf,
    work_dir: PathBuf,
    started: Instant,
    /// The accelerator in use.
    pub accel: Accel,
    // Last: removed after `Drop for Vm` has ended QEMU.
    _sockets: SockDir,
}

impl Vm {
    /// Starts QEMU. With `Console::Capture` the serial output is captured from the first byte.
    ///
    /// With `Accel::Auto` and KVM chosen, a guest that prints nothing on its console within
    /// [`KVM_SILENCE_LIMIT`] is stopped and booted again under TCG, with a message saying so
    /// (a `CAIRN_ACCEL=kvm` or an explicit `Accel::Kvm` is kept).
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        let (accel, source) = match cfg.accel {
            Accel::Auto => accel::detect_with_source(cfg.arch),
            a => (a, accel::Source::Forced),
        };
        let mut vm = Vm::spawn(cfg, accel)?;
        if accel != Accel::Kvm || source == accel::Source::Forced {
            return Ok(vm);
        }
        if vm.wait_first_output(KVM_SILENCE_LIMIT) {
            return Ok(vm);
        }
        vm.quit();
        drop(vm);
        accel::kvm_failed();
        eprintln!(
            "cairn-qemu: the {} guest printed nothing on its console in {} s under KVM: this \
             host's KVM does not run guests; booting it again under TCG (software emulation, \
             slow)",
            cfg.arch,
            KVM_SILENCE_LIMIT.as_secs()
        );
        Vm::spawn(cfg, Accel::Tcg)
    }

    /// True once the console has shown anything, or QEMU has exited (its caller sees that);
    /// false when `limit` passes in silence.
    fn wait_first_output(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.serial.len() == 0 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.serial.wait_for_more(Duration::from_millis(200));
        }
        true
    }

    /// Asks QEMU to quit (it restores a terminal it took), killing it if it does not.
    fn quit(&mut self) {
        let _ = self.qmp("quit", None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
    }

    fn spawn(cfg: &VmConfig, accel: Accel) -> Result<Vm> {
        std::fs::create_dir_all(&cfg.work_dir)?;
        let sockets = SockDir::new()?;
        let serial_sock = sockets.0.join("serial.sock");
        let qmp_sock = sockets.0.join("qmp.sock");
        let args = command_line(cfg, accel, &serial_sock, &qmp_sock)?;
        // The volatile-cache disks are served before QEMU connects to them.
        let mut disks = Vec::new();
        for (i, d) in cfg.drives.iter().enumerate() {
            if d.cache == WriteCache::Volatile {
                disks.push(LazyDisk::serve(&d.path, &nbd_socket(&serial_sock, i))?);
            }
        }
        let bin = qemu_binary(cfg.arch);
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        let log_path = cfg.work_dir.join("serial.log");
        // An earlier boot's log must not pass for this guest's output.
        let _ = std::fs::remove_file(&log_path);
        if cfg.console == Console::Capture {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(cfg.work_dir.join("qemu.stderr"))?);
        }
        std::fs::write(
            cfg.work_dir.join("qemu.cmdline"),
            format!("{bin} {}\n", args.join(" ")),
        )?;
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "{bin} not found: install Debian's {} package",
                    qemu_package(cfg.arch)
                )
            } else {
                anyhow::anyhow!("starting {bin}: {e}")
            }
        })?;
        let serial = match cfg.console {
            Console::Capture => {
                match serial::Serial::connect(&serial_sock, &log_path, &mut child) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        let stderr = std::fs::read_to_string(cfg.work_dir.join("qemu.stderr"))
                            .unwrap_or_default();
                        bail!("{e}; QEMU said: {}", stderr.trim());
                    }
                }
            }
            Console::Terminal => serial::Serial::detached(&log_path),
        };
        Ok(Vm {
            child,
            disks,
            cuts: Vec::new(),
            serial,
            qmp_sock,
            work_dir: cfg.work_dir.clone(),
            started,
            accel,
            _sockets: sockets,
        })
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the console printed so far (lossy UTF-8).
    pub fn console(&self) -> String {
        self.serial.text()
    }

    /// Waits until the console shows `needle` (searching from byte `from`); returns the time
    /// since QEMU started and the offset just past the match.
    pub fn wait_for_console_from(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<(Duration, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.serial.find_from(needle, from) {
                return Ok((self.started.elapsed(), end));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!(
                    "QEMU exited ({st}) before the console showed {needle:?}; console tail:\n{}",
                    self.serial.tail(3000)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "console did not show {needle:?} within {} s ({}); console tail:\n{}",
                    timeout.as_secs(),
                    self.diagnosis(),
                    self.serial.tail(3000)
                );
            }
            self.serial.wait_for_more(Duration::from_millis(200));
        }
    }

    /// Waits until the console shows `needle` anywhere.
    pub fn wait_for_console(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        self.wait_for_console_from(needle, 0, timeout)
            .map(|(d, _)| d)
    }

    /// Length of the console output so far (to wait for something printed after now).
    pub fn console_len(&self) -> usize {
        self.serial.len()
    }

    /// Waits until `GET https://127.0.0.1:<port><path>` answers 200.
    pub fn wait_https(&mut self, port: u16, path: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http::request("GET", port, path, None, Duration::from_secs(5))
                && r.status == 200
            {
                return Ok(self.started.elapsed());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!(
                    "QEMU exited ({st}) before {path} answered; console tail:\n{}",
                    self.serial.tail(3000)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "https://127.0.0.1:{port}{path} did not answer within {} s ({}); console tail:\n{}",
                    timeout.as_secs(),
                    self.diagnosis(),
                    self.serial.tail(3000)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// What QEMU itself says when the guest seems stuck: its run state over QMP, the console
    /// bytes captured so far and its stderr.
    fn diagnosis(&self) -> String {
        let state = match self.qmp("query-status", None) {
            Ok(v) => v["status"].as_str().unwrap_or("unknown").to_string(),
            Err(e) => format!("QMP unanswered: {e:#}"),
        };
        let stderr = std::fs::read_to_string(self.work_dir.join("qemu.stderr")).unwrap_or_default();
        format!(
            "QEMU {:?} after {} s, run state {state}, {} console bytes, stderr: {:?}",
            self.child.id(),
            self.started.elapsed().as_secs(),
            self.serial.len(),
            stderr.trim()
        )
    }

    /// Sends one QMP command and returns its `return` value.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        qmp::execute(&self.qmp_sock, command, arguments)
    }

    /// Presses the ACPI power button (the guest should shut down cleanly).
    pub fn powerdown(&self) -> Result<()> {
        self.qmp("system_powerdown", None).map(|_| ())
    }

    /// Presses keys together through the monitor, e.g. `["alt", "sysrq", "i"]`.
    pub fn send_keys(&self, keys: &[&str]) -> Result<()> {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| serde_json::json!({"type": "qcode", "data": k}))
            .collect();
        self.qmp("send-key", Some(serde_json::json!({"keys": keys})))
            .map(|_| ())
    }

    /// Hard power cut: SIGKILL to QEMU, nothing flushed by the guest. Disks with a
    /// [`WriteCache::Volatile`] cache lose their unflushed writes but a random subset (see
    /// [`Vm::cuts`]).
    pub fn kill(&mut self) -> Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        for d in &self.disks {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |t| t.as_nanos() as u64);
            let report = d.cut(seed)?;
            eprintln!("cairn-qemu: power cut: {report}");
            self.cuts.push(report);
        }
        Ok(())
    }

    /// What each power cut did to the volatile-cache disks.
    pub fn cuts(&self) -> &[CutReport] {
        &self.cuts
    }

    /// Waits for QEMU to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU still running after {} s; console tail:\n{}",
                    timeout.as_secs(),
                    self.serial.tail(3000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for an interactive QEMU (terminal console) to end.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests that start right away).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_stick_and_forwards_on_the_command_line() {
        let dir = std::env::temp_dir().join(format!("cairn-qemu-cl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = VmConfig::new(
            Arch::Aarch64,
            Boot::Direct {
                kernel: "k".into(),
                initrd: "i".into(),
                cmdline: "quiet".into(),
            },
            &dir,
        );
        cfg.drives.push(Drive {
            path: "stick.img".into(),
            attach: Attach::UsbStick,
            cache: WriteCache::Host,
        });
        cfg.network = Some(vec![Forward {
            host: 8443,
            guest: 443,
        }]);
        let a = command_line(&cfg, Accel::Tcg, Path::new("s"), Path::new("q"))
            .unwrap()
            .join(" ");
        assert!(a.contains("-machine virt"));
        assert!(a.contains("-cpu cortex-a72"));
        assert!(a.contains("qemu-xhci,id=xhci"));
        assert!(a.contains("usb-storage,bus=xhci.0,drive=disk0,removable=on"));
        assert!(a.contains("hostfwd=tcp:127.0.0.1:8443-:443"));
        assert!(a.contains("-accel tcg"));
        cfg.network = None;
        let a = command_line(&cfg, Accel::Tcg, Path::new("s"), Path::new("q"))
            .unwrap()
            .join(" ");
        assert!(!a.contains("-netdev"), "no NIC at all");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two VMs started at once in one work directory that also holds a live socket at the old
    /// fixed `serial.sock` path (an earlier boot's QEMU): each harness reads its own guest, and
    /// neither QEMU is left waiting for a connection that went elsewhere.
    #[test]
    fn vms_sharing_a_work_dir_each_read_their_own_console() {
        let dir = std::env::temp_dir().join(format!("cairn-qemu-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("probe.bin"), accel::probe_image(Arch::X86_64)).unwrap();
        let _earlier_qemu =
            std::os::unix::net::UnixListener::bind(dir.join("serial.sock")).unwrap();
        let vms: Vec<_> = (0..2)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || -> Result<()> {
                    let image = dir.join("probe.bin");
                    let mut cfg = VmConfig::new(Arch::X86_64, Boot::Firmware { image }, &dir);
                    cfg.accel = Accel::Tcg;
                    cfg.network = None;
                    cfg.memory_mib = 64;
                    cfg.cpus = 1;
                    cfg.no_reboot = true;
                    cfg.extra = vec![
                        "-device".into(),
                        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
                    ];
                    let mut vm = Vm::start(&cfg)?;
                    vm.wait_for_console(accel::PROBE_MARKER, Duration::from_secs(120))?;
                    Ok(())
                })
            })
            .collect();
        for vm in vms {
            if let Err(e) = vm.join().unwrap() {
                panic!("{e:#}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the KVM fallback of `Vm::start` goes by: a guest that stays silent is noticed
    /// within the limit, one that prints is not taken for silent.
    #[test]
    fn a_silent_console_is_told_from_one_that_prints() {
        let dir = std::env::temp_dir().join(format!("cairn-qemu-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first_output = |image: Vec<u8>| {
            std::fs::write(dir.join("fw.bin"), image).unwrap();
            let mut cfg = VmConfig::new(
                Arch::X86_64,
                Boot::Firmware {
                    image: dir.join("fw.bin"),
                },
                &dir,
            );
            cfg.network = None;
            cfg.memory_mib = 64;
            let mut vm = Vm::spawn(&cfg, Accel::Tcg).unwrap();
            vm.wait_first_output(Duration::from_secs(2))
        };
        // Halts at the reset vector, as a guest under a KVM that runs nothing looks.
        assert!(!first_output(vec![0xf4; 0x1_0000]), "silence not noticed");
        assert!(
            first_output(accel::probe_image(Arch::X86_64)),
            "output missed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_uefi_firmware_names_the_package() {
        let cfg = VmConfig::new(
            Arch::X86_64,
            Boot::Uefi {
                code: "/nonexistent/OVMF_CODE.fd".into(),
                vars: "/nonexistent/OVMF_VARS.fd".into(),
            },
            std::env::temp_dir(),
        );
        let e = command_line(&cfg, Accel::Tcg, Path::new("s"), Path::new("q")).unwrap_err();
        assert!(e.to_string().contains("ovmf"), "{e}");
    }
}
