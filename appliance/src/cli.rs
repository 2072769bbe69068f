//! `cairn agent …`: publisher keys, signing, trust and deployment to an appliance over its
//! HTTPS API (see [`crate::remote`] for how the appliance is reached and trusted).

use anyhow::{Context, Result, bail};
use cairn_agents::package::{Package, SigningKey};
use clap::Subcommand;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::remote::{Api, RemoteArgs};

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
        /// The publisher's public key (hex).
        #[arg(long)]
        key: String,
        /// A name for people.
        #[arg(long)]
        name: String,
    },
    /// Installed agents with their state.
    List,
    /// Starts, stops, pauses, resumes, kills or checkpoints an agent.
    Control {
        /// start, stop, pause, resume, kill or checkpoint.
        action: String,
        /// The agent.
        name: String,
    },
    /// Runs a task and prints its result.
    Run {
        /// The agent.
        name: String,
        /// The task's input.
        input: String,
    },
    /// Recent runs.
    Runs {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Installs (or upgrades) a signed package on an appliance and starts it.
    Deploy {
        /// The package.
        package: PathBuf,
        /// Install without starting.
        #[arg(long)]
        no_start: bool,
        /// Accept a lower version than the installed one (needs an admin token or session).
        #[arg(long)]
        force: bool,
    },
}

/// Runs an agent command.
pub fn run(cmd: AgentCommand, remote: &RemoteArgs) -> Result<()> {
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
        AgentCommand::Trust { key, name } => runtime()?.block_on(async {
            let api = Api::connect(remote, Duration::from_secs(30)).await?;
            let v = api
                .send(
                    api.post("/api/v1/trust")
                        .json(&serde_json::json!({"key": key, "name": name})),
                )
                .await?;
            println!(
                "trusted {} ({})",
                v["key"].as_str().unwrap_or(""),
                v["name"].as_str().unwrap_or("")
            );
            Ok(())
        }),
        AgentCommand::List => runtime()?.block_on(async {
            let api = Api::connect(remote, Duration::from_secs(30)).await?;
            let v = api.send(api.get("/api/v1/agents")).await?;
            for a in v["agents"].as_array().into_iter().flatten() {
                println!(
                    "{:24} {:10} {:10}",
                    a["name"].as_str().unwrap_or("?"),
                    a["version"].as_str().unwrap_or("?"),
                    a["state"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }),
        AgentCommand::Control { action, name } => runtime()?.block_on(async {
            let api = Api::connect(remote, Duration::from_secs(60)).await?;
            let v = api
                .send(
                    api.post(&format!("/api/v1/agents/{name}/{action}"))
                        .json(&serde_json::json!({})),
                )
                .await?;
            println!("{name}: {}", v["state"].as_str().unwrap_or(&v.to_string()));
            Ok(())
        }),
        AgentCommand::Run { name, input } => runtime()?.block_on(async {
            let api = Api::connect(remote, Duration::from_secs(600)).await?;
            let v = api
                .send(
                    api.post(&format!("/api/v1/agents/{name}/runs"))
                        .json(&serde_json::json!({"input": input})),
                )
                .await?;
            match v["status"].as_str() {
                Some("succeeded") => {
                    println!("{}", v["output"].as_str().unwrap_or(""));
                    Ok(())
                }
                other => bail!(
                    "run {} {}: {}",
                    v["id"].as_str().unwrap_or("?"),
                    other.unwrap_or("?"),
                    v["error"].as_str().unwrap_or("")
                ),
            }
        }),
        AgentCommand::Runs { agent, limit } => runtime()?.block_on(async {
            let api = Api::connect(remote, Duration::from_secs(30)).await?;
            let mut path = format!("/api/v1/runs?limit={limit}");
            if let Some(a) = agent {
                path.push_str(&format!("&agent={a}"));
            }
            let v = api.send(api.get(&path)).await?;
            for r in v["runs"].as_array().into_iter().flatten() {
                println!(
                    "{} {:16} {:10}",
                    r["id"].as_str().unwrap_or("?"),
                    r["agent"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }),
        AgentCommand::Deploy {
            package,
            no_start,
            force,
        } => runtime()?.block_on(async {
            let bytes = std::fs::read(&package).with_context(|| package.display().to_string())?;
            Package::parse(&bytes)?.verify_signature()?;
            let api = Api::connect(remote, Duration::from_secs(300)).await?;
            let v = api
                .send(
                    api.post(&format!("/api/v1/agents?start={}&force={force}", !no_start))
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

/// Builds the single-threaded runtime the CLI's requests run on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
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

/// Managing an appliance over its API (the same API the console uses).
#[derive(Subcommand, Debug)]
pub enum ManageCommand {
    /// Saves the appliance's URL, a token and its certificate pin in the config file, so later
    /// commands need no flags: checks `--token`, or with `--user` logs in with the password
    /// (asked for, or `CAIRN_PASSWORD`) and makes an admin token for this CLI.
    Login {
        /// The user to log in as (instead of `--token`).
        #[arg(long)]
        user: Option<String>,
    },
    /// First boot: creates the administrator with the one-time setup code the console shows,
    /// then logs in as with `login --user`.
    Onboard {
        /// The setup code from the appliance's console.
        #[arg(long)]
        code: String,
        /// The administrator's user name.
        #[arg(long, default_value = "admin")]
        user: String,
    },
    /// Health, version, uptime, models, data partition.
    Status,
    /// The appliance's recent log lines, or one agent run's log with `--run`.
    Logs {
        /// An agent run id.
        #[arg(long)]
        run: Option<String>,
        /// Lines to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Local models and remote providers; with a subcommand, adds, unloads or removes a model.
    Models {
        /// What to do (nothing: list).
        #[command(subcommand)]
        cmd: Option<ModelCommand>,
    },
    /// Agent memory.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Appliance settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Host name, network and clock (admin to change).
    #[command(subcommand)]
    Machine(MachineCommand),
    /// Workflows: stored definitions, runs, cancellation.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Whole-box backups: make one, or restore one (admin; a fresh box with its setup code).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Cancels a queued or running agent run.
    Cancel {
        /// The run id.
        run: String,
    },
    /// The structured event stream, oldest first.
    Events {
        /// Kind or kind prefix (`agent`, `router.call`, `operator.action`, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Exact subject (an agent, a provider, a user).
        #[arg(long)]
        subject: Option<String>,
        /// Only warnings and errors.
        #[arg(long)]
        problems: bool,
        /// Events to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Operator actions, newest first.
    Audit {
        /// Entries to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Reboots the appliance.
    Reboot {
        /// Confirms the reboot.
        #[arg(long)]
        yes: bool,
    },
    /// Shuts the appliance down.
    Shutdown {
        /// Confirms the shutdown.
        #[arg(long)]
        yes: bool,
    },
}

/// `cairn memory …`.
#[derive(Subcommand, Debug)]
pub enum MemoryCommand {
    /// Namespaces with their record counts.
    Namespaces,
    /// Hybrid (lexical + semantic) search.
    Search {
        /// What to look for.
        query: String,
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// How many results.
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

/// `cairn settings …`.
#[derive(Subcommand, Debug)]
pub enum SettingsCommand {
    /// Every setting.
    List,
    /// One setting.
    Get {
        /// Its name.
        key: String,
    },
    /// Sets a setting to a JSON value (a bare word is taken as a string).
    Set {
        /// Its name.
        key: String,
        /// The value.
        value: String,
    },
}

/// `cairn machine …`.
#[derive(Subcommand, Debug)]
pub enum MachineCommand {
    /// Configured and in-force settings, and a change on probation.
    Show,
    /// Sets the host name (applied at once).
    Hostname {
        /// RFC 1123 label.
        name: String,
    },
    /// Changes the network; on probation until `cairn machine confirm`.
    Network {
        /// `dhcp` or `static`.
        mode: String,
        /// Static address with prefix, e.g. 192.168.1.20/24.
        #[arg(long)]
        address: Option<String>,
        /// Static gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// Static resolver (repeatable, up to 3).
        #[arg(long)]
        dns: Vec<String>,
        /// Interface (default: the first wired one).
        #[arg(long)]
        interface: Option<String>,
        /// Seconds to confirm before the previous settings come back.
        #[arg(long, default_value_t = 120)]
        confirm_within: u64,
    },
    /// Keeps the network change on probation (run it against the new address).
    Confirm,
    /// Reverts the network change on probation now.
    Revert,
    /// Sets the appliance's clock to this computer's time.
    SetClock,
}

/// `cairn models …`.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Uploads a GGUF chat model (admin): usable at once, kept on the data partition.
    Add {
        /// The id clients will use (1-64 of a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        id: String,
        /// The GGUF file.
        file: PathBuf,
    },
    /// Frees a loaded model's memory (it loads again on use).
    Unload {
        /// The model.
        id: String,
    },
    /// Removes an uploaded or registered model (admin); the image's models stay.
    Remove {
        /// The model.
        id: String,
    },
}

/// `cairn models add|unload|remove`.
async fn model(api: &Api, cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Add { id, file } => {
            use sha2::Digest;
            let path = file.clone();
            let (sha, len) = tokio::task::spawn_blocking(move || -> Result<(String, u64)> {
                use std::io::Read;
                let mut f = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0u64;
                loop {
                    let k = f.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                }
                Ok((hex::encode(h.finalize()), n))
            })
            .await??;
            eprintln!("uploading {} ({len} bytes, sha256 {sha})", file.display());
            let f = tokio::fs::File::open(&file).await?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
            let v = api
                .send(
                    api.put(&format!("/api/v1/models/{id}"))
                        .header("x-cairn-sha256", sha.as_str())
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(body),
                )
                .await?;
            println!(
                "model {} added ({} bytes); it loads on first use",
                v["model"]["id"].as_str().unwrap_or(&id),
                v["bytes"]
            );
        }
        ModelCommand::Unload { id } => {
            let v = api
                .send(api.post(&format!("/api/v1/models/{id}/unload")))
                .await?;
            println!(
                "{id}: {}",
                if v["unloaded"] == true {
                    "unloaded"
                } else {
                    "was not loaded"
                }
            );
        }
        ModelCommand::Remove { id } => {
            api.send(api.delete(&format!("/api/v1/models/{id}")))
                .await?;
            println!("{id} removed");
        }
    }
    Ok(())
}

/// `cairn backup …`. The passphrase comes from `CAIRN_BACKUP_PASSPHRASE` or is asked for.
#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Downloads an encrypted backup of everything that makes the appliance itself.
    Create {
        /// Where to write it (`.tar.age`; written under a temporary name, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Include the TLS identity (certificate and private key).
        #[arg(long)]
        tls: bool,
    },
    /// Uploads a backup; the appliance checks it, restarts and comes back as the backed-up box.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// On a box not onboarded yet: its setup code, instead of a login.
        #[arg(long)]
        setup_code: Option<String>,
    },
}

/// `cairn workflow …`.
#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Stored workflow definitions.
    List,
    /// Checks a workflow file and stores it under its name (replacing one of that name).
    Save {
        /// The workflow file (TOML, or JSON).
        file: PathBuf,
    },
    /// Prints a stored definition's file.
    Show {
        /// Its name.
        name: String,
    },
    /// Runs a stored workflow; waits for its end unless `--detach`.
    Run {
        /// Its name.
        name: String,
        /// The input.
        #[arg(long, default_value = "")]
        input: String,
        /// Print the run id at once instead of waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Recent workflow runs, newest first.
    Runs {
        /// Only this workflow's.
        #[arg(long)]
        workflow: Option<String>,
        /// Runs to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Cancels a workflow run in progress.
    Cancel {
        /// The workflow run id (`wf-…`).
        id: String,
    },
    /// Deletes a stored definition (its runs stay).
    Delete {
        /// Its name.
        name: String,
    },
}

/// `cairn token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Every token (without secrets).
    List,
    /// Makes a token and prints it once.
    Create {
        /// A label.
        name: String,
        /// reader, operator or admin.
        #[arg(long, default_value = "reader")]
        scope: String,
        /// Lifetime in days, or `never` (default: the appliance's, 90 days).
        #[arg(long)]
        expires_in_days: Option<String>,
    },
    /// Revokes a token.
    Revoke {
        /// Its id.
        id: String,
    },
}

/// `cairn workflow …` against the API.
async fn workflow(api: &Api, cmd: WorkflowCommand) -> Result<()> {
    let one_run = |v: &serde_json::Value| {
        println!(
            "{} {} ({}): {}",
            v["id"].as_str().unwrap_or("?"),
            v["workflow"].as_str().unwrap_or("?"),
            v["kind"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?"),
        );
        if let Some(e) = v["error"].as_str() {
            println!("error: {e}");
        }
        if let Some(o) = v["output"].as_str() {
            println!("{o}");
        }
    };
    match cmd {
        WorkflowCommand::List => {
            let v = api.send(api.get("/api/v1/workflows")).await?;
            for w in v["workflows"].as_array().into_iter().flatten() {
                println!(
                    "{} v{} {} [{}] {}",
                    w["name"].as_str().unwrap_or("?"),
                    w["version"],
                    w["kind"].as_str().unwrap_or("?"),
                    w["agents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    w["description"].as_str().unwrap_or(""),
                );
            }
        }
        WorkflowCommand::Save { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let wf = cairn_agents::workflow::Workflow::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let v = api
                .send(
                    api.put(&format!("/api/v1/workflows/{}", wf.name))
                        .json(&serde_json::json!({"workflow": text})),
                )
                .await?;
            println!("saved {} (version {})", wf.name, v["version"]);
        }
        WorkflowCommand::Show { name } => {
            let v = api
                .send(api.get(&format!("/api/v1/workflows/{name}")))
                .await?;
            print!("{}", v["text"].as_str().unwrap_or(""));
        }
        WorkflowCommand::Run {
            name,
            input,
            detach,
        } => {
            let v = api
                .send(
                    api.post(&format!("/api/v1/workflows/{name}/runs"))
                        .json(&serde_json::json!({"input": input, "wait": !detach})),
                )
                .await?;
            if detach {
                println!("{}", v["id"].as_str().unwrap_or("?"));
            } else {
                one_run(&v);
            }
        }
        WorkflowCommand::Runs { workflow, limit } => {
            let mut path = format!("/api/v1/workflows/runs?limit={limit}");
            if let Some(w) = workflow {
                path.push_str(&format!("&workflow={w}"));
            }
            let v = api.send(api.get(&path)).await?;
            for r in v["runs"].as_array().into_iter().flatten() {
                println!(
                    "{} {} ({}): {}",
                    r["id"].as_str().unwrap_or("?"),
                    r["workflow"].as_str().unwrap_or("?"),
                    r["kind"].as_str().unwrap_or("?"),
                    r["status"].as_str().unwrap_or("?"),
                );
            }
        }
        WorkflowCommand::Cancel { id } => {
            let v = api
                .send(api.post(&format!("/api/v1/workflows/runs/{id}/cancel")))
                .await?;
            one_run(&v);
        }
        WorkflowCommand::Delete { name } => {
            api.send(api.delete(&format!("/api/v1/workflows/{name}")))
                .await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Runs a management command.
pub fn manage(cmd: ManageCommand, remote: &RemoteArgs) -> Result<()> {
    runtime()?.block_on(async {
        // A backup moves the whole data partition over the wire.
        let timeout = match cmd {
            ManageCommand::Backup(_) | ManageCommand::Models { cmd: Some(_) } => {
                Duration::from_secs(6 * 3600)
            }
            _ => Duration::from_secs(120),
        };
        let mut api = Api::connect(remote, timeout).await?;
        match cmd {
            ManageCommand::Backup(cmd) => backup(&api, cmd).await?,
            ManageCommand::Login { user } => {
                let mut minted = None;
                if let Some(user) = user {
                    let cfg = remote.load_config()?;
                    if let Some(token) = reusable_token(&api, &cfg, &user).await {
                        eprintln!(
                            "the token saved by an earlier `cairn login` is still valid; reusing it"
                        );
                        api.set_token(token);
                    } else {
                        let password = read_password("password")?;
                        let (token, id) =
                            session_token(&api, "login", &user, &password, None).await?;
                        api.set_token(token);
                        revoke_previous(&api, &cfg).await;
                        minted = Some(id);
                    }
                }
                save_login(&api, remote, minted).await?;
            }
            ManageCommand::Onboard { code, user } => {
                let password = read_password("new administrator password")?;
                let (token, id) =
                    session_token(&api, "onboard", &user, &password, Some(&code)).await?;
                api.set_token(token);
                save_login(&api, remote, Some(id)).await?;
            }
            ManageCommand::Status => {
                let v = api.send(api.get("/api/v1/system")).await?;
                let sys = &v;
                println!(
                    "{} {} ({}, {}), up {:.0} s, data {}",
                    sys["hostname"].as_str().unwrap_or("?"),
                    sys["version"].as_str().unwrap_or("?"),
                    sys["arch"].as_str().unwrap_or("?"),
                    sys["mode"].as_str().unwrap_or("?"),
                    sys["uptime_secs"].as_f64().unwrap_or(0.0),
                    v["data"]["mode"].as_str().unwrap_or("?"),
                );
                print_json(&v);
            }
            ManageCommand::Logs { run, limit } => match run {
                Some(id) => {
                    let v = api.send(api.get(&format!("/api/v1/runs/{id}"))).await?;
                    for line in v["logs"].as_array().into_iter().flatten() {
                        println!("{}", line.as_str().unwrap_or(&line.to_string()));
                    }
                    println!("status: {}", v["status"].as_str().unwrap_or("?"));
                }
                None => {
                    let v = api
                        .send(api.get(&format!("/api/v1/system/logs?limit={limit}")))
                        .await?;
                    for e in v["lines"].as_array().into_iter().flatten() {
                        println!(
                            "{} {:5} {}",
                            e["time"].as_str().unwrap_or(""),
                            e["level"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        );
                    }
                }
            },
            ManageCommand::Models { cmd: Some(cmd) } => model(&api, cmd).await?,
            ManageCommand::Models { cmd: None } => {
                let local = api.send(api.get("/v1/models")).await?;
                let providers = api.send(api.get("/api/v1/router/providers")).await?;
                print_json(&serde_json::json!({"local": local["data"], "providers": providers}));
            }
            ManageCommand::Memory(MemoryCommand::Namespaces) => {
                print_json(&api.send(api.get("/api/v1/memory/namespaces")).await?);
            }
            ManageCommand::Memory(MemoryCommand::Search {
                query,
                namespace,
                k,
            }) => {
                let mut body = serde_json::json!({"query": query, "k": k});
                if let Some(ns) = namespace {
                    body["namespaces"] = serde_json::json!([ns]);
                }
                let v = api
                    .send(api.post("/api/v1/memory/recall").json(&body))
                    .await?;
                print_json(&v);
            }
            ManageCommand::Settings(SettingsCommand::List) => {
                print_json(&api.send(api.get("/api/v1/settings")).await?);
            }
            ManageCommand::Settings(SettingsCommand::Get { key }) => {
                let v = api
                    .send(api.get(&format!("/api/v1/settings/{key}")))
                    .await?;
                print_json(&v["value"]);
            }
            ManageCommand::Settings(SettingsCommand::Set { key, value }) => {
                let value: serde_json::Value =
                    serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
                let v = api
                    .send(api.put(&format!("/api/v1/settings/{key}")).json(&value))
                    .await?;
                println!("{key} = {}", v["value"]);
            }
            ManageCommand::Machine(MachineCommand::Show) => {
                print_json(&api.send(api.get("/api/v1/system/settings")).await?);
            }
            ManageCommand::Machine(MachineCommand::Hostname { name }) => {
                let body = serde_json::json!({ "hostname": name });
                let v = api
                    .send(api.put("/api/v1/system/settings").json(&body))
                    .await?;
                println!("host name {}: {}", v["settings"]["hostname"], v["status"]);
            }
            ManageCommand::Machine(MachineCommand::Network {
                mode,
                address,
                gateway,
                dns,
                interface,
                confirm_within,
            }) => {
                let body = serde_json::json!({
                    "network": {"mode": mode, "address": address, "gateway": gateway,
                                "dns": dns, "interface": interface},
                    "confirm_within_s": confirm_within,
                });
                let v = api
                    .send(api.put("/api/v1/system/settings").json(&body))
                    .await?;
                if v["status"] == "pending" {
                    println!(
                        "network change applied on probation: run `cairn machine confirm` against \
                         the new address within {} s, or the previous settings come back",
                        v["pending"]["remaining_s"]
                    );
                } else {
                    println!("network settings {}", v["status"]);
                }
            }
            ManageCommand::Machine(MachineCommand::Confirm) => {
                api.send(api.post("/api/v1/system/settings/confirm"))
                    .await?;
                println!("network settings kept");
            }
            ManageCommand::Machine(MachineCommand::Revert) => {
                api.send(api.post("/api/v1/system/settings/revert")).await?;
                println!("previous network settings restored");
            }
            ManageCommand::Machine(MachineCommand::SetClock) => {
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let body = serde_json::json!({ "unix": unix });
                api.send(api.post("/api/v1/system/clock").json(&body))
                    .await?;
                println!("appliance clock set to {unix}");
            }
            ManageCommand::Events {
                kind,
                subject,
                problems,
                limit,
            } => {
                let mut req = api
                    .get("/api/v1/events")
                    .query(&[("limit", limit.to_string())]);
                if let Some(k) = kind {
                    req = req.query(&[("kind", k)]);
                }
                if let Some(s) = subject {
                    req = req.query(&[("subject", s)]);
                }
                if problems {
                    req = req.query(&[("problems", "true")]);
                }
                let v = api.send(req).await?;
                for e in v["events"].as_array().into_iter().flatten() {
                    let when = e["time_ms"]
                        .as_i64()
                        .and_then(|ms| {
                            time::OffsetDateTime::from_unix_timestamp_nanos(
                                i128::from(ms) * 1_000_000,
                            )
                            .ok()
                        })
                        .map(crate::logbuf::rfc3339)
                        .unwrap_or_default();
                    println!(
                        "{when} {:5} {:16} {:12} {}",
                        e["level"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        e["subject"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    );
                }
            }
            ManageCommand::Token(TokenCommand::List) => {
                print_json(&api.send(api.get("/api/v1/auth/tokens")).await?);
            }
            ManageCommand::Token(TokenCommand::Create {
                name,
                scope,
                expires_in_days,
            }) => {
                let mut body = serde_json::json!({"name": name, "scope": scope});
                match expires_in_days.as_deref() {
                    None => {}
                    Some("never") => body["expires_in"] = "never".into(),
                    Some(d) => {
                        let days: u64 = d
                            .parse()
                            .ok()
                            .filter(|d| *d > 0)
                            .context("--expires-in-days is a number of days or `never`")?;
                        body["expires_in"] = days.saturating_mul(86_400).into();
                    }
                }
                let v = api
                    .send(api.post("/api/v1/auth/tokens").json(&body))
                    .await?;
                eprintln!(
                    "token {} ({}) created; it is shown only now:",
                    v["id"].as_str().unwrap_or("?"),
                    v["scope"].as_str().unwrap_or("?")
                );
                println!("{}", v["token"].as_str().unwrap_or(""));
            }
            ManageCommand::Workflow(cmd) => workflow(&api, cmd).await?,
            ManageCommand::Cancel { run } => {
                let v = api
                    .send(api.post(&format!("/api/v1/runs/{run}/cancel")))
                    .await?;
                println!(
                    "{run}: {} ({})",
                    v["status"].as_str().unwrap_or("?"),
                    v["error"].as_str().unwrap_or("")
                );
            }
            ManageCommand::Token(TokenCommand::Revoke { id }) => {
                api.send(api.delete(&format!("/api/v1/auth/tokens/{id}")))
                    .await?;
                println!("revoked {id}");
            }
            ManageCommand::Audit { limit } => {
                print_json(
                    &api.send(api.get(&format!("/api/v1/audit/actions?limit={limit}")))
                        .await?,
                );
            }
            ManageCommand::Reboot { yes } | ManageCommand::Shutdown { yes } if !yes => {
                bail!("this stops every agent on the appliance: add --yes to confirm");
            }
            ManageCommand::Reboot { .. } => {
                api.send(
                    api.post("/api/v1/system/power")
                        .json(&serde_json::json!({"action": "reboot"})),
                )
                .await?;
                println!("rebooting");
            }
            ManageCommand::Shutdown { .. } => {
                api.send(
                    api.post("/api/v1/system/power")
                        .json(&serde_json::json!({"action": "poweroff"})),
                )
                .await?;
                println!("shutting down");
            }
        }
        Ok(())
    })
}

/// Saves the URL and the token in use, after checking them; `minted` is the id of a token this
/// command just made (else the id of an earlier one is kept while the appliance is the same).
async fn save_login(api: &Api, remote: &RemoteArgs, minted: Option<String>) -> Result<()> {
    let who = api.send(api.get("/api/v1/system")).await?;
    let mut cfg = remote.load_config()?;
    if minted.is_some() || cfg.remote.as_deref() != Some(api.base()) {
        cfg.minted = minted;
    }
    cfg.remote = Some(api.base().to_string());
    cfg.token = api.token().map(str::to_string);
    remote.save_config(&cfg)?;
    println!(
        "logged in to {} ({}); saved in {}",
        who["hostname"].as_str().unwrap_or("?"),
        api.base(),
        remote.config_path().display()
    );
    Ok(())
}

/// The id part of a token `cairn_ID_SECRET`.
fn token_id(token: &str) -> Option<&str> {
    token.strip_prefix("cairn_")?.split('_').next()
}

/// The token an earlier `cairn login --user USER` minted for this appliance, if the appliance
/// still accepts it as an admin token and it has more than a day left.
async fn reusable_token(api: &Api, cfg: &crate::remote::Config, user: &str) -> Option<String> {
    let token = cfg.token.as_deref()?;
    let id = token_id(token)?;
    if cfg.remote.as_deref() != Some(api.base()) || cfg.minted.as_deref() != Some(id) {
        return None;
    }
    // Listing tokens needs the admin scope: a 200 proves the token valid and an admin's.
    let list = api
        .send(api.get_as("/api/v1/auth/tokens", token))
        .await
        .ok()?;
    let me = list["tokens"]
        .as_array()?
        .iter()
        .find(|t| t["id"].as_str() == Some(id))?;
    let ours = me["name"]
        .as_str()
        .is_some_and(|n| n.starts_with(&format!("cli {user}@")));
    let left = match me["expires"].as_u64() {
        None => true,
        Some(at) => at > crate::auth::unix_now() + 86_400,
    };
    (ours && left).then(|| token.to_string())
}

/// Revokes the token an earlier `cairn login --user` minted for this appliance (now replaced);
/// one that is gone already is fine.
async fn revoke_previous(api: &Api, cfg: &crate::remote::Config) {
    let Some(old) = cfg.minted.as_deref() else {
        return;
    };
    if cfg.remote.as_deref() != Some(api.base()) || api.token().and_then(token_id) == Some(old) {
        return;
    }
    match api
        .send(api.delete(&format!("/api/v1/auth/tokens/{old}")))
        .await
    {
        Ok(_) => eprintln!("revoked the token {old} an earlier `cairn login` made"),
        Err(e) if e.to_string().contains("404") => {}
        Err(e) => eprintln!("warning: could not revoke the earlier CLI token {old}: {e:#}"),
    }
}

/// Logs in (or onboards with `code`) and makes an admin API token for this CLI with the session;
/// returns the token and its id.
async fn session_token(
    api: &Api,
    action: &str,
    user: &str,
    password: &str,
    code: Option<&str>,
) -> Result<(String, String)> {
    let mut body = serde_json::json!({"username": user, "password": password});
    if let Some(code) = code {
        body["code"] = code.into();
    }
    let resp = api
        .post_anonymous(&format!("/api/v1/auth/{action}"))
        .json(&body)
        .send()
        .await
        .context("reaching the appliance")?;
    let status = resp.status();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{action} refused ({status}): {}",
            v["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    let host = crate::sysinfo::hostname();
    let name = format!(
        "cli {user}@{host} {}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let made = api
        .send(
            api.post_anonymous("/api/v1/auth/tokens")
                .header("cookie", cookie)
                .header("x-csrf-token", v["csrf"].as_str().unwrap_or_default())
                .json(&serde_json::json!({"name": name, "scope": "admin"})),
        )
        .await?;
    let token = made["token"]
        .as_str()
        .map(str::to_string)
        .context("the appliance returned no token")?;
    let id = made["id"]
        .as_str()
        .map(str::to_string)
        .context("the appliance returned no token id")?;
    Ok((token, id))
}

/// A password from `CAIRN_PASSWORD`, or asked for on the terminal without echo.
fn read_password(prompt: &str) -> Result<String> {
    read_secret("CAIRN_PASSWORD", prompt)
}

/// `cairn backup create|restore`.
async fn backup(api: &Api, cmd: BackupCommand) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    match cmd {
        BackupCommand::Create { out, tls } => {
            let passphrase = read_secret("CAIRN_BACKUP_PASSPHRASE", "backup passphrase")?;
            let resp = api
                .send_raw(
                    api.post("/api/v1/backup")
                        .json(&serde_json::json!({"passphrase": passphrase, "tls": tls})),
                )
                .await?;
            let mut partial = out.clone().into_os_string();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let mut f = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let mut resp = resp;
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await.context("downloading the backup")? {
                f.write_all(&chunk)
                    .await
                    .with_context(|| format!("writing {}", partial.display()))?;
                n += chunk.len() as u64;
            }
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&partial, &out)
                .await
                .with_context(|| format!("renaming to {}", out.display()))?;
            println!("backup written to {} ({n} bytes)", out.display());
        }
        BackupCommand::Restore { file, setup_code } => {
            let passphrase = read_secret("CAIRN_BACKUP_PASSPHRASE", "backup passphrase")?;
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().await?.len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
            let mut req = match &setup_code {
                Some(code) => api
                    .post_anonymous("/api/v1/backup/restore")
                    .header("x-cairn-setup-code", code.as_str()),
                None => api.post("/api/v1/backup/restore"),
            };
            req = req
                .header("x-cairn-passphrase", passphrase.as_str())
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(body);
            let v = api.send(req).await?;
            println!(
                "restore accepted: backup of {} made by Cairn {} ({} files, {} bytes); the appliance restarts",
                v["backup"]["hostname"].as_str().unwrap_or("?"),
                v["backup"]["cairn"].as_str().unwrap_or("?"),
                v["files"],
                v["bytes"]
            );
            if v["backup"]["tls"].as_bool() == Some(true) {
                println!(
                    "the backup carries its box's TLS identity: the appliance comes back with that \
                     certificate, so pass its fingerprint with --fingerprint next time"
                );
                return Ok(());
            }
            // Back when its health answers again (the old process may still answer briefly).
            tokio::time::sleep(Duration::from_secs(2)).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            loop {
                if let Ok(r) = api.get("/healthz").send().await
                    && r.status().is_success()
                {
                    println!("the appliance is back");
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!("the appliance did not come back within 5 minutes; see its console");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

/// A secret from the environment variable `env`, or asked for on the terminal without echo.
fn read_secret(env: &str, prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var(env) {
        return Ok(p);
    }
    use std::io::{BufRead, IsTerminal, Write};
    eprint!("{prompt}: ");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    // SAFETY: termios is plain data; tcgetattr fills it for fd 0 when it returns 0.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is this process's stdin and `saved` is a valid termios to fill.
    let echo_off = tty && unsafe { libc::tcgetattr(0, &mut saved) } == 0;
    if echo_off {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: sets fd 0's attributes from a termios derived from its own.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        // SAFETY: restores the attributes read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read.with_context(|| format!("reading the {prompt}"))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("no {prompt} given");
    }
    Ok(p)
}
