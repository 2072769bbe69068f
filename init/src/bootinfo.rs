//! Boot facts init publishes at `/run/cairn/boot.json` for the appliance, and the control
//! messages the appliance sends back over its control socket.
//!
//! Both sides compile these types (the appliance depends on this crate's library), and every
//! field has a default so either side may be newer than the other.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Everything init knows about this boot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BootInfo {
    /// Cairn version of init.
    pub version: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Kernel release.
    pub kernel: String,
    /// Host name in force.
    pub hostname: String,
    /// Boot milestones.
    pub timeline: Timeline,
    /// Data partition state.
    pub data: DataInfo,
    /// Network state.
    pub network: NetState,
    /// Kernel modules.
    pub modules: ModulesInfo,
    /// Where the clock came from.
    pub clock: ClockInfo,
    /// Appliance supervision.
    pub appliance: ApplianceInfo,
    /// How many `Reconfigure` requests init has applied since boot.
    pub reconfigured: u32,
    /// Problems that did not stop the boot (bad config lines, missing modules, ...).
    pub warnings: Vec<String>,
}

/// Milliseconds since the kernel started at each milestone (CLOCK_BOOTTIME).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Timeline {
    /// Init started: the kernel's share of the boot.
    pub init_ms: u64,
    /// Coldplug settled.
    pub modules_ms: u64,
    /// Data partition mounted (or given up on).
    pub disks_ms: u64,
    /// First address configured, if it has been.
    pub network_ms: Option<u64>,
    /// The appliance reported ready, if it has.
    pub ready_ms: Option<u64>,
}

/// Data partition state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DataInfo {
    /// `ok` (mounted read-write) or `degraded` (not mounted; state kept in RAM only).
    pub state: String,
    /// Block device, e.g. `/dev/vda2`.
    pub device: Option<String>,
    /// Why the partition is not in use, when degraded.
    pub reason: Option<String>,
    /// Set when this boot grew the partition to fill the disk.
    pub grown: Option<Growth>,
    /// The ESP's block device, when found.
    pub esp: Option<String>,
    /// The model partition's block device, when the image has one and it is mounted.
    pub models: Option<String>,
}

/// What growing did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Growth {
    /// Partition size before, bytes.
    pub from_bytes: u64,
    /// Partition size after, bytes.
    pub to_bytes: u64,
}

/// Network state, kept current by the network thread.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NetState {
    /// `dhcp`, `static` or `off`.
    pub mode: String,
    /// `off`, `no-interface`, `configuring`, `configured` or `failed`.
    pub state: String,
    /// Interface in use.
    pub interface: Option<String>,
    /// Addresses with prefix, e.g. `10.0.2.15/24`.
    pub addresses: Vec<String>,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Resolvers.
    pub dns: Vec<Ipv4Addr>,
    /// Milliseconds since boot when the first address was configured.
    pub configured_ms: Option<u64>,
    /// Why configuration failed, when it did.
    pub error: Option<String>,
}

/// What coldplug did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ModulesInfo {
    /// Modules loaded, in load order.
    pub loaded: Vec<String>,
    /// Modules that failed to load, with the error.
    pub failed: BTreeMap<String, String>,
    /// Device modaliases no module in the image serves (most devices need none).
    pub unmatched: usize,
}

/// Where the wall clock came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClockInfo {
    /// `rtc` or `build-time`.
    pub source: String,
    /// Seconds since the epoch when init checked.
    pub at_boot: i64,
}

/// Appliance supervision state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ApplianceInfo {
    /// Times init restarted the appliance since boot.
    pub restarts: u32,
    /// True while restarts come too fast (init then waits a minute between tries).
    pub crash_loop: bool,
    /// Process id of the running appliance.
    pub pid: Option<i32>,
}

/// A message from the appliance to init (one JSON object per SOCK_SEQPACKET datagram).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToInit {
    /// The API is listening; init prints the banner with these facts.
    Ready {
        /// SHA-256 fingerprint of the TLS certificate, colon-separated hex.
        fingerprint: String,
        /// HTTPS port.
        port: u16,
        /// Extra banner lines (e.g. the one-time setup code).
        #[serde(default)]
        notes: Vec<String>,
    },
    /// The operator asked for a reboot or power-off.
    Power {
        /// What to do.
        action: PowerAction,
    },
    /// `/data/etc/cairn.toml` changed: re-read it, set the host name, redo the network.
    Reconfigure,
    /// The operator set the wall clock (seconds since the epoch, UTC); init sets the system
    /// clock and the RTC.
    SetClock {
        /// New time.
        unix: i64,
    },
}

/// A power action.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Restart the machine.
    Reboot,
    /// Turn it off.
    Poweroff,
}

impl ToInit {
    /// Parses one datagram; bad input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ToInit, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("bad control message: {e}"))
    }

    /// Serialises for sending.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip() {
        let m = ToInit::Ready {
            fingerprint: "AB:CD".into(),
            port: 443,
            notes: vec!["Setup code: 1234".into()],
        };
        assert_eq!(ToInit::decode(&m.encode()).unwrap(), m);
        let p = ToInit::decode(br#"{"type":"power","action":"poweroff"}"#).unwrap();
        assert_eq!(
            p,
            ToInit::Power {
                action: PowerAction::Poweroff
            }
        );
        assert!(ToInit::decode(b"{\"type\":\"power\",\"action\":\"explode\"}").is_err());
        assert!(ToInit::decode(b"\xff\xfe").is_err());
    }

    #[test]
    fn boot_info_tolerates_missing_and_extra_fields() {
        let b: BootInfo =
            serde_json::from_str(r#"{"version":"9","future":1,"data":{"state":"ok"}}"#).unwrap();
        assert_eq!(b.version, "9");
        assert_eq!(b.data.state, "ok");
    }
}
