//! The `cairn` command: `cairn serve` runs the appliance; other subcommands come with the CLI.

use anyhow::Result;

// musl's own malloc is the whole musl penalty in inference (docs/inference.md), and glibc's
// costs memory's bulk writes a fifth of their time (docs/memory.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn, an agent operating system")]
struct Cli {
    #[command(flatten)]
    remote: cairn::remote::RemoteArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: HTTPS API and console.
    Serve {
        /// Directory for all persistent state.
        #[arg(long, default_value = "./cairn-data")]
        data: PathBuf,
        /// Address to listen on (default 127.0.0.1:8443 hosted, 0.0.0.0:443 in the image).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Running as the image's service under cairn-init.
        #[arg(long)]
        appliance: bool,
        /// Run in degraded, read-only mode, giving the reason.
        #[arg(long, value_name = "REASON")]
        degraded: Option<String>,
        /// Model store (one folder per model; default /models in the image, else the fetch cache).
        #[arg(long)]
        models: Option<PathBuf>,
        /// Where models run.
        #[arg(long, value_enum, default_value = "auto")]
        device: cairn::inference::DeviceChoice,
        /// CPU threads for inference (0: every core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Load models at start-up or on first use.
        #[arg(long, value_enum, default_value = "lazy")]
        load_models: cairn::inference::LoadPolicy,
        /// Connections served at once, in all (more are closed at once).
        #[arg(long, default_value_t = cairn::conn::MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections: u64,
        /// Connections served at once from one client address (an IPv6 /64).
        #[arg(long, default_value_t = cairn::conn::MAX_CONNECTIONS_PER_ADDRESS as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_connections_per_address: u64,
        /// Seconds a connection may wait for its next request (headers included).
        #[arg(long, value_name = "SECS", default_value_t = cairn::conn::IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
        idle_timeout: u64,
        /// Seconds a request body gets to arrive (plus one per 16 KiB received).
        #[arg(long, value_name = "SECS", default_value_t = cairn::conn::BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
        body_timeout: u64,
    },
    /// Agents: package keys, signing, trust, deployment, and running agents.
    #[command(subcommand)]
    Agent(cairn::cli::AgentCommand),
    #[command(flatten)]
    Manage(cairn::cli::ManageCommand),
}

fn init_tracing(appliance: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(cairn::logbuf::Capture);
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr);
    if appliance {
        // The console already shows the kernel's clock; keep lines short and plain.
        registry.with(fmt.without_time().with_ansi(false)).init();
    } else {
        registry.with(fmt).init();
    }
}

/// Replaces this process with a fresh `cairn serve` with the same arguments (hosted: no init
/// restarts it).
fn restart_hosted() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(anyhow::anyhow!("starting again: {err}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(cmd) => cairn::cli::run(cmd, &cli.remote),
        Command::Manage(cmd) => cairn::cli::manage(cmd, &cli.remote),
        Command::Serve {
            data,
            listen,
            appliance,
            degraded,
            models,
            device,
            threads,
            load_models,
            max_connections,
            max_connections_per_address,
            idle_timeout,
            body_timeout,
        } => {
            // Take init's control socket before any thread exists.
            let control = cairn::control::Control::from_env();
            init_tracing(appliance);
            // Before any thread exists, so every thread inherits the limit and the filter.
            match cairn::sandbox::raise_open_files() {
                Ok(n) => tracing::debug!("open files: up to {n}"),
                Err(e) => tracing::warn!("could not raise the open-file limit: {e}"),
            }
            if appliance {
                #[cfg(target_os = "linux")]
                if let Err(e) = cairn::sandbox::confine() {
                    // The image's kernel has seccomp; running unconfined is not an option.
                    tracing::error!("no_new_privs and seccomp filter: {e}");
                    return Err(anyhow::anyhow!("confining the service: {e}"));
                }
            }
            let listen = listen.unwrap_or_else(|| {
                if appliance {
                    SocketAddr::from(([0, 0, 0, 0], 443))
                } else {
                    SocketAddr::from(([127, 0, 0, 1], 8443))
                }
            });
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()?;
            let store = models.or_else(|| {
                let image = PathBuf::from(cairn_init::layout::MODELS_MOUNT);
                if appliance {
                    Some(image)
                } else {
                    Some(cairn_models::store::default_dir())
                }
            });
            let inference = cairn::inference::InferenceOptions {
                store,
                registry: Some(data.join("models.toml")),
                device,
                threads,
                load: load_models,
            };
            let opts = cairn::serve::ServeOptions {
                data,
                listen,
                appliance,
                degraded,
                inference,
                limits: cairn::conn::Limits {
                    max_connections: max_connections as usize,
                    max_per_address: max_connections_per_address as usize,
                    idle_timeout: std::time::Duration::from_secs(idle_timeout),
                    body_timeout: std::time::Duration::from_secs(body_timeout),
                },
            };
            match rt.block_on(cairn::serve::run(opts, control)) {
                Err(e) => {
                    tracing::error!("{e:#}");
                    Err(e)
                }
                Ok(cairn::serve::Exit::Stop) => Ok(()),
                // Under cairn-init the exit is the restart: init starts the service again.
                Ok(cairn::serve::Exit::Restart) if appliance => Ok(()),
                Ok(cairn::serve::Exit::Restart) => {
                    drop(rt);
                    tracing::info!("starting again");
                    restart_hosted()
                }
            }
        }
    }
}
