//! How the CLI reaches an appliance: `--remote URL --token T` (or `CAIRN_REMOTE`,
//! `CAIRN_TOKEN`, or the config file written by `cairn login`), and how it trusts it: the
//! server certificate is pinned by SHA-256 fingerprint — given with `--fingerprint`, or learnt
//! on first contact (printed so the operator can compare it with the console banner) and kept
//! in the config file; a later mismatch is refused.

use anyhow::{Context, Result, bail};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the appliance is and how to authenticate (global flags of `cairn`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// The appliance, e.g. `https://10.0.2.15` (default: the config file's).
    #[arg(long, global = true, env = "CAIRN_REMOTE")]
    pub remote: Option<String>,
    /// An API token (`cairn_…`, made in the console's settings or with `cairn token create`).
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Expected SHA-256 fingerprint of the appliance's certificate (shown on its console).
    #[arg(long, global = true, env = "CAIRN_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// The CLI config file (default `$XDG_CONFIG_HOME/cairn/cli.toml`).
    #[arg(long, global = true, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The CLI's config file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    /// Default appliance URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Default API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The id of the admin token `cairn login --user` minted for `remote` (reused while valid,
    /// revoked when a new one replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted: Option<String>,
    /// Pinned certificate fingerprints by appliance URL.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
}

impl RemoteArgs {
    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        if let Some(p) = &self.config {
            return p.clone();
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("cairn").join("cli.toml")
    }

    /// Reads the config file (empty when absent).
    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        }
    }

    /// Writes the config file (mode 0600: it holds a token).
    pub fn save_config(&self, cfg: &Config) -> Result<()> {
        use std::io::Write;
        let path = self.config_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        let tmp = path.with_extension("toml.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).with_context(|| tmp.display().to_string())?;
        f.write_all(toml::to_string(cfg)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
        Ok(())
    }
}

/// Normalises a fingerprint to upper-case hex pairs joined by colons.
pub fn normalize_fingerprint(fp: &str) -> Result<String> {
    let hex: String = fp
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&hex).map_err(|_| anyhow::anyhow!("a fingerprint is 64 hex digits"))?;
    if bytes.len() != 32 {
        bail!("a SHA-256 fingerprint is 64 hex digits, got {}", hex.len());
    }
    Ok(crate::tls::fingerprint_of_digest(&bytes))
}

/// A connection to one appliance's API.
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// Resolves URL, token and pin (learning the pin on first contact) and builds the client.
    pub async fn connect(args: &RemoteArgs, timeout: Duration) -> Result<Api> {
        let mut cfg = args.load_config()?;
        let base = args.remote.clone().or_else(|| cfg.remote.clone()).context(
            "no appliance given: pass --remote https://HOST[:PORT] (or run `cairn login`)",
        )?;
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            bail!("the appliance is reached over HTTPS only: use an https:// URL");
        }
        let token = args.token.clone().or_else(|| cfg.token.clone());
        let pinned = cfg.pins.get(&base).cloned();
        let pin = match (&args.fingerprint, pinned) {
            (Some(given), _) => normalize_fingerprint(given)?,
            (None, Some(p)) => p,
            (None, None) => {
                let seen = observe_fingerprint(&base, timeout).await?;
                eprintln!(
                    "first contact with {base}: pinned its certificate, SHA-256\n  {seen}\n\
                     compare it with the fingerprint on the appliance's console."
                );
                cfg.pins.insert(base.clone(), seen.clone());
                args.save_config(&cfg)?;
                seen
            }
        };
        let client = crate::tls::pinned_client(&pin, timeout).map_err(anyhow::Error::msg)?;
        Ok(Api {
            client,
            base,
            token,
        })
    }

    fn with_token(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A POST to `path` without the token (login and onboarding).
    pub fn post_anonymous(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }

    /// The appliance's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token in use, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Uses `token` for the following requests.
    pub fn set_token(&mut self, token: String) {
        self.token = Some(token);
    }

    /// A GET of `path` with `token` instead of the one in use.
    pub fn get_as(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.get(format!("{}{path}", self.base)))
    }

    /// A POST to `path`.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.post(format!("{}{path}", self.base)))
    }

    /// A PUT to `path`.
    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.put(format!("{}{path}", self.base)))
    }

    /// A DELETE of `path`.
    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.with_token(self.client.delete(format!("{}{path}", self.base)))
    }

    /// Sends a request and returns its JSON body, or the appliance's error message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let resp = self.send_raw(req).await?;
        let bytes = resp.bytes().await.unwrap_or_default();
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Sends a request and returns the successful response (to stream its body), or the
    /// appliance's error message.
    pub async fn send_raw(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            if msg.contains("pin mismatch") {
                anyhow::anyhow!(
                    "{msg}\nthe appliance's certificate is not the pinned one; if it was replaced on \
                     purpose, pass --fingerprint with the new value from its console"
                )
            } else {
                anyhow::anyhow!("reaching the appliance: {msg}")
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        let msg = body["error"]["message"].as_str().unwrap_or("no message");
        if status.as_u16() == 401 {
            bail!(
                "the appliance answered {status}: {msg}\n(pass an API token with --token or CAIRN_TOKEN)"
            );
        }
        bail!("the appliance answered {status}: {msg}");
    }
}

/// Connects once and returns the fingerprint of the certificate the server presents.
async fn observe_fingerprint(base: &str, timeout: Duration) -> Result<String> {
    let authority = base
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse::<u16>().context("port")?,
        ),
        _ => (authority.trim_matches(['[', ']']).to_string(), 443),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(crate::tls::PinVerifier::observer(
        provider.signature_verification_algorithms,
    ));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone())
        .unwrap_or_else(|_| ServerName::try_from("localhost".to_string()).expect("static name"));
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        connector.connect(name, tcp).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .context("the appliance did not answer in time")?
        .with_context(|| format!("connecting to {base}"))?;
    let der = seen.seen().context("the server presented no certificate")?;
    Ok(crate::tls::fingerprint(&der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let lower = "ab".repeat(32);
        let n = normalize_fingerprint(&lower).unwrap();
        assert_eq!(n.len(), 95);
        assert!(n.starts_with("AB:AB:"));
        assert_eq!(normalize_fingerprint(&n).unwrap(), n);
        assert!(normalize_fingerprint("abcd").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn config_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let args = RemoteArgs {
            config: Some(dir.path().join("c/cli.toml")),
            ..Default::default()
        };
        let mut cfg = args.load_config().unwrap();
        assert!(cfg.pins.is_empty());
        cfg.token = Some("cairn_x_y".into());
        cfg.pins.insert("https://h".into(), "AA".into());
        args.save_config(&cfg).unwrap();
        let back = args.load_config().unwrap();
        assert_eq!(back.token.as_deref(), Some("cairn_x_y"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(args.config_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
