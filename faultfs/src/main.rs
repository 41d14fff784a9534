use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use faultfs::{mount, unmount, MountOptions};

/// A passthrough FUSE filesystem that injects faults from a rules file, for tests.
#[derive(Parser)]
#[command(name = "faultfs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a passthrough of --backing at MOUNTPOINT and serve it in the foreground until
    /// SIGINT, SIGTERM or umount.
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
    /// Directory whose contents the mount shows.
    #[arg(long)]
    backing: PathBuf,
    /// Rules file, re-read whenever it changes. A missing file means no rules. Request
    /// counts go to the same path with `.stats` appended.
    #[arg(long)]
    control: PathBuf,
    /// Let users other than root use the mount.
    #[arg(long)]
    allow_other: bool,
    /// FUSE request threads. Delayed and held requests get threads of their own.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Entry and attribute TTL for the kernel's caches, e.g. `0s` or `1s`. Zero makes every
    /// path walk and stat reach faultfs.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Open files with direct I/O, so every read(2) reaches faultfs.
    #[arg(long)]
    direct_io: bool,
    /// Directory to mount on.
    mountpoint: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let Command::Mount(args) = Cli::parse().command;
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: MountArgs) -> Result<ExitCode> {
    let options = MountOptions {
        allow_other: args.allow_other,
        threads: args.threads,
        ttl: args.ttl,
        direct_io: args.direct_io,
    };
    let mounted = mount(&args.backing, &args.control, &args.mountpoint, &options)?;
    let shared = mounted.shared().clone();
    let mountpoint = mounted.mountpoint().to_path_buf();

    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    let signal_thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGUSR1 {
                    shared.write_stats();
                    continue;
                }
                tracing::info!(signal, "unmounting on signal");
                shared.shut_down();
                if let Err(err) = unmount(&mountpoint) {
                    tracing::error!(mountpoint = %mountpoint.display(), %err, "unmount failed");
                }
                break;
            }
        })?;

    let served = mounted.run();
    signal_handle.close();
    if signal_thread.join().is_err() {
        tracing::error!("the signal thread panicked");
    }
    match served {
        Ok(()) => {
            tracing::info!("unmounted");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            tracing::error!(%err, "FUSE session ended with an error");
            Ok(ExitCode::FAILURE)
        }
    }
}
