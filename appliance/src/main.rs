//! The `cairn` command: `cairn serve` runs the appliance; other subcommands come with the CLI.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn, an agent operating system")]
struct Cli {
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
    },
}

fn init_tracing(appliance: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if appliance {
        // The console already shows the kernel's clock; keep lines short and plain.
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            data,
            listen,
            appliance,
            degraded,
        } => {
            // Take init's control socket before any thread exists.
            let control = cairn::control::Control::from_env();
            init_tracing(appliance);
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
            let opts = cairn::serve::ServeOptions {
                data,
                listen,
                appliance,
                degraded,
            };
            if let Err(e) = rt.block_on(cairn::serve::run(opts, control)) {
                tracing::error!("{e:#}");
                return Err(e);
            }
            Ok(())
        }
    }
}
