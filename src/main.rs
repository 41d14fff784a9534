use std::process::ExitCode;

use clap::Parser;

use dualfs::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // mount(8) and mount.fuse3 call `dualfs SOURCE MOUNTPOINT -o OPTIONS`.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if dualfs::helper::is_mount_convention(&args) {
        return dualfs::helper::run(&args);
    }

    let cli = Cli::parse();
    init_logging(cli.log_format);

    let result = match cli.command {
        Command::Mount(args) => dualfs::mount::run(args),
        Command::Status(args) => dualfs::status::run(args),
        Command::Verify(args) => dualfs::verify::run_verify(args),
        Command::Resync(args) => dualfs::verify::run_resync(args),
        Command::Unmount(args) => dualfs::mount::run_unmount(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dualfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
