//! The appliance configuration file (`cairn.toml`).
//!
//! Init reads it from the ESP (`/boot/cairn.toml`, editable on any computer before the stick is
//! plugged in) and then from the data partition (`/data/etc/cairn.toml`, written by the console),
//! the latter winning. A malformed file is reported with its line and column and ignored as a
//! whole: the defaults (or the ESP file) stay in force, so a typo never bricks the box.

use crate::cmdline::NetMode;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host name (RFC 1123 label); default `cairn`.
    pub hostname: Option<String>,
    /// Network settings.
    pub network: NetworkConfig,
    /// Appliance service settings.
    pub appliance: ApplianceConfig,
    /// Whether the file had a `[network]` table (so an explicit `mode = "dhcp"` in the data
    /// partition's file overrides a static setup in the ESP's).
    #[serde(skip)]
    pub network_given: bool,
}

/// `[network]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// `dhcp` (default), `static` or `off`.
    pub mode: NetMode,
    /// Interface to configure; default: the first wired interface.
    pub interface: Option<String>,
    /// Static address with prefix, e.g. `192.168.1.20/24`.
    pub address: Option<String>,
    /// Static default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Static resolvers.
    pub dns: Vec<Ipv4Addr>,
}

/// `[appliance]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Address the HTTPS API and console listen on; default `0.0.0.0:443`.
    pub listen: Option<String>,
    /// Log filter for the appliance (tracing env-filter syntax).
    pub log: Option<String>,
}

/// A static IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0-32.
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} needs a prefix length, e.g. 192.168.1.20/24"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length (0-32)"))?;
        Ok(Cidr { addr, prefix })
    }
}

/// A resolved static network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    /// Address and prefix.
    pub address: Cidr,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Resolvers.
    pub dns: Vec<Ipv4Addr>,
}

impl Config {
    /// Parses a file's text; the error names the file, line and column.
    pub fn parse(text: &str, origin: &str) -> Result<Config, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| describe(&e, text, origin))?;
        cfg.validate().map_err(|e| format!("{origin}: {e}"))?;
        cfg.network_given = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("network"));
        Ok(cfg)
    }

    /// Checks values that TOML types alone cannot.
    fn validate(&self) -> Result<(), String> {
        if let Some(h) = &self.hostname {
            validate_hostname(h).map_err(|e| format!("hostname: {e}"))?;
        }
        if self.network.mode == NetMode::Static {
            self.static_net()?;
        } else if let Some(a) = &self.network.address {
            a.parse::<Cidr>()
                .map_err(|e| format!("network.address: {e}"))?;
        }
        if let Some(l) = &self.appliance.listen {
            l.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("appliance.listen: {l:?} is not an address:port"))?;
        }
        Ok(())
    }

    /// The static settings; an error when `mode = "static"` lacks an address.
    pub fn static_net(&self) -> Result<StaticNet, String> {
        let addr =
            self.network.address.as_deref().ok_or(
                "network.mode = \"static\" needs network.address (e.g. \"192.168.1.20/24\")",
            )?;
        Ok(StaticNet {
            address: addr.parse().map_err(|e| format!("network.address: {e}"))?,
            gateway: self.network.gateway,
            dns: self.network.dns.clone(),
        })
    }

    /// Layers `over` on top of `self`: every field `over` sets wins.
    pub fn merged(mut self, over: Config) -> Config {
        if over.hostname.is_some() {
            self.hostname = over.hostname;
        }
        if over.network_given || over.network != NetworkConfig::default() {
            self.network = over.network;
            self.network_given = true;
        }
        if over.appliance.listen.is_some() {
            self.appliance.listen = over.appliance.listen;
        }
        if over.appliance.log.is_some() {
            self.appliance.log = over.appliance.log;
        }
        self
    }
}

/// Formats a TOML error as `origin line L, column C: message`.
fn describe(e: &toml::de::Error, text: &str, origin: &str) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{origin} line {line}, column {col}: {msg}")
        }
        None => format!("{origin}: {msg}"),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Checks an RFC 1123 host name label.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name (1-63 letters, digits or '-', not starting or ending with '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = Config::parse(
            "hostname = \"edge-1\"\n[network]\nmode = \"static\"\naddress = \"192.168.7.2/24\"\n\
             gateway = \"192.168.7.1\"\ndns = [\"192.168.7.1\"]\n[appliance]\nlisten = \"0.0.0.0:8443\"\n",
            "cairn.toml",
        )
        .unwrap();
        let s = c.static_net().unwrap();
        assert_eq!(s.address.prefix, 24);
        assert_eq!(s.gateway, Some(Ipv4Addr::new(192, 168, 7, 1)));
        assert_eq!(c.appliance.listen.as_deref(), Some("0.0.0.0:8443"));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = Config::parse(
            "hostname = \"a\"\n[network]\nmode = dhcp\n",
            "/boot/cairn.toml",
        )
        .unwrap_err();
        assert!(e.starts_with("/boot/cairn.toml line 3"), "{e}");
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors() {
        let e = Config::parse("[network]\nmod = \"dhcp\"\n", "f").unwrap_err();
        assert!(e.contains("line 2") && e.contains("mod"), "{e}");
        let e = Config::parse("[network]\nmode = \"static\"\n", "f").unwrap_err();
        assert!(e.contains("needs network.address"), "{e}");
        let e = Config::parse(
            "[network]\nmode = \"static\"\naddress = \"10.0.0.1/40\"\n",
            "f",
        )
        .unwrap_err();
        assert!(e.contains("prefix length"), "{e}");
        let e = Config::parse("hostname = \"bad_name\"\n", "f").unwrap_err();
        assert!(e.contains("host name"), "{e}");
        let e = Config::parse("[network]\ngateway = \"300.1.1.1\"\n", "f").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn data_file_overrides_esp_file() {
        let esp = Config::parse("hostname = \"a\"\n[appliance]\nlog = \"debug\"\n", "esp").unwrap();
        let data = Config::parse("hostname = \"b\"\n", "data").unwrap();
        let m = esp.merged(data);
        assert_eq!(m.hostname.as_deref(), Some("b"));
        assert_eq!(m.appliance.log.as_deref(), Some("debug"));
    }

    #[test]
    fn an_explicit_dhcp_section_overrides_a_static_esp() {
        let esp = Config::parse(
            "[network]\nmode = \"static\"\naddress = \"10.1.1.2/24\"\n",
            "esp",
        )
        .unwrap();
        let data = Config::parse("[network]\nmode = \"dhcp\"\n", "data").unwrap();
        assert_eq!(esp.clone().merged(data).network.mode, NetMode::Dhcp);
        // No [network] table in the data file: the ESP's stays.
        let data = Config::parse("hostname = \"x\"\n", "data").unwrap();
        assert_eq!(esp.merged(data).network.mode, NetMode::Static);
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("", "f").unwrap(), Config::default());
    }
}
