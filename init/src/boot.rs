//! PID 1: the boot sequence and the event loop that runs until power-off.
//!
//! Order: early mounts, command line and logging, coldplug, clock, disks (grow, mount), config,
//! hostname, random seed, network thread, appliance. Each step that fails degrades the boot
//! and says so; only a failure to run at all ends in [`fatal`], which keeps the console alive
//! and reboots after a delay. Init never returns and never panics the kernel.

use crate::banner::{self, ReadyFacts};
use crate::bootinfo::{BootInfo, DataInfo, PowerAction, ToInit};
use crate::cmdline::{self, BootOptions, NetMode};
use crate::coldplug::{Coldplug, Uevents};
use crate::config::Config;
use crate::layout;
use crate::net::{self, NetPlan, NetState};
use crate::power::{self, PowerButtons};
use crate::supervise::Supervisor;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Cairn version baked into init.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The build time (SOURCE_DATE_EPOCH at compile time): the earliest plausible wall clock.
pub fn build_epoch() -> i64 {
    option_env!("SOURCE_DATE_EPOCH")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_767_225_600) // 2026-01-01, when built without SOURCE_DATE_EPOCH
}

/// How long to wait for the data partition's disk (USB sticks enumerate slowly).
const DISK_WAIT: Duration = Duration::from_secs(15);
/// How long a fatal error stays on screen before the reboot.
const FATAL_REBOOT_DELAY: Duration = Duration::from_secs(30);

/// Entry point of PID 1. Never returns.
pub fn pid1_main() -> ! {
    std::panic::set_hook(Box::new(|p| {
        crate::console::to_all_consoles(&format!("\ncairn-init: internal error: {p}\n"));
    }));
    let msg = match std::panic::catch_unwind(run) {
        Ok(Err(msg)) => msg,
        Ok(Ok(never)) => match never {},
        Err(_) => "init hit an internal error (see above)".to_string(),
    };
    fatal(&msg)
}

/// Shows a diagnostic on every console, then reboots after a delay; never returns.
pub fn fatal(msg: &str) -> ! {
    crate::console::to_all_consoles(&format!(
        "\n*** cairn-init: cannot continue: {msg}\n*** rebooting in {} seconds\n",
        FATAL_REBOOT_DELAY.as_secs()
    ));
    sys::sleep(FATAL_REBOOT_DELAY);
    sys::sync();
    let e = sys::reboot(libc::RB_AUTOBOOT);
    crate::console::to_all_consoles(&format!("cairn-init: reboot failed: {e}\n"));
    loop {
        sys::sleep(Duration::from_secs(3600));
    }
}

fn early_mounts() -> Result<(), String> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong, Option<&str>); 4] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755,size=20%"),
        ),
    ];
    for (src, dst, fs, flags, data) in mounts {
        let _ = std::fs::create_dir_all(dst);
        match sys::mount(src, dst, fs, flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {} // already mounted
            Err(e) => return Err(format!("mounting {dst}: {e}")),
        }
    }
    // Not fatal: the appliance runs without these.
    let _ = std::fs::create_dir_all("/tmp");
    let _ = sys::mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777,size=20%"),
    );
    let _ = sys::mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    let _ = std::fs::create_dir_all(layout::VOLATILE_DATA);
    Ok(())
}

/// Points stdin at /dev/null and stdout/stderr at the console (now that devtmpfs is up).
fn reopen_stdio() {
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console");
    let null = std::fs::File::open("/dev/null");
    if let (Ok(c), Ok(n)) = (console, null) {
        // SAFETY: dup2 on descriptors we own onto 0-2; the originals are closed on drop.
        unsafe {
            libc::dup2(n.as_raw_fd(), 0);
            libc::dup2(c.as_raw_fd(), 1);
            libc::dup2(c.as_raw_fd(), 2);
        }
    }
}

fn sysctls() {
    // wasmtime's pooling allocator maps many regions per instance.
    for (path, value) in [
        ("/proc/sys/vm/max_map_count", "1048576"),
        ("/proc/sys/kernel/modprobe", layout::MODPROBE_HELPER),
        ("/proc/sys/kernel/panic", "10"),
        ("/proc/sys/kernel/panic_on_oops", "1"),
    ] {
        if let Err(e) = sys::write_file(path, value) {
            debug!("{path}: {e}");
        }
    }
}

/// Sets the host name: the command line's, else the config file's, else `cairn`.
fn set_hostname(opts: &BootOptions, cfg: &Config) -> String {
    let hostname = opts
        .hostname
        .clone()
        .or(cfg.hostname.clone())
        .unwrap_or_else(|| "cairn".into());
    if let Err(e) = sys::sethostname(&hostname) {
        warn!("hostname: {e}");
    }
    hostname
}

/// The network plan: the command line's mode wins over the config file's; static settings
/// that do not resolve fall back to DHCP (with a warning) rather than leaving the box dark.
fn net_plan(opts: &BootOptions, cfg: &Config, warnings: &mut Vec<String>) -> NetPlan {
    let mode = opts.net.unwrap_or(cfg.network.mode);
    let static_net = if mode == NetMode::Static {
        match cfg.static_net() {
            Ok(s) => Some(s),
            Err(e) => {
                error!("{e}; using DHCP");
                warnings.push(e);
                None
            }
        }
    } else {
        None
    };
    let mode = if mode == NetMode::Static && static_net.is_none() {
        NetMode::Dhcp
    } else {
        mode
    };
    NetPlan {
        mode,
        interface: cfg.network.interface.clone(),
        static_net,
    }
}

fn read_config(warnings: &mut Vec<String>) -> Config {
    let mut cfg = Config::default();
    for path in [layout::ESP_CONFIG, layout::DATA_CONFIG] {
        match std::fs::read_to_string(path) {
            Ok(text) => match Config::parse(&text, path) {
                Ok(c) => {
                    info!("config: {path}");
                    cfg = cfg.merged(c);
                }
                Err(e) => {
                    error!("{e}; ignoring this file, keeping the other settings");
                    warnings.push(e);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!("{path}: {e}");
                warnings.push(format!("{path}: {e}"));
            }
        }
    }
    cfg
}

/// Waits for the data disk, grows and mounts it. Returns the data state.
fn disks(
    opts: &BootOptions,
    cp: Option<&Coldplug>,
    uevents: &Option<Uevents>,
    info: &mut BootInfo,
) -> DataInfo {
    let label = opts.data_label.as_deref().unwrap_or(layout::DATA_LABEL);
    let deadline = Instant::now() + DISK_WAIT;
    // Coldplug runs on its own thread; devices that appear late (USB) arrive as uevents.
    let mut found = crate::disk::find(label);
    while found.is_none() && Instant::now() < deadline {
        match (uevents, cp) {
            (Some(u), Some(c)) => {
                let _ = sys::poll(&[u.raw_fd()], Some(Duration::from_millis(20)));
                c.drain(u);
            }
            _ => sys::sleep(Duration::from_millis(20)),
        }
        found = crate::disk::find(label);
    }
    let Some(mut f) = found else {
        let reason = format!(
            "no disk with a partition named {label} appeared within {} s",
            DISK_WAIT.as_secs()
        );
        error!("{reason}");
        return DataInfo {
            state: "degraded".into(),
            reason: Some(reason),
            ..Default::default()
        };
    };
    let mut grown = None;
    if !opts.no_grow {
        match crate::disk::grow_partition(&f, label) {
            Ok(Some(g)) => {
                grown = Some(g);
                if let Some(again) = crate::disk::find(label) {
                    f = again;
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!("growing {label}: {e}");
                info.warnings.push(format!("growing {label}: {e}"));
            }
        }
    }
    // File systems may still be loading on the coldplug thread: wait for them here rather
    // than let mount(2) exec the module helper.
    if let Some(c) = cp {
        for m in ["vfat", "nls_cp437", "nls_ascii", "ext4"] {
            c.load(m);
        }
    }
    let esp = f.esp.clone();
    if let Some(esp) = &esp
        && let Err(e) = crate::disk::mount_esp(esp)
    {
        warn!("{e}");
        info.warnings.push(e);
    }
    let mut models_dev = None;
    if let Some(m) = &f.models {
        match crate::disk::mount_models(m) {
            Ok(()) => {
                info!(
                    "model partition {} mounted at {}",
                    m.dev.display(),
                    layout::MODELS_MOUNT
                );
                models_dev = Some(m.dev.to_string_lossy().into_owned());
            }
            Err(e) => {
                warn!("{e}; local models are unavailable");
                info.warnings.push(e);
            }
        }
    }
    let Some(data) = f.data.clone() else {
        return DataInfo {
            state: "degraded".into(),
            reason: Some(format!("partition {label} has no device node")),
            ..Default::default()
        };
    };
    let mut state = DataInfo {
        device: Some(data.dev.to_string_lossy().into_owned()),
        esp: esp.map(|e| e.dev.to_string_lossy().into_owned()),
        models: models_dev,
        grown,
        ..Default::default()
    };
    match crate::disk::mount_data(&data) {
        Ok(()) => {
            state.state = "ok".into();
            info!(
                "data partition {} mounted at {}",
                data.dev.display(),
                layout::DATA_MOUNT
            );
            if let Err(e) = crate::disk::grow_filesystem(data.bytes) {
                warn!("{e}");
                info.warnings.push(e);
            }
        }
        Err(e) => {
            error!("{e}: running degraded and read-only; the partition was NOT reformatted");
            state.state = "degraded".into();
            state.reason = Some(e);
        }
    }
    state
}

fn write_boot_info(info: &BootInfo) {
    let tmp = format!("{}.tmp", layout::BOOT_INFO);
    let json = serde_json::to_vec_pretty(info).unwrap_or_default();
    if std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, layout::BOOT_INFO))
        .is_err()
    {
        warn!("could not write {}", layout::BOOT_INFO);
    }
}

fn run() -> Result<std::convert::Infallible, String> {
    let init_ms = sys::boot_ms();
    early_mounts()?;
    reopen_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (opts, cmd_warnings) = cmdline::boot_options(&cmdline);
    let _ = tracing::subscriber::set_global_default(crate::console::ConsoleLog::new(opts.log));
    let release = sys::kernel_release();
    info!(
        "Cairn {VERSION} ({}) starting on kernel {release}",
        std::env::consts::ARCH
    );
    let mut info = BootInfo {
        version: VERSION.into(),
        arch: std::env::consts::ARCH.into(),
        kernel: release.clone(),
        ..Default::default()
    };
    info.timeline.init_ms = init_ms;
    for w in cmd_warnings {
        warn!("{w}");
        info.warnings.push(w);
    }
    sysctls();
    if let Err(e) = sys::cad_to_signal() {
        warn!("Ctrl-Alt-Del handling: {e}");
    }
    let signals = sys::signalfd(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPWR,
    ])
    .map_err(|e| format!("signalfd: {e}"))?;

    // Coldplug.
    let uevents = match Uevents::open() {
        Ok(u) => Some(u),
        Err(e) => {
            warn!("uevent socket: {e}; devices that appear late will not get drivers");
            None
        }
    };
    let cp = match Coldplug::open(&release) {
        Ok(c) => Some(std::sync::Arc::new(c)),
        Err(e) => {
            error!("no kernel modules: {e}");
            info.warnings.push(format!("no kernel modules: {e}"));
            None
        }
    };
    // Coldplug settles on a thread while the boot goes on as soon as the data disk shows up;
    // it records when it is done and wakes the event loop.
    let (wake_rd, wake_wr) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let wake_wr = Arc::new(wake_wr);
    let settled = Arc::new(AtomicU64::new(0));
    if let Some(c) = cp.clone() {
        let (settled, wake) = (settled.clone(), wake_wr.clone());
        let spawned = std::thread::Builder::new()
            .name("coldplug".into())
            .spawn(move || {
                c.settle(None);
                settled.store(sys::boot_ms(), Ordering::SeqCst);
                let _ = sys::write_fd(wake.as_raw_fd(), b"m");
            });
        if let Err(e) = spawned {
            warn!("coldplug thread: {e}");
        }
    } else {
        settled.store(sys::boot_ms(), Ordering::SeqCst);
    }
    info.clock = crate::clock::ensure_sane(build_epoch());

    // Disks.
    info.data = disks(&opts, cp.as_deref(), &uevents, &mut info);
    info.timeline.disks_ms = sys::boot_ms();
    let data_ok = info.data.state == "ok";

    // Configuration, host name, entropy.
    let cfg = read_config(&mut info.warnings);
    info.hostname = set_hostname(&opts, &cfg);

    // Network, on its own thread.
    let net_state = Arc::new(Mutex::new(NetState::default()));
    let plan = net_plan(&opts, &cfg, &mut info.warnings);
    let net = (
        net::start(plan.clone(), net_state.clone(), wake_wr.clone()),
        plan,
    );

    // The appliance.
    let data_dir = if data_ok {
        layout::DATA_MOUNT
    } else {
        layout::VOLATILE_DATA
    };
    let listen = cfg
        .appliance
        .listen
        .clone()
        .unwrap_or_else(|| format!("0.0.0.0:{}", layout::HTTPS_PORT));
    let listen_port = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok());
    let mut args = vec![
        "serve".to_string(),
        "--data".into(),
        data_dir.into(),
        "--listen".into(),
        listen,
        "--appliance".into(),
    ];
    if !data_ok {
        args.push("--degraded".into());
        args.push(
            info.data
                .reason
                .clone()
                .unwrap_or_else(|| "data partition unavailable".into()),
        );
    }
    let log = cfg
        .appliance
        .log
        .clone()
        .unwrap_or_else(|| format!("{}", opts.log));
    let mut sup = Supervisor::new(layout::APPLIANCE_BIN, args, vec![("RUST_LOG".into(), log)]);
    // The appliance runs as its own user: it may bind its port below 1024 without being root
    // (the only service on this machine), and it gets the data directory, all but init's seed.
    if let Some(port) = listen_port
        && port < 1024
        && let Err(e) = sys::write_file(
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
            &port.to_string(),
        )
    {
        info.warnings
            .push(format!("letting the appliance bind port {port}: {e}"));
    }
    match crate::owner::hand_over(
        std::path::Path::new(data_dir),
        layout::APPLIANCE_UID,
        layout::APPLIANCE_GID,
        &[layout::INIT_PRIVATE, "lost+found"],
    ) {
        Ok(n) => {
            if n > 0 {
                info!("handed {n} entries of {data_dir} to the appliance's user");
            }
            sup = sup.run_as(layout::APPLIANCE_UID, layout::APPLIANCE_GID);
        }
        // Better a working appliance as root than none: said on the console and in boot.json.
        Err(e) => info.warnings.push(format!(
            "the appliance runs as root: handing {data_dir} to its user failed: {e}"
        )),
    }
    // Start the appliance first; what it does not need (the random seed's fsync, the power
    // button scan) follows. The pool is already seeded by the kernel (virtio-rng, jitter), the
    // saved seed only adds to it.
    sup.tick(Instant::now());
    if data_ok {
        let spawned = std::thread::Builder::new()
            .name("seed".into())
            .spawn(crate::entropy::load_and_refresh);
        if spawned.is_err() {
            crate::entropy::load_and_refresh();
        }
    }
    write_boot_info(&info);
    let ctx = LoopContext {
        signals,
        uevents,
        cp,
        net_state,
        wake: wake_rd,
        wake_wr,
        settled,
        opts,
    };
    event_loop(&mut sup, &ctx, net, &mut info)
}

/// What the event loop watches.
struct LoopContext {
    signals: OwnedFd,
    uevents: Option<Uevents>,
    cp: Option<Arc<Coldplug>>,
    net_state: Arc<Mutex<NetState>>,
    wake: OwnedFd,
    /// Its write end (for a restarted network thread).
    wake_wr: Arc<OwnedFd>,
    /// Boot time when coldplug settled (0 while it runs).
    settled: Arc<AtomicU64>,
    /// The kernel command line's options (they win over the config file on reconfiguration too).
    opts: BootOptions,
}

fn event_loop(
    sup: &mut Supervisor,
    ctx: &LoopContext,
    net: (net::NetHandle, NetPlan),
    info: &mut BootInfo,
) -> Result<std::convert::Infallible, String> {
    let mut net = Some(net);
    let (signals, uevents, cp, net_state, wake) = (
        &ctx.signals,
        &ctx.uevents,
        ctx.cp.as_deref(),
        &ctx.net_state,
        &ctx.wake,
    );
    // Drivers keep loading after coldplug settles (late USB devices, hotplug): every write of
    // boot.json carries the current module report.
    let publish = |info: &mut BootInfo| {
        if let Some(c) = cp {
            info.modules = c.report();
        }
        write_boot_info(info);
    };
    let mut buttons = PowerButtons::default();
    buttons.rescan();
    let mut ready: Option<ReadyFacts> = None;
    let mut shown_addresses: Vec<String> = Vec::new();
    loop {
        let now = Instant::now();
        sup.tick(now);
        let mut fds = vec![signals.as_raw_fd(), wake.as_raw_fd()];
        let control = sup.control_fd();
        if let Some(c) = control {
            fds.push(c);
        }
        if let Some(u) = &uevents {
            fds.push(u.raw_fd());
        }
        let button_fds = buttons.fds();
        fds.extend(&button_fds);
        let revents = sys::poll(&fds, sup.timeout(now)).unwrap_or_default();
        let ready_fd = |fd: i32| {
            fds.iter()
                .position(|f| *f == fd)
                .and_then(|i| revents.get(i))
                .is_some_and(|r| *r != 0)
        };

        // Signals: children, power requests, forwarding.
        if ready_fd(signals.as_raw_fd()) {
            while let Some(sig) = sys::read_signal(signals) {
                match sig as libc::c_int {
                    libc::SIGCHLD => {
                        while let Some((pid, status)) = sys::reap_one() {
                            if sup.child_exited(pid, status, Instant::now()) {
                                info.appliance.restarts = sup.policy.restarts;
                                info.appliance.crash_loop = sup.policy.crash_loop;
                                info.appliance.pid = None;
                                publish(info);
                            }
                        }
                    }
                    libc::SIGINT => power::shutdown(sup, PowerAction::Reboot, "Ctrl-Alt-Del"),
                    libc::SIGTERM => power::shutdown(sup, PowerAction::Reboot, "SIGTERM"),
                    libc::SIGUSR2 | libc::SIGPWR => {
                        power::shutdown(sup, PowerAction::Poweroff, "power-off signal")
                    }
                    libc::SIGHUP | libc::SIGUSR1 => sup.signal(sig as libc::c_int),
                    _ => {}
                }
            }
        }

        // Power button.
        for fd in &button_fds {
            if ready_fd(*fd) && buttons.pressed(*fd) {
                power::shutdown(sup, PowerAction::Poweroff, "power button");
            }
        }

        // Hotplug: drivers for new devices, new power buttons.
        if let Some(u) = &uevents
            && ready_fd(u.raw_fd())
        {
            let events = match cp {
                Some(c) => c.drain(u),
                None => std::iter::from_fn(|| u.next()).collect(),
            };
            if events.iter().any(|e| e.get("SUBSYSTEM") == Some("input")) {
                buttons.rescan();
            }
            if events.iter().any(|e| e.action == "add") {
                publish(info);
            }
        }

        // Messages from the appliance.
        if let Some(c) = control
            && ready_fd(c)
        {
            let mut buf = [0u8; 4096];
            match sys::read_fd(c, &mut buf) {
                Ok(0) => sup.close_control(),
                Ok(n) => match ToInit::decode(buf.get(..n).unwrap_or_default()) {
                    Ok(ToInit::Ready {
                        fingerprint,
                        port,
                        notes,
                    }) => {
                        if info.timeline.ready_ms.is_none() {
                            info.timeline.ready_ms = Some(sys::boot_ms());
                        }
                        info.appliance.pid = sup.pid();
                        ready = Some(ReadyFacts {
                            fingerprint,
                            port,
                            notes,
                        });
                        sync_net(info, net_state);
                        publish(info);
                        if let Some(r) = &ready {
                            crate::console::to_all_consoles(&banner::render(info, r));
                        }
                        info!("{}", layout::READY_MARKER);
                        shown_addresses = info.network.addresses.clone();
                    }
                    Ok(ToInit::Power { action }) => {
                        power::shutdown(sup, action, "requested through the API")
                    }
                    Ok(ToInit::Reconfigure) => {
                        info!("config: reconfiguring on request");
                        let cfg = read_config(&mut info.warnings);
                        info.hostname = set_hostname(&ctx.opts, &cfg);
                        let plan = net_plan(&ctx.opts, &cfg, &mut info.warnings);
                        // Only a changed plan touches the network: a new host name must not
                        // drop the address every connection is using.
                        if net.as_ref().is_none_or(|(_, p)| *p != plan) {
                            if let Some((old, _)) = net.take() {
                                old.stop();
                            }
                            let handle =
                                net::start(plan.clone(), net_state.clone(), ctx.wake_wr.clone());
                            net = Some((handle, plan));
                        }
                        info.warnings.dedup();
                        info.reconfigured = info.reconfigured.saturating_add(1);
                        sync_net(info, net_state);
                        publish(info);
                        if let Some(r) = &ready {
                            crate::console::to_all_consoles(&banner::render(info, r));
                        }
                    }
                    Ok(ToInit::SetClock { unix }) => {
                        match crate::clock::set(unix) {
                            Ok(()) => info.clock.source = "operator".into(),
                            Err(e) => warn!("clock: {e}"),
                        }
                        publish(info);
                    }
                    Err(e) => warn!("{e}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => sup.close_control(),
            }
        }

        // Coldplug settled or the network changed: update boot.json; show a new address.
        if ready_fd(wake.as_raw_fd()) {
            let mut b = [0u8; 64];
            while sys::read_fd(wake.as_raw_fd(), &mut b).is_ok_and(|n| n > 0) {}
            let done = ctx.settled.load(Ordering::SeqCst);
            if info.timeline.modules_ms == 0 && done > 0 {
                info.timeline.modules_ms = done;
                if let Some(c) = cp {
                    info.modules = c.report();
                    for (m, e) in &info.modules.failed {
                        info.warnings.push(format!("module {m}: {e}"));
                    }
                }
            }
            sync_net(info, net_state);
            publish(info);
            if let Some(r) = &ready
                && info.network.addresses != shown_addresses
            {
                shown_addresses = info.network.addresses.clone();
                crate::console::to_all_consoles(&banner::render(info, r));
            }
        }
    }
}

fn sync_net(info: &mut BootInfo, net_state: &Arc<Mutex<NetState>>) {
    let s = match net_state.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    if info.timeline.network_ms.is_none() {
        info.timeline.network_ms = s.configured_ms;
    }
    info.network = s;
}

/// True when this process should act as the kernel's modprobe helper.
pub fn invoked_as_modprobe(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "modprobe")
}
