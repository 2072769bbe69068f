//! `cairn agent …`: publisher keys, signing, trust and deployment to an appliance over its
//! HTTPS API (the server certificate pinned by the fingerprint its console banner shows).

use anyhow::{Context, Result, bail};
use cairn_agents::package::{Package, SigningKey};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;

/// Where an appliance is and how to trust it.
#[derive(clap::Args, Debug)]
pub struct Remote {
    /// The appliance, e.g. `https://10.0.2.15:443`.
    #[arg(long)]
    pub remote: String,
    /// SHA-256 fingerprint of its TLS certificate (shown on its console).
    #[arg(long)]
    pub fingerprint: String,
}

/// Agent commands.
#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Makes a publisher signing key (file mode 0600) and prints its public key.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Packages and signs a component with its manifest.
    Sign {
        /// The signing key from `keygen`.
        #[arg(long)]
        key: PathBuf,
        /// `manifest.toml`; its `publisher` must be the key's public key.
        #[arg(long)]
        manifest: PathBuf,
        /// The component (`.wasm`, built for wasm32-wasip2).
        #[arg(long)]
        component: PathBuf,
        /// The package to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a package's structure, manifest and signature, and prints what it asks for.
    Inspect {
        /// The package.
        package: PathBuf,
    },
    /// Adds a publisher key to an appliance's trust store.
    Trust {
        #[command(flatten)]
        remote: Remote,
        /// The publisher's public key (hex).
        #[arg(long)]
        key: String,
        /// A name for people.
        #[arg(long)]
        name: String,
    },
    /// Installs (or upgrades) a signed package on an appliance and starts it.
    Deploy {
        #[command(flatten)]
        remote: Remote,
        /// The package.
        package: PathBuf,
        /// Install without starting.
        #[arg(long)]
        no_start: bool,
    },
}

async fn send(req: reqwest::RequestBuilder) -> Result<serde_json::Value> {
    let resp = req.send().await.context("reaching the appliance")?;
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("the appliance answered {status}: {msg}");
    }
    Ok(body)
}

/// Runs an agent command.
pub fn run(cmd: AgentCommand) -> Result<()> {
    match cmd {
        AgentCommand::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; refusing to overwrite a key", out.display());
            }
            let key = SigningKey::generate().map_err(anyhow::Error::msg)?;
            write_private(&out, key.to_file_text().as_bytes())?;
            println!("{}", key.public_hex());
            Ok(())
        }
        AgentCommand::Sign {
            key,
            manifest,
            component,
            out,
        } => {
            let key = SigningKey::from_file_text(
                &std::fs::read_to_string(&key).with_context(|| key.display().to_string())?,
            )
            .map_err(anyhow::Error::msg)?;
            let manifest = std::fs::read_to_string(&manifest)
                .with_context(|| manifest.display().to_string())?;
            let wasm =
                std::fs::read(&component).with_context(|| component.display().to_string())?;
            let package = key.sign(&manifest, wasm)?;
            std::fs::write(&out, package.to_bytes()).with_context(|| out.display().to_string())?;
            println!(
                "{} {} signed by {} ({} bytes)",
                package.manifest.name,
                package.manifest.version,
                key.public_hex(),
                package.component.len()
            );
            Ok(())
        }
        AgentCommand::Inspect { package } => {
            let bytes = std::fs::read(&package).with_context(|| package.display().to_string())?;
            let p = Package::parse(&bytes)?;
            let signer = p.verify_signature()?;
            println!("{}", serde_json::to_string_pretty(&p.manifest)?);
            println!(
                "component sha256 {}, signature by {signer} is valid",
                p.component_sha256()
            );
            Ok(())
        }
        AgentCommand::Trust { remote, key, name } => runtime()?.block_on(async {
            let client =
                crate::router::remote::pinned_client(&remote.fingerprint, Duration::from_secs(30))
                    .map_err(anyhow::Error::msg)?;
            let url = format!("{}/api/v1/trust", remote.remote.trim_end_matches('/'));
            let v = send(
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(serde_json::json!({"key": key, "name": name}).to_string()),
            )
            .await?;
            println!(
                "trusted {} ({})",
                v["key"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            );
            Ok(())
        }),
        AgentCommand::Deploy {
            remote,
            package,
            no_start,
        } => runtime()?.block_on(async {
            let bytes = std::fs::read(&package).with_context(|| package.display().to_string())?;
            Package::parse(&bytes)?.verify_signature()?;
            let client =
                crate::router::remote::pinned_client(&remote.fingerprint, Duration::from_secs(300))
                    .map_err(anyhow::Error::msg)?;
            let url = format!(
                "{}/api/v1/agents?start={}",
                remote.remote.trim_end_matches('/'),
                !no_start
            );
            let v = send(
                client
                    .post(url)
                    .header("content-type", "application/octet-stream")
                    .body(bytes),
            )
            .await?;
            println!(
                "{} {} installed, {}",
                v["name"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?")
            );
            Ok(())
        }),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| path.display().to_string())?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
