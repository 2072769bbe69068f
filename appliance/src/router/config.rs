//! The router's configuration: policies, remote providers and budgets, with the validation
//! that every REST input goes through (each error names the field).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// How the router picks a target when the call does not name a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Local models only; no remote call ever (the default: the appliance is air-gapped).
    #[default]
    LocalOnly,
    /// Local models first, remote providers when no local model can serve.
    PreferLocal,
    /// The lowest estimated cost first (local models cost nothing).
    Cheapest,
    /// The lowest measured latency first (unmeasured targets are tried first, to measure them).
    Fastest,
    /// The highest learned judge score for the call's task kind first.
    BestQuality,
}

impl Policy {
    /// Every policy, in documentation order.
    pub const ALL: [Policy; 5] = [
        Policy::LocalOnly,
        Policy::PreferLocal,
        Policy::Cheapest,
        Policy::Fastest,
        Policy::BestQuality,
    ];

    /// The policy's name (`local-only`, …).
    pub fn name(self) -> &'static str {
        match self {
            Policy::LocalOnly => "local-only",
            Policy::PreferLocal => "prefer-local",
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
            Policy::BestQuality => "best-quality",
        }
    }

    /// Parses a policy name.
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s.trim())
    }

    /// How far a call's data may travel under this policy: 0 never off the appliance
    /// (`local-only`), 1 off it only when no local model serves (`prefer-local`), 2 wherever
    /// the order puts a remote target first (`cheapest`, `fastest`, `best-quality`).
    pub fn reach(self) -> u8 {
        match self {
            Policy::LocalOnly => 0,
            Policy::PreferLocal => 1,
            Policy::Cheapest | Policy::Fastest | Policy::BestQuality => 2,
        }
    }

    /// Whether a call may choose this policy when `ceiling` is the configured one: a call may
    /// narrow the configured policy, never widen it.
    pub fn within(self, ceiling: Policy) -> bool {
        self.reach() <= ceiling.reach()
    }
}

/// The wire protocol of a remote provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible (`{base}/chat/completions`, `{base}/embeddings`): OpenAI, Ollama,
    /// vLLM, llama.cpp's server, another Cairn.
    Openai,
    /// Anthropic's Messages API (`{base}/v1/messages`).
    Anthropic,
}

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Chat completions.
    #[default]
    Chat,
    /// Embeddings.
    Embedding,
}

impl ModelKind {
    /// `chat` or `embedding`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        }
    }
}

/// A model a provider serves, with its prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteModel {
    /// The provider's model name.
    pub id: String,
    /// Chat or embedding.
    #[serde(default)]
    pub kind: ModelKind,
    /// US dollars per 1000 prompt (input) tokens.
    #[serde(default)]
    pub input_per_1k_usd: f64,
    /// US dollars per 1000 completion (output) tokens.
    #[serde(default)]
    pub output_per_1k_usd: f64,
}

impl RemoteModel {
    /// The cost of a call with these token counts.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input_per_1k_usd + completion as f64 * self.output_per_1k_usd)
            / 1000.0
    }
}

/// A remote provider as stored and shown (never with its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// Name; remote models are called `name/model`.
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL (`https://api.example/v1` for OpenAI-compatible, the host for Anthropic).
    pub base_url: String,
    /// The models it serves.
    pub models: Vec<RemoteModel>,
    /// Extra trusted CA certificates (PEM), besides the public web roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// SHA-256 of the server's leaf certificate (hex, colons allowed); when set it is the
    /// whole trust decision (a self-signed appliance certificate works).
    #[serde(default)]
    pub tls_sha256: Option<String>,
    /// Whether the router may use it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Per-attempt time limit in milliseconds (a stream: until its first byte and between bytes).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Retries of one call on this provider after a transient failure.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one probe call is let through.
    #[serde(default = "default_cooldown")]
    pub breaker_cooldown_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    60_000
}
fn default_retries() -> u32 {
    2
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_cooldown() -> u64 {
    30_000
}

impl ProviderConfig {
    /// The model called `id`.
    pub fn model(&self, id: &str) -> Option<&RemoteModel> {
        self.models.iter().find(|m| m.id == id)
    }
}

/// Token and cost limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Prompt plus completion tokens per clock hour (UTC).
    #[serde(default)]
    pub tokens_per_hour: Option<u64>,
    /// US dollars per day (UTC).
    #[serde(default)]
    pub cost_per_day_usd: Option<f64>,
}

/// The global budget and per-agent budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    /// Every call together.
    #[serde(default)]
    pub global: Budget,
    /// Calls of one agent.
    #[serde(default)]
    pub agents: BTreeMap<String, Budget>,
}

/// Router-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterSettings {
    /// Policy of calls that do not choose one.
    #[serde(default)]
    pub policy: Policy,
    /// When set, every remote target is ineligible whatever the policy.
    #[serde(default)]
    pub offline: bool,
    /// Limits checked before each call.
    #[serde(default)]
    pub budgets: Budgets,
}

/// A provider as the REST API receives it: the configuration plus the write-only key.
#[derive(Debug, Clone)]
pub struct ProviderInput {
    /// The configuration.
    pub config: ProviderConfig,
    /// `Some("")` removes the key, `None` keeps the current one.
    pub key: Option<String>,
}

/// An invalid input, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field (`models[1].input_per_1k_usd`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Takes field `name` out of `map`, deserialising it with an error that names it.
fn take<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<T>, Invalid> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| invalid(format!("{prefix}{name}"), e.to_string())),
    }
}

fn object(v: Value, field: &str) -> Result<Map<String, Value>, Invalid> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(invalid(field, "must be a JSON object")),
    }
}

fn no_more(map: Map<String, Value>, prefix: &str) -> Result<(), Invalid> {
    match map.keys().next() {
        Some(k) => Err(invalid(format!("{prefix}{k}"), "unknown field")),
        None => Ok(()),
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, Invalid> {
    v.ok_or_else(|| invalid(field, "is required"))
}

/// Checks a name (provider or agent): 1-64 of `a-z A-Z 0-9 . _ -`.
pub fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-64 letters, digits, '.', '_' or '-'",
        ))
    }
}

fn price(field: String, v: f64) -> Result<f64, Invalid> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(field, "must be a finite number >= 0"))
    }
}

/// Normalises a SHA-256 pin to 64 lower-case hex digits.
pub fn normalise_pin(pin: &str) -> Option<String> {
    let hex: String = pin
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// Parses and validates a provider body. `name` is the path's name on an update (the body may
/// repeat it but not change it).
pub fn parse_provider(body: Value, name: Option<&str>) -> Result<ProviderInput, Invalid> {
    let mut m = object(body, "body")?;
    let body_name: Option<String> = take(&mut m, "", "name")?;
    let name = match (name, body_name) {
        (Some(path), Some(b)) if b != path => {
            return Err(invalid("name", "a provider cannot be renamed"));
        }
        (Some(path), _) => path.to_string(),
        (None, b) => required(b, "name")?,
    };
    check_name("name", &name)?;
    if name == "local" {
        return Err(invalid("name", "\"local\" names the local models"));
    }
    let kind: ProviderKind = required(take(&mut m, "", "kind")?, "kind")?;
    let base_url: String = required(take(&mut m, "", "base_url")?, "base_url")?;
    let base_url = check_url(&base_url)?;
    let models_v: Vec<Value> = required(take(&mut m, "", "models")?, "models")?;
    if models_v.is_empty() || models_v.len() > 256 {
        return Err(invalid("models", "must list 1-256 models"));
    }
    let mut models = Vec::new();
    for (i, v) in models_v.into_iter().enumerate() {
        let p = format!("models[{i}].");
        let mut mm = object(v, &format!("models[{i}]"))?;
        let id: String = required(take(&mut mm, &p, "id")?, &format!("{p}id"))?;
        if id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            return Err(invalid(
                format!("{p}id"),
                "must be 1-200 printable characters",
            ));
        }
        let mk: ModelKind = take(&mut mm, &p, "kind")?.unwrap_or_default();
        if kind == ProviderKind::Anthropic && mk == ModelKind::Embedding {
            return Err(invalid(
                format!("{p}kind"),
                "Anthropic's API has no embedding models",
            ));
        }
        let input = price(
            format!("{p}input_per_1k_usd"),
            take(&mut mm, &p, "input_per_1k_usd")?.unwrap_or(0.0),
        )?;
        let output = price(
            format!("{p}output_per_1k_usd"),
            take(&mut mm, &p, "output_per_1k_usd")?.unwrap_or(0.0),
        )?;
        no_more(mm, &p)?;
        if models.iter().any(|x: &RemoteModel| x.id == id) {
            return Err(invalid(format!("{p}id"), format!("{id:?} is listed twice")));
        }
        models.push(RemoteModel {
            id,
            kind: mk,
            input_per_1k_usd: input,
            output_per_1k_usd: output,
        });
    }
    let ca_pem: Option<String> = take(&mut m, "", "ca_pem")?;
    if let Some(pem) = &ca_pem {
        super::remote::parse_pem_certs(pem).map_err(|e| invalid("ca_pem", e))?;
    }
    let tls_sha256: Option<String> = take(&mut m, "", "tls_sha256")?;
    let tls_sha256 = match tls_sha256 {
        None => None,
        Some(p) => Some(normalise_pin(&p).ok_or_else(|| {
            invalid(
                "tls_sha256",
                "must be a SHA-256 digest: 64 hex digits, colons allowed",
            )
        })?),
    };
    let enabled = take(&mut m, "", "enabled")?.unwrap_or(true);
    let timeout_ms: u64 = take(&mut m, "", "timeout_ms")?.unwrap_or(default_timeout());
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(invalid("timeout_ms", "must be 1-600000"));
    }
    let max_retries: u32 = take(&mut m, "", "max_retries")?.unwrap_or(default_retries());
    if max_retries > 5 {
        return Err(invalid("max_retries", "must be 0-5"));
    }
    let breaker_failures: u32 =
        take(&mut m, "", "breaker_failures")?.unwrap_or(default_breaker_failures());
    if !(1..=1000).contains(&breaker_failures) {
        return Err(invalid("breaker_failures", "must be 1-1000"));
    }
    let breaker_cooldown_ms: u64 =
        take(&mut m, "", "breaker_cooldown_ms")?.unwrap_or(default_cooldown());
    if !(100..=86_400_000).contains(&breaker_cooldown_ms) {
        return Err(invalid("breaker_cooldown_ms", "must be 100-86400000"));
    }
    let key: Option<String> = take(&mut m, "", "key")?;
    if let Some(k) = &key
        && (k.len() > 4096 || k.chars().any(char::is_control))
    {
        return Err(invalid(
            "key",
            "must be at most 4096 characters without control characters",
        ));
    }
    if m.contains_key("key_set") {
        m.remove("key_set");
    }
    no_more(m, "")?;
    Ok(ProviderInput {
        config: ProviderConfig {
            name,
            kind,
            base_url,
            models,
            ca_pem,
            tls_sha256,
            enabled,
            timeout_ms,
            max_retries,
            breaker_failures,
            breaker_cooldown_ms,
        },
        key,
    })
}

fn check_url(url: &str) -> Result<String, Invalid> {
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| invalid("base_url", format!("not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(invalid("base_url", "must be an http:// or https:// URL"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(invalid("base_url", "must name a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid(
            "base_url",
            "must not carry credentials (use the write-only key)",
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(invalid("base_url", "must not have a query or fragment"));
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

fn parse_budget(v: Value, prefix: &str) -> Result<Budget, Invalid> {
    let mut m = object(v, prefix.trim_end_matches('.'))?;
    let tokens_per_hour: Option<u64> = take(&mut m, prefix, "tokens_per_hour")?;
    let cost_per_day_usd: Option<f64> = take(&mut m, prefix, "cost_per_day_usd")?;
    if let Some(c) = cost_per_day_usd {
        price(format!("{prefix}cost_per_day_usd"), c)?;
    }
    no_more(m, prefix)?;
    Ok(Budget {
        tokens_per_hour,
        cost_per_day_usd,
    })
}

/// Parses and validates a settings body; fields left out keep their `current` value.
pub fn parse_settings(body: Value, current: &RouterSettings) -> Result<RouterSettings, Invalid> {
    let mut m = object(body, "body")?;
    let mut out = current.clone();
    if let Some(p) = take::<String>(&mut m, "", "policy")? {
        out.policy = Policy::parse(&p).ok_or_else(|| {
            invalid(
                "policy",
                format!(
                    "unknown policy {p:?} (one of {})",
                    Policy::ALL.map(Policy::name).join(", ")
                ),
            )
        })?;
    }
    if let Some(o) = take(&mut m, "", "offline")? {
        out.offline = o;
    }
    if let Some(b) = m.remove("budgets") {
        let mut bm = object(b, "budgets")?;
        if let Some(g) = bm.remove("global") {
            out.budgets.global = parse_budget(g, "budgets.global.")?;
        }
        if let Some(a) = bm.remove("agents") {
            let am = object(a, "budgets.agents")?;
            let mut agents = BTreeMap::new();
            for (name, v) in am {
                check_name(&format!("budgets.agents.{name}"), &name)?;
                let b = parse_budget(v, &format!("budgets.agents.{name}."))?;
                agents.insert(name, b);
            }
            out.budgets.agents = agents;
        }
        no_more(bm, "budgets.")?;
    }
    no_more(m, "")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"name": "cloud", "kind": "openai", "base_url": "https://api.example/v1/",
               "models": [{"id": "m1", "input_per_1k_usd": 0.5, "output_per_1k_usd": 1.5}],
               "key": "sk-1"})
    }

    #[test]
    fn a_good_provider_parses_with_defaults() {
        let p = parse_provider(good(), None).unwrap();
        assert_eq!(p.config.base_url, "https://api.example/v1");
        assert_eq!(p.config.timeout_ms, 60_000);
        assert!(p.config.enabled);
        assert_eq!(p.key.as_deref(), Some("sk-1"));
        assert!((p.config.models[0].cost(1000, 2000) - 3.5).abs() < 1e-9);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"name": "a b"}), "name"),
            (json!({"name": "local"}), "name"),
            (json!({"kind": "grpc"}), "kind"),
            (json!({"base_url": "ftp://x"}), "base_url"),
            (json!({"base_url": "https://u:p@x"}), "base_url"),
            (json!({"models": []}), "models"),
            (
                json!({"models": [{"id": "m", "input_per_1k_usd": -1}]}),
                "models[0].input_per_1k_usd",
            ),
            (
                json!({"models": [{"id": "m", "colour": 1}]}),
                "models[0].colour",
            ),
            (json!({"tls_sha256": "abc"}), "tls_sha256"),
            (json!({"ca_pem": "not pem"}), "ca_pem"),
            (json!({"timeout_ms": 0}), "timeout_ms"),
            (json!({"timeout_ms": "fast"}), "timeout_ms"),
            (json!({"max_retries": 9}), "max_retries"),
            (json!({"surprise": true}), "surprise"),
        ];
        for (patch, field) in cases {
            let mut v = good();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = parse_provider(v.clone(), None).expect_err(&v.to_string());
            assert_eq!(e.field, field, "{v}: {e}");
        }
        let mut v = good();
        v.as_object_mut().unwrap().remove("base_url");
        assert_eq!(parse_provider(v, None).unwrap_err().field, "base_url");
    }

    #[test]
    fn settings_validate_and_keep_what_is_left_out() {
        let cur = RouterSettings::default();
        let s = parse_settings(
            json!({"policy": "cheapest", "budgets": {"agents": {"bob": {"tokens_per_hour": 10}}}}),
            &cur,
        )
        .unwrap();
        assert_eq!(s.policy, Policy::Cheapest);
        assert!(!s.offline);
        assert_eq!(s.budgets.agents["bob"].tokens_per_hour, Some(10));
        let e = parse_settings(json!({"policy": "random"}), &cur).unwrap_err();
        assert_eq!(e.field, "policy");
        let e = parse_settings(
            json!({"budgets": {"global": {"cost_per_day_usd": -2}}}),
            &cur,
        )
        .unwrap_err();
        assert_eq!(e.field, "budgets.global.cost_per_day_usd");
        let pin = vec!["AB"; 32].join(":");
        assert_eq!(normalise_pin(&pin), Some("ab".repeat(32)));
        assert_eq!(normalise_pin(&pin[3..]), None);
    }
}
