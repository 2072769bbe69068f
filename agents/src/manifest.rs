//! The package manifest: who published an agent, what it may do and what it may use.
//! Unknown fields and impossible limits are refused with a message naming the field.

use serde::{Deserialize, Serialize};

/// Largest linear memory an agent may ask for (the engine's pool slot size).
pub const MAX_MEMORY_MB: u32 = 256;
/// Longest wall time a task may ask for.
pub const MAX_WALL_TIME_MS: u64 = 24 * 3600 * 1000;
/// Most concurrent instances of one agent.
pub const MAX_INSTANCES: u32 = 64;
/// Largest key-value store (keys plus values) an agent may ask for.
pub const MAX_KV_BYTES: u64 = 256 << 20;
/// Largest private `/data` directory an agent may ask for.
pub const MAX_FILES_BYTES: u64 = 1 << 30;

/// A package manifest (`manifest.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Agent name: 1–64 of `a-z`, `0-9`, `-`, starting with a letter.
    pub name: String,
    /// Version, `MAJOR.MINOR.PATCH`.
    pub version: String,
    /// The publisher's Ed25519 public key, 64 hex digits.
    pub publisher: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// What the agent may call.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// What the agent may use.
    #[serde(default)]
    pub limits: Limits,
}

/// Granted capabilities; everything absent is denied. Log, clock and random are always granted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Chat and completion through the router.
    #[serde(default)]
    pub llm: bool,
    /// Embeddings through the router.
    #[serde(default)]
    pub embed: bool,
    /// Models the agent may name; empty lets the router's policy choose any.
    #[serde(default)]
    pub models: Vec<String>,
    /// Memory namespaces the agent may read and write (`agent:NAME`, `shared`, `shared:X`).
    #[serde(default)]
    pub memory: Vec<String>,
    /// Agents it may message or give subtasks to.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Hosts (`name`, `name:port`; with `http_ip_literals` also `1.2.3.4[:port]` and
    /// `[2001:db8::1][:port]`) it may fetch from over https; refused in offline mode.
    #[serde(default)]
    pub http: Vec<String>,
    /// Also allow plain `http://` URLs to the same hosts (default: https only).
    #[serde(default)]
    pub http_plaintext: bool,
    /// Allow IP literals in `http` and in URLs (public addresses only; loopback, private,
    /// link-local and other non-public ranges are never reachable).
    #[serde(default)]
    pub http_ip_literals: bool,
    /// Its private key-value store.
    #[serde(default)]
    pub kv: bool,
    /// A private directory visible to WASI as `/data`.
    #[serde(default)]
    pub files: bool,
}

/// Resource limits, enforced by the runtime.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Fuel (≈ wasm instructions) per task.
    #[serde(default = "default_fuel")]
    pub fuel_per_task: u64,
    /// Wall-clock time per task, milliseconds.
    #[serde(default = "default_wall")]
    pub wall_time_ms: u64,
    /// Linear memory, MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// Concurrent instances (tasks running at once).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Host calls per task.
    #[serde(default = "default_host_calls")]
    pub host_calls_per_task: u64,
    /// LLM tokens per hour (prompt + completion); 0 = no LLM use.
    #[serde(default = "default_tokens")]
    pub tokens_per_hour: u64,
    /// Spend on remote models per day, US dollars.
    #[serde(default)]
    pub cost_per_day_usd: f64,
    /// Bytes (keys plus values) the private key-value store may hold, at most [`MAX_KV_BYTES`].
    #[serde(default = "default_kv_bytes")]
    pub kv_bytes: u64,
    /// Bytes the private `/data` directory may hold, at most [`MAX_FILES_BYTES`].
    #[serde(default = "default_files_bytes")]
    pub files_bytes: u64,
}

fn default_fuel() -> u64 {
    10_000_000_000
}
fn default_wall() -> u64 {
    120_000
}
fn default_memory() -> u32 {
    64
}
fn default_instances() -> u32 {
    2
}
fn default_host_calls() -> u64 {
    100_000
}
fn default_tokens() -> u64 {
    200_000
}
fn default_kv_bytes() -> u64 {
    16 << 20
}
fn default_files_bytes() -> u64 {
    64 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_task: default_fuel(),
            wall_time_ms: default_wall(),
            memory_mb: default_memory(),
            instances: default_instances(),
            host_calls_per_task: default_host_calls(),
            tokens_per_hour: default_tokens(),
            cost_per_day_usd: 0.0,
            kv_bytes: default_kv_bytes(),
            files_bytes: default_files_bytes(),
        }
    }
}

/// Whether `s` is a valid agent name.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.chars().all(|c| c.is_ascii_digit()))
}

/// Splits an allow-list entry into host and port (`[v6]:port` keeps the brackets off).
fn split_entry(s: &str) -> (&str, Option<&str>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (h, tail.strip_prefix(':'));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

/// Checks an allow-list entry; the error says why it is refused.
fn check_host(s: &str, ip_literals: bool) -> Result<(), String> {
    let (host, port) = split_entry(s);
    if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p > 0)) {
        return Err(format!("{s:?} is not a host or host:port"));
    }
    if s.starts_with('[') && !s.contains(']') {
        return Err(format!("{s:?} is not a host or host:port"));
    }
    if crate::egress::looks_like_ip(host) {
        let Some(ip) = crate::egress::parse_ip(host) else {
            return Err(format!("{s:?} is not a valid IP address"));
        };
        if !ip_literals {
            return Err(format!(
                "{s:?} is an IP address; set capabilities.http_ip_literals = true to allow IP literals"
            ));
        }
        if !crate::egress::is_public(ip) {
            return Err(format!(
                "{s:?} is not a public address (loopback, private, link-local and other \
                 non-public ranges are never reachable by agents)"
            ));
        }
        return Ok(());
    }
    let host_ok = (1..=253).contains(&host.len())
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !host_ok {
        return Err(format!("{s:?} is not a host or host:port"));
    }
    Ok(())
}

fn valid_namespace(s: &str) -> bool {
    let rest = |r: &str| {
        (1..=64).contains(&r.len())
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    s == "shared"
        || ["shared:", "agent:", "user:"]
            .iter()
            .any(|p| s.strip_prefix(p).is_some_and(rest))
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| format!("manifest: {}", e.message()))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "manifest: name {:?} must be 1-64 of a-z, 0-9, '-', starting with a letter",
                self.name
            ));
        }
        if !valid_version(&self.version) {
            return Err(format!(
                "manifest: version {:?} must be MAJOR.MINOR.PATCH",
                self.version
            ));
        }
        if self.publisher.len() != 64 || hex::decode(&self.publisher).is_err() {
            return Err("manifest: publisher must be an Ed25519 public key, 64 hex digits".into());
        }
        if self.description.len() > 1024 {
            return Err("manifest: description is longer than 1024 bytes".into());
        }
        let l = &self.limits;
        if l.fuel_per_task == 0 {
            return Err("manifest: limits.fuel_per_task must be at least 1".into());
        }
        if l.wall_time_ms == 0 || l.wall_time_ms > MAX_WALL_TIME_MS {
            return Err(format!(
                "manifest: limits.wall_time_ms must be 1..={MAX_WALL_TIME_MS}"
            ));
        }
        if l.memory_mb == 0 || l.memory_mb > MAX_MEMORY_MB {
            return Err(format!(
                "manifest: limits.memory_mb must be 1..={MAX_MEMORY_MB}"
            ));
        }
        if l.instances == 0 || l.instances > MAX_INSTANCES {
            return Err(format!(
                "manifest: limits.instances must be 1..={MAX_INSTANCES}"
            ));
        }
        if l.host_calls_per_task == 0 {
            return Err("manifest: limits.host_calls_per_task must be at least 1".into());
        }
        if !l.cost_per_day_usd.is_finite() || l.cost_per_day_usd < 0.0 {
            return Err("manifest: limits.cost_per_day_usd must be a number ≥ 0".into());
        }
        if l.kv_bytes == 0 || l.kv_bytes > MAX_KV_BYTES {
            return Err(format!(
                "manifest: limits.kv_bytes must be 1..={MAX_KV_BYTES}"
            ));
        }
        if l.files_bytes == 0 || l.files_bytes > MAX_FILES_BYTES {
            return Err(format!(
                "manifest: limits.files_bytes must be 1..={MAX_FILES_BYTES}"
            ));
        }
        let c = &self.capabilities;
        if let Some(ns) = c.memory.iter().find(|n| !valid_namespace(n)) {
            return Err(format!(
                "manifest: capabilities.memory: {ns:?} is not a namespace (shared, shared:X, agent:X, user:X)"
            ));
        }
        if let Some(a) = c.agents.iter().find(|a| !valid_name(a)) {
            return Err(format!(
                "manifest: capabilities.agents: {a:?} is not an agent name"
            ));
        }
        for h in &c.http {
            check_host(h, c.http_ip_literals)
                .map_err(|e| format!("manifest: capabilities.http: {e}"))?;
        }
        if let Some(m) = c.models.iter().find(|m| m.is_empty() || m.len() > 200) {
            return Err(format!(
                "manifest: capabilities.models: {m:?} is not a model id"
            ));
        }
        Ok(())
    }

    /// Whether `host` (lower-case, IPv6 without brackets, with the URL's port) is on the
    /// egress allow-list. IP literals match by address (any notation), and only when the
    /// manifest opts in to them and the address is public.
    pub fn allows_host(&self, host: &str, port: u16, default_port: u16) -> bool {
        let literal = crate::egress::looks_like_ip(host);
        let ip = if literal {
            match crate::egress::parse_ip(host) {
                Some(ip) if self.capabilities.http_ip_literals && crate::egress::is_public(ip) => {
                    Some(ip)
                }
                _ => return false,
            }
        } else {
            None
        };
        self.capabilities.http.iter().any(|h| {
            let (name, p) = split_entry(h);
            let port_ok = match p {
                Some(p) => p.parse() == Ok(port),
                None => port == default_port,
            };
            let host_ok = match ip {
                Some(ip) => crate::egress::parse_ip(name) == Some(ip),
                None => !crate::egress::looks_like_ip(name) && name.eq_ignore_ascii_case(host),
            };
            port_ok && host_ok
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn base() -> String {
        format!("name = \"echo\"\nversion = \"0.1.0\"\npublisher = \"{KEY}\"\n")
    }

    #[test]
    fn minimal_manifest_denies_everything_optional() {
        let m = Manifest::parse(&base()).unwrap();
        assert!(!m.capabilities.llm && m.capabilities.memory.is_empty() && !m.capabilities.kv);
        assert_eq!(m.limits, Limits::default());
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = Manifest::parse(&format!("{}colour = \"red\"\n", base())).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = Manifest::parse(&format!("{}[limits]\nfuel = 3\n", base())).unwrap_err();
        assert!(e.contains("fuel"), "{e}");
    }

    #[test]
    fn impossible_limits_are_refused() {
        for (field, value) in [
            ("memory_mb", "0"),
            ("memory_mb", "100000"),
            ("instances", "0"),
            ("wall_time_ms", "0"),
            ("fuel_per_task", "0"),
            ("cost_per_day_usd", "-1.0"),
        ] {
            let e =
                Manifest::parse(&format!("{}[limits]\n{field} = {value}\n", base())).unwrap_err();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn bad_names_hosts_and_namespaces_are_refused() {
        let bad_name = base().replace("\"echo\"", "\"Echo!\"");
        assert!(Manifest::parse(&bad_name).unwrap_err().contains("name"));
        let e =
            Manifest::parse(&format!("{}[capabilities]\nhttp = [\"a b\"]\n", base())).unwrap_err();
        assert!(e.contains("capabilities.http"), "{e}");
        let e = Manifest::parse(&format!("{}[capabilities]\nmemory = [\"root\"]\n", base()))
            .unwrap_err();
        assert!(e.contains("capabilities.memory"), "{e}");
    }

    #[test]
    fn allow_list_matches_host_and_port() {
        let m = Manifest::parse(&format!(
            "{}[capabilities]\nhttp = [\"docs.local\", \"api.local:8443\"]\n",
            base()
        ))
        .unwrap();
        assert!(m.allows_host("docs.local", 443, 443));
        assert!(m.allows_host("DOCS.local", 80, 80));
        assert!(!m.allows_host("docs.local", 8080, 443));
        assert!(m.allows_host("api.local", 8443, 443));
        assert!(!m.allows_host("api.local", 443, 443));
        assert!(!m.allows_host("evil.local", 443, 443));
    }

    #[test]
    fn ip_literals_need_the_opt_in_and_are_never_private() {
        let caps = |extra: &str, hosts: &str| {
            Manifest::parse(&format!(
                "{}[capabilities]\n{extra}http = [{hosts}]\n",
                base()
            ))
        };
        // Without the opt-in, any notation of an address is refused.
        for h in ["\"1.1.1.1\"", "\"16843009\"", "\"[2606:4700::1111]:443\""] {
            let e = caps("", h).unwrap_err();
            assert!(e.contains("http_ip_literals"), "{h}: {e}");
        }
        // With it, non-public addresses are still refused.
        for h in [
            "\"127.0.0.1\"",
            "\"2130706433\"",
            "\"0x7f.1\"",
            "\"169.254.169.254\"",
            "\"10.0.0.1:8080\"",
            "\"[::1]\"",
            "\"[::ffff:127.0.0.1]:443\"",
        ] {
            let e = caps("http_ip_literals = true\n", h).unwrap_err();
            assert!(e.contains("not a public address"), "{h}: {e}");
        }
        let m = caps(
            "http_ip_literals = true\n",
            "\"1.1.1.1\", \"[2606:4700::1111]:8443\"",
        )
        .unwrap();
        assert!(m.allows_host("1.1.1.1", 443, 443));
        assert!(
            m.allows_host("16843009", 443, 443),
            "decimal spelling of 1.1.1.1"
        );
        assert!(m.allows_host("2606:4700::1111", 8443, 443));
        assert!(!m.allows_host("2606:4700::1111", 443, 443));
        assert!(!m.allows_host("127.0.0.1", 443, 443));
        // A host name entry never matches a literal and vice versa.
        let m = caps("", "\"example.com\"").unwrap();
        assert!(!m.allows_host("93.184.215.14", 443, 443));
    }
}
