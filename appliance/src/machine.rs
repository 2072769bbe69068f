//! Machine settings: the host name and the network, kept in `DATA/etc/cairn.toml` (the file
//! cairn-init reads at boot, over the ESP's) and applied by init on request; and the wall clock.
//!
//! Changes are transactional: a request is validated as a whole (each bad value names its
//! field), the file is replaced atomically (write, fsync, rename, fsync the folder), and when
//! init cannot be told the old file is put back. A change to the network can cut the operator
//! off, so it is on probation: the previous file is kept in `cairn.toml.revert` with a deadline,
//! the change is applied a second after the answer (so the answer still reaches the operator),
//! and unless the operator confirms the change (from the new address) before the deadline,
//! the previous settings are restored and applied again. An unconfirmed change does not survive
//! a restart of the appliance either: at start, a leftover revert file is rolled back first.
//!
//! Hosted (`cairn serve` without init) the settings are stored and the probation works the
//! same, but nothing manages the host's network; the API says so (`managed: false`).

use crate::control::Control;
use cairn_init::bootinfo::BootInfo;
use cairn_init::cmdline::NetMode;
use cairn_init::config::{Cidr, Config, NetworkConfig};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Default probation of a network change, in seconds.
pub const DEFAULT_CONFIRM_S: u64 = 120;
/// Allowed probation range, in seconds.
pub const CONFIRM_RANGE_S: std::ops::RangeInclusive<u64> = 10..=3600;

/// Why a settings request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineError {
    /// A value is invalid: the form field and a message for next to it.
    Field(&'static str, String),
    /// The request conflicts with the current state (a change awaits confirmation, ...).
    Conflict(String),
    /// Init could not be reached, or the files could not be written; nothing changed.
    Failed(String),
}

impl std::fmt::Display for MachineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MachineError::Field(field, m) => write!(f, "{field}: {m}"),
            MachineError::Conflict(m) | MachineError::Failed(m) => f.write_str(m),
        }
    }
}

/// The network part of a change, as a form sends it (strings, empty meaning "none").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetChange {
    /// `dhcp` or `static`.
    pub mode: String,
    /// Interface name; empty for the first wired one.
    pub interface: Option<String>,
    /// Static address with prefix (`192.168.1.20/24`).
    pub address: Option<String>,
    /// Static default gateway.
    pub gateway: Option<String>,
    /// Static resolvers (up to 3).
    pub dns: Vec<String>,
}

/// A settings change: every part is optional; absent parts stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Change {
    /// New host name.
    pub hostname: Option<String>,
    /// New network settings.
    pub network: Option<NetChange>,
    /// Seconds the operator has to confirm a network change (default 120).
    pub confirm_within_s: Option<u64>,
}

/// The settings in force (files layered as init layers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// Host name.
    pub hostname: String,
    /// Network settings.
    pub network: NetworkConfig,
}

/// A network change awaiting confirmation (also the on-disk revert record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Unix time when the change is reverted unless confirmed.
    pub deadline: i64,
    /// The data partition's config file before the change (`None`: there was none).
    pub previous: Option<String>,
    /// Identifies this change, so a stale timer never reverts a newer one.
    pub id: u64,
    /// Whether init has applied it yet (a change cannot be confirmed before).
    #[serde(skip)]
    pub applied: bool,
}

/// What a successful change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to change.
    Unchanged,
    /// Applied; nothing to confirm.
    Applied,
    /// Applied on probation: confirm before the deadline or it is reverted.
    Pending(Pending),
}

/// The machine settings service.
pub struct Machine {
    etc: PathBuf,
    esp: Option<PathBuf>,
    boot_info: PathBuf,
    control: Arc<Control>,
    pending: Mutex<Option<Pending>>,
    last_error: Mutex<Option<String>>,
}

fn now_unix() -> i64 {
    crate::auth::unix_now() as i64
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes `path` durably; a missing file is fine.
fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

fn io_failed(what: &str, e: std::io::Error) -> MachineError {
    MachineError::Failed(format!("{what}: {e}"))
}

/// A form value, trimmed; empty means absent.
fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Checks a network change and turns it into the file's form.
fn validate_network(n: &NetChange) -> Result<NetworkConfig, MachineError> {
    let field = |f: &'static str, m: String| MachineError::Field(f, m);
    let mode = match n.mode.trim() {
        "dhcp" => NetMode::Dhcp,
        "static" => NetMode::Static,
        "off" => {
            return Err(field(
                "mode",
                "turning the network off cuts every management path; set it in cairn.toml on \
                 the ESP instead"
                    .into(),
            ));
        }
        other => return Err(field("mode", format!("{other:?} is not dhcp or static"))),
    };
    let interface = match text(&n.interface) {
        Some(i) => {
            let ok = i.len() <= 15
                && i.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(field(
                    "interface",
                    format!("{i:?} is not an interface name (up to 15 letters, digits, -, _, .)"),
                ));
            }
            Some(i.to_string())
        }
        None => None,
    };
    if mode == NetMode::Dhcp {
        return Ok(NetworkConfig {
            mode,
            interface,
            ..NetworkConfig::default()
        });
    }
    let Some(addr_text) = text(&n.address) else {
        return Err(field(
            "address",
            "a static address is required, e.g. 192.168.1.20/24".into(),
        ));
    };
    let cidr: Cidr = addr_text.parse().map_err(|e| field("address", e))?;
    let a = cidr.addr;
    if !(1..=32).contains(&cidr.prefix) {
        return Err(field("address", "the prefix length must be 1-32".into()));
    }
    let mask = u32::MAX << (32 - u32::from(cidr.prefix));
    let host = u32::from(a) & !mask;
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || (cidr.prefix <= 30 && (host == 0 || host == !mask))
    {
        return Err(field(
            "address",
            format!("{a} cannot be this machine's address in {addr_text}"),
        ));
    }
    let gateway = match text(&n.gateway) {
        Some(g) => {
            let g: Ipv4Addr = g
                .parse()
                .map_err(|_| field("gateway", format!("{g:?} is not an IPv4 address")))?;
            if u32::from(g) & mask != u32::from(a) & mask || g == a {
                return Err(field(
                    "gateway",
                    format!("{g} is not another address in {addr_text}'s network"),
                ));
            }
            Some(g)
        }
        None => None,
    };
    let mut dns = Vec::new();
    for d in n.dns.iter().map(|d| d.trim()).filter(|d| !d.is_empty()) {
        let ip: Ipv4Addr = d
            .parse()
            .map_err(|_| field("dns", format!("{d:?} is not an IPv4 address")))?;
        dns.push(ip);
    }
    if dns.len() > 3 {
        return Err(field("dns", "at most 3 resolvers".into()));
    }
    Ok(NetworkConfig {
        mode,
        interface,
        address: Some(format!("{}/{}", cidr.addr, cidr.prefix)),
        gateway,
        dns,
    })
}

fn toml_value<T: Serialize>(v: &T) -> Result<toml::Value, MachineError> {
    toml::Value::try_from(v).map_err(|e| MachineError::Failed(format!("rendering cairn.toml: {e}")))
}

/// The text of a config file: only the tables the file sets.
fn render(cfg: &Config) -> Result<String, MachineError> {
    let mut t = toml::Table::new();
    if let Some(h) = &cfg.hostname {
        t.insert("hostname".into(), h.clone().into());
    }
    if cfg.network_given {
        t.insert("network".into(), toml_value(&cfg.network)?);
    }
    if cfg.appliance != Default::default() {
        t.insert("appliance".into(), toml_value(&cfg.appliance)?);
    }
    let body = toml::to_string(&t)
        .map_err(|e| MachineError::Failed(format!("rendering cairn.toml: {e}")))?;
    Ok(format!(
        "# Written by the Cairn appliance (console or API). It wins over the ESP's cairn.toml.\n{body}"
    ))
}

impl Machine {
    /// Opens the service over `DATA/etc`; rolls back a change left unconfirmed by a restart.
    /// Under init, `esp` is the ESP's config file and `boot_info` init's boot facts.
    pub fn open(
        data_dir: &Path,
        esp: Option<PathBuf>,
        boot_info: PathBuf,
        control: Arc<Control>,
    ) -> Machine {
        let m = Machine {
            etc: data_dir.join("etc"),
            esp,
            boot_info,
            control,
            pending: Mutex::new(None),
            last_error: Mutex::new(None),
        };
        if let Some(p) = m.read_pending() {
            warn!("machine settings: a network change was never confirmed; rolling it back");
            if let Err(e) = m.restore(&p) {
                warn!("machine settings: rollback failed: {e}");
            }
        }
        m
    }

    fn config_path(&self) -> PathBuf {
        self.etc.join("cairn.toml")
    }

    fn revert_path(&self) -> PathBuf {
        self.etc.join("cairn.toml.revert")
    }

    fn read_pending(&self) -> Option<Pending> {
        let bytes = std::fs::read(self.revert_path()).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!("machine settings: unreadable revert record ({e}); ignoring it");
                None
            }
        }
    }

    /// True when init applies the settings (false when hosted).
    pub fn managed(&self) -> bool {
        self.control.is_present()
    }

    /// The data partition's file: its text (if any) and its settings. A malformed file counts
    /// as empty (init ignores it too).
    fn data_config(&self) -> (Option<String>, Config) {
        let path = self.config_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let cfg = Config::parse(&text, &path.display().to_string()).unwrap_or_else(|e| {
                    warn!("machine settings: {e}; it is replaced on the next change");
                    Config::default()
                });
                (Some(text), cfg)
            }
            Err(_) => (None, Config::default()),
        }
    }

    fn esp_config(&self) -> Config {
        self.esp
            .as_ref()
            .and_then(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                Config::parse(&text, &p.display().to_string()).ok()
            })
            .unwrap_or_default()
    }

    /// The configured settings (ESP file, then the data partition's, as init layers them).
    pub fn settings(&self) -> Settings {
        let cfg = self.esp_config().merged(self.data_config().1);
        Settings {
            hostname: cfg.hostname.unwrap_or_else(|| "cairn".into()),
            network: cfg.network,
        }
    }

    /// Kernel command-line options that override the configured settings (under init only).
    pub fn overrides(&self) -> Vec<String> {
        if !self.managed() {
            return Vec::new();
        }
        let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let (opts, _) = cairn_init::cmdline::boot_options(&line);
        let mut out = Vec::new();
        if let Some(n) = opts.net {
            out.push(format!(
                "the kernel command line sets cairn.net={}: network mode changes take effect \
                 only without it",
                serde_json::to_value(n)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ));
        }
        if let Some(h) = opts.hostname {
            out.push(format!(
                "the kernel command line sets cairn.hostname={h}: host name changes take effect \
                 only without it"
            ));
        }
        out
    }

    /// Init's boot facts (host name and network in force), under init.
    pub fn boot_info(&self) -> Option<BootInfo> {
        let bytes = std::fs::read(&self.boot_info).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The network change awaiting confirmation, if any.
    pub fn pending(&self) -> Option<Pending> {
        self.pending.lock().ok().and_then(|p| p.clone())
    }

    /// Asks init to apply the file and waits (up to 5 s) until it has.
    fn apply(&self) -> Result<(), MachineError> {
        if !self.managed() {
            return Ok(());
        }
        let before = self.boot_info().map_or(0, |b| b.reconfigured);
        self.control
            .reconfigure()
            .map_err(|e| MachineError::Failed(format!("could not reach cairn-init: {e}")))?;
        for _ in 0..50 {
            if self.boot_info().is_some_and(|b| b.reconfigured > before) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        warn!("machine settings: init has not reported the reconfiguration yet");
        Ok(())
    }

    /// Validates and applies a change. Blocking (file writes with fsync, waits for init).
    pub fn change(&self, c: &Change) -> Result<Outcome, MachineError> {
        let confirm_s = c.confirm_within_s.unwrap_or(DEFAULT_CONFIRM_S);
        if !CONFIRM_RANGE_S.contains(&confirm_s) {
            return Err(MachineError::Field(
                "confirm_within_s",
                format!(
                    "must be {}-{} seconds",
                    CONFIRM_RANGE_S.start(),
                    CONFIRM_RANGE_S.end()
                ),
            ));
        }
        let hostname = match c.hostname.as_deref().map(str::trim) {
            Some(h) => {
                cairn_init::config::validate_hostname(h)
                    .map_err(|e| MachineError::Field("hostname", e))?;
                Some(h.to_string())
            }
            None => None,
        };
        let network = c.network.as_ref().map(validate_network).transpose()?;

        let mut guard = self
            .pending
            .lock()
            .map_err(|_| MachineError::Failed("settings lock poisoned".into()))?;
        if guard.is_some() {
            return Err(MachineError::Conflict(
                "a network change is awaiting confirmation: confirm or revert it first".into(),
            ));
        }
        let before = self.settings();
        let (previous, mut cfg) = self.data_config();
        if let Some(h) = hostname {
            cfg.hostname = Some(h);
        }
        if let Some(n) = network {
            cfg.network = n;
            cfg.network_given = true;
        }
        let text = render(&cfg)?;
        // Belt and braces: what init will read must parse.
        Config::parse(&text, "new cairn.toml").map_err(MachineError::Failed)?;
        if previous.as_deref() == Some(text.as_str()) {
            return Ok(Outcome::Unchanged);
        }
        let after = self.esp_config().merged(cfg);
        let net_changed = after.network != before.network;
        if !net_changed && after.hostname.as_deref().unwrap_or("cairn") == before.hostname {
            // Same effect, different text (e.g. the file was malformed): store it quietly.
            write_atomic(&self.config_path(), text.as_bytes())
                .map_err(|e| io_failed("writing cairn.toml", e))?;
            return Ok(Outcome::Unchanged);
        }
        let pending = net_changed.then(|| Pending {
            deadline: now_unix() + confirm_s as i64,
            previous: previous.clone(),
            id: u64::from_le_bytes(crate::auth::random_bytes::<8>()),
            applied: false,
        });
        if let Some(p) = &pending {
            let record = serde_json::to_vec(p).unwrap_or_default();
            write_atomic(&self.revert_path(), &record)
                .map_err(|e| io_failed("writing the revert record", e))?;
        }
        if let Err(e) = write_atomic(&self.config_path(), text.as_bytes()) {
            let _ = remove_durably(&self.revert_path());
            return Err(io_failed("writing cairn.toml", e));
        }
        if let Some(p) = pending {
            // Applied by `probation` a moment later, so this answer reaches the operator
            // before the address it travels on may go away.
            info!("machine settings: network change on probation for {confirm_s} s");
            crate::events::emit(
                "machine.settings",
                "network",
                "info",
                format!("network change on probation for {confirm_s} s"),
            );
            *guard = Some(p.clone());
            return Ok(Outcome::Pending(p));
        }
        if let Err(e) = self.apply() {
            self.put_back(&previous);
            return Err(e);
        }
        info!("machine settings changed");
        crate::events::emit("machine.settings", "hostname", "info", "host name changed");
        Ok(Outcome::Applied)
    }

    /// Restores the previous file and drops the revert record, without applying.
    fn put_back(&self, previous: &Option<String>) {
        let undo = match previous {
            Some(t) => write_atomic(&self.config_path(), t.as_bytes()),
            None => remove_durably(&self.config_path()),
        };
        if let Err(u) = undo {
            warn!("machine settings: undo failed: {u}");
        }
        if let Err(u) = remove_durably(&self.revert_path()) {
            warn!("machine settings: removing the revert record failed: {u}");
        }
    }

    /// Applies change `id` (written by [`Machine::change`]); if init cannot be told, the
    /// change is withdrawn and the reason kept for [`Machine::last_error`].
    pub fn apply_pending(&self, id: u64) {
        let Ok(mut guard) = self.pending.lock() else {
            return;
        };
        let Some(p) = guard.clone().filter(|p| p.id == id) else {
            return;
        };
        match self.apply() {
            Ok(()) => {
                if let Some(p) = guard.as_mut() {
                    p.applied = true;
                }
            }
            Err(e) => {
                warn!("machine settings: network change withdrawn: {e}");
                crate::events::emit(
                    "machine.settings",
                    "network",
                    "error",
                    format!("network change withdrawn: {e}"),
                );
                self.put_back(&p.previous);
                *guard = None;
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }

    /// Why the last network change could not be applied, if it could not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Puts the previous file back and applies it.
    fn restore(&self, p: &Pending) -> Result<(), MachineError> {
        match &p.previous {
            Some(t) => write_atomic(&self.config_path(), t.as_bytes()),
            None => remove_durably(&self.config_path()),
        }
        .map_err(|e| io_failed("restoring cairn.toml", e))?;
        remove_durably(&self.revert_path()).map_err(|e| io_failed("removing the record", e))?;
        self.apply()
    }

    /// Keeps the change on probation (the operator reached the appliance after it).
    pub fn confirm(&self) -> Result<(), MachineError> {
        let mut guard = self
            .pending
            .lock()
            .map_err(|_| MachineError::Failed("settings lock poisoned".into()))?;
        match &*guard {
            None => {
                return Err(MachineError::Conflict(
                    "no change awaits confirmation".into(),
                ));
            }
            Some(p) if !p.applied => {
                return Err(MachineError::Conflict(
                    "the change is still being applied; confirm it from the new address".into(),
                ));
            }
            Some(_) => {}
        }
        remove_durably(&self.revert_path())
            .map_err(|e| io_failed("removing the revert record", e))?;
        *guard = None;
        info!("machine settings: network change confirmed");
        crate::events::emit(
            "machine.settings",
            "network",
            "info",
            "network change confirmed",
        );
        Ok(())
    }

    /// Reverts the change on probation now (`id`: only if it is still that change).
    pub fn revert(&self, id: Option<u64>) -> Result<(), MachineError> {
        let mut guard = self
            .pending
            .lock()
            .map_err(|_| MachineError::Failed("settings lock poisoned".into()))?;
        let Some(p) = guard.clone().filter(|p| id.is_none_or(|i| i == p.id)) else {
            return Err(MachineError::Conflict(
                "no change awaits confirmation".into(),
            ));
        };
        self.restore(&p)?;
        *guard = None;
        info!("machine settings: network change reverted");
        crate::events::emit(
            "machine.settings",
            "network",
            "warn",
            "network change reverted (previous settings restored)",
        );
        Ok(())
    }

    /// Sets the wall clock (and RTC) through init.
    pub fn set_clock(&self, unix: i64) -> Result<(), MachineError> {
        if !(946_684_800..=7_258_118_400).contains(&unix) {
            return Err(MachineError::Field(
                "time",
                "the time must be between 2000 and 2200".into(),
            ));
        }
        if !self.managed() {
            return Err(MachineError::Conflict(
                "this instance runs hosted: the clock belongs to the host system".into(),
            ));
        }
        self.control
            .set_clock(unix)
            .map_err(|e| MachineError::Failed(format!("could not reach cairn-init: {e}")))
    }
}

/// Pause between answering a network change and applying it.
pub const APPLY_DELAY: Duration = Duration::from_secs(1);

/// Runs a network change's probation: applies it after [`APPLY_DELAY`], then reverts it at
/// its deadline unless it was confirmed or reverted before.
pub async fn probation(machine: Arc<Machine>, p: Pending) {
    tokio::time::sleep(APPLY_DELAY).await;
    let (m, id) = (machine.clone(), p.id);
    let _ = tokio::task::spawn_blocking(move || m.apply_pending(id)).await;
    let wait = (p.deadline - now_unix()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let m = machine.clone();
    let r = tokio::task::spawn_blocking(move || m.revert(Some(p.id))).await;
    if let Ok(Ok(())) = r {
        warn!("machine settings: network change not confirmed in time; previous settings restored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(mode: &str, address: &str, gateway: &str, dns: &[&str]) -> NetChange {
        NetChange {
            mode: mode.into(),
            interface: None,
            address: Some(address.into()),
            gateway: Some(gateway.into()),
            dns: dns.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn hosted(dir: &Path) -> Machine {
        Machine::open(
            dir,
            None,
            dir.join("boot.json"),
            Arc::new(Control::hosted()),
        )
    }

    #[test]
    fn every_bad_value_names_its_field() {
        let cases = [
            (net("static", "", "", &[]), "address"),
            (net("static", "10.0.0.5", "", &[]), "address"),
            (net("static", "10.0.0.0/24", "", &[]), "address"),
            (net("static", "127.0.0.2/8", "", &[]), "address"),
            (net("static", "10.0.0.5/24", "10.0.1.1", &[]), "gateway"),
            (net("static", "10.0.0.5/24", "10.0.0.5", &[]), "gateway"),
            (net("static", "10.0.0.5/24", "nope", &[]), "gateway"),
            (net("static", "10.0.0.5/24", "10.0.0.1", &["1.1.1"]), "dns"),
            (
                net(
                    "static",
                    "10.0.0.5/24",
                    "",
                    &["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"],
                ),
                "dns",
            ),
            (net("off", "", "", &[]), "mode"),
            (net("bogus", "", "", &[]), "mode"),
        ];
        for (n, field) in cases {
            match validate_network(&n) {
                Err(MachineError::Field(f, _)) => assert_eq!(f, field, "{n:?}"),
                other => panic!("{n:?}: {other:?}"),
            }
        }
        let mut bad_if = net("dhcp", "", "", &[]);
        bad_if.interface = Some("eth0; reboot".into());
        assert!(matches!(
            validate_network(&bad_if),
            Err(MachineError::Field("interface", _))
        ));
        let ok = validate_network(&net("static", " 10.0.0.5/24 ", "10.0.0.1", &["10.0.0.1"]));
        assert_eq!(ok.unwrap().address.as_deref(), Some("10.0.0.5/24"));
        // DHCP drops static leftovers from the form.
        let d = validate_network(&net("dhcp", "10.0.0.5/24", "x", &[])).unwrap();
        assert_eq!(d.address, None);
    }

    #[test]
    fn a_rejected_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let m = hosted(dir.path());
        let e = m
            .change(&Change {
                hostname: Some("edge-2".into()),
                network: Some(net("static", "10.0.0.5/24", "192.168.0.1", &[])),
                confirm_within_s: None,
            })
            .unwrap_err();
        assert!(matches!(e, MachineError::Field("gateway", _)), "{e:?}");
        assert!(!dir.path().join("etc/cairn.toml").exists());
        assert_eq!(m.settings().hostname, "cairn");
    }

    #[test]
    fn host_name_applies_at_once_and_network_waits_for_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let m = hosted(dir.path());
        let host = Change {
            hostname: Some("edge-2".into()),
            ..Change::default()
        };
        assert_eq!(m.change(&host).unwrap(), Outcome::Applied);
        assert_eq!(m.change(&host).unwrap(), Outcome::Unchanged);
        let text = std::fs::read_to_string(dir.path().join("etc/cairn.toml")).unwrap();
        assert!(text.contains("hostname = \"edge-2\""), "{text}");
        // No [network] table was written: the ESP's (if any) still decides the network.
        assert!(!text.contains("[network]"), "{text}");

        let change = Change {
            network: Some(net("static", "10.0.0.5/24", "10.0.0.1", &["10.0.0.1"])),
            ..Change::default()
        };
        let Outcome::Pending(p) = m.change(&change).unwrap() else {
            panic!("a network change must be on probation")
        };
        assert!(p.deadline >= now_unix() + DEFAULT_CONFIRM_S as i64 - 2);
        assert_eq!(m.settings().network.mode, NetMode::Static);
        // A second change waits for the first.
        assert!(matches!(m.change(&host), Err(MachineError::Conflict(_))));
        m.revert(None).unwrap();
        assert_eq!(m.settings().network.mode, NetMode::Dhcp);
        assert_eq!(m.settings().hostname, "edge-2");
        assert!(!dir.path().join("etc/cairn.toml.revert").exists());

        let Outcome::Pending(p) = m.change(&change).unwrap() else {
            panic!()
        };
        assert!(
            matches!(m.confirm(), Err(MachineError::Conflict(_))),
            "confirmed before it was applied"
        );
        m.apply_pending(p.id);
        m.confirm().unwrap();
        assert!(m.pending().is_none());
        assert!(matches!(m.confirm(), Err(MachineError::Conflict(_))));
        assert_eq!(m.settings().network.address.as_deref(), Some("10.0.0.5/24"));
    }

    #[test]
    fn a_stale_timer_never_reverts_a_newer_change() {
        let dir = tempfile::tempdir().unwrap();
        let m = hosted(dir.path());
        let change = Change {
            network: Some(net("static", "10.0.0.5/24", "", &[])),
            ..Change::default()
        };
        let Outcome::Pending(first) = m.change(&change).unwrap() else {
            panic!()
        };
        m.revert(None).unwrap();
        let Outcome::Pending(_second) = m.change(&change).unwrap() else {
            panic!()
        };
        assert!(matches!(
            m.revert(Some(first.id)),
            Err(MachineError::Conflict(_))
        ));
        assert!(m.pending().is_some());
    }

    #[test]
    fn an_unconfirmed_change_is_rolled_back_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let m = hosted(dir.path());
        m.change(&Change {
            hostname: Some("before".into()),
            ..Change::default()
        })
        .unwrap();
        m.change(&Change {
            hostname: Some("after".into()),
            network: Some(net("static", "10.0.0.5/24", "", &[])),
            ..Change::default()
        })
        .unwrap();
        drop(m);
        // The appliance restarts (or the box reboots) before anyone confirmed.
        let m = hosted(dir.path());
        let s = m.settings();
        assert_eq!(s.hostname, "before");
        assert_eq!(s.network.mode, NetMode::Dhcp);
        assert!(m.pending().is_none());
        assert!(!dir.path().join("etc/cairn.toml.revert").exists());
    }

    #[test]
    fn a_malformed_file_is_replaced_and_other_tables_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/cairn.toml"),
            "[appliance]\nlog = \"debug\"\n",
        )
        .unwrap();
        let m = hosted(dir.path());
        m.change(&Change {
            hostname: Some("x1".into()),
            ..Change::default()
        })
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("etc/cairn.toml")).unwrap();
        assert!(
            text.contains("log = \"debug\"") && text.contains("x1"),
            "{text}"
        );
        std::fs::write(dir.path().join("etc/cairn.toml"), "hostname = \n").unwrap();
        assert_eq!(m.settings().hostname, "cairn");
        m.change(&Change {
            hostname: Some("x2".into()),
            ..Change::default()
        })
        .unwrap();
        assert_eq!(m.settings().hostname, "x2");
    }

    #[test]
    fn the_clock_needs_init_and_a_sane_time() {
        let dir = tempfile::tempdir().unwrap();
        let m = hosted(dir.path());
        assert!(matches!(
            m.set_clock(5),
            Err(MachineError::Field("time", _))
        ));
        assert!(matches!(
            m.set_clock(1_800_000_000),
            Err(MachineError::Conflict(_))
        ));
    }
}
