//! The package manifest: who published an agent, what it may do and what it may use.
//! Unknown fields and impossible limits are refused with a message naming the field.

use serde::{Deserialize, Serialize};

/// Largest linear memory an agent may ask for (the engine's pool slot size).
pub const MAX_MEMORY_MB: u32 = 256;
/// Longest wall time a task may ask for.
pub const MAX_WALL_TIME_MS: u64 = 24 * 3600 * 1000;
/// Most concurrent instances of one agent.
pub const MAX_INSTANCES: u32 = 64;

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
    /// Hosts (`name` or `name:port`) it may fetch from; refused in offline mode.
    #[serde(default)]
    pub http: Vec<String>,
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

fn valid_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = (1..=253).contains(&host.len())
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
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
        if let Some(h) = c.http.iter().find(|h| !valid_host(h)) {
            return Err(format!(
                "manifest: capabilities.http: {h:?} is not a host or host:port"
            ));
        }
        if let Some(m) = c.models.iter().find(|m| m.is_empty() || m.len() > 200) {
            return Err(format!(
                "manifest: capabilities.models: {m:?} is not a model id"
            ));
        }
        Ok(())
    }

    /// Whether `host` (lower-case, with the URL's port) is on the egress allow-list.
    pub fn allows_host(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.capabilities
            .http
            .iter()
            .any(|h| match h.rsplit_once(':') {
                Some((name, p)) => name.eq_ignore_ascii_case(host) && p.parse() == Ok(port),
                None => h.eq_ignore_ascii_case(host) && port == default_port,
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
}
