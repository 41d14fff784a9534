use std::process::ExitCode;

use clap::Parser;

use dualfs::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);

    let result = match cli.command {
        Command::Mount(args) => dualfs::mount::run(args),
        Command::Status(args) => dualfs::status::run(args),
        Command::Verify(args) => dualfs::verify::run_verify(args),
        Command::Resync(args) => dualfs::verify::run_resync(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dualfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
