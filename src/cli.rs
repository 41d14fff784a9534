//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::replication::Mode;

#[derive(Parser, Debug)]
#[command(
    name = "dualfs",
    version,
    about = "Mount one path that mirrors every change into a local and a remote directory"
)]
pub struct Cli {
    /// Log line format on stderr (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount MOUNTPOINT over a local and a remote directory (runs in the foreground).
    Mount(MountArgs),
    /// Show the sync state of a path on a dualfs mount.
    Status(StatusArgs),
    /// Compare the remote tree with the local tree; exit 1 and list every difference.
    Verify(VerifyArgs),
    /// Repair the remote tree from the local tree (the daemon must not be running).
    Resync(VerifyArgs),
    /// Unmount a dualfs mount and wait until its daemon has drained its queue and exited
    /// (for a Kubernetes preStop hook).
    Unmount(UnmountArgs),
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    /// The mount point.
    pub path: PathBuf,

    /// How long to wait for the daemon to exit.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "120s", value_name = "DURATION")]
    pub timeout: Duration,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    if value.starts_with('-') {
        return Err(format!(
            "invalid duration {value:?}: durations cannot be negative (examples: 500ms, 5s, 2m)"
        ));
    }
    humantime::parse_duration(value)
        .map_err(|err| format!("invalid duration {value:?}: {err} (examples: 500ms, 5s, 2m)"))
}

/// Parses a duration that must be longer than zero.
fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!(
            "invalid duration {value:?}: it must be longer than zero (examples: 500ms, 5s, 2m)"
        )),
        duration => Ok(duration),
    }
}

/// Checks a metrics address: ADDRESS:PORT or `off`.
fn parse_metrics_addr(value: &str) -> Result<String, String> {
    if value == "off" {
        return Ok(value.to_string());
    }
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| value.to_string())
        .map_err(|err| {
            format!(
                "invalid address {value:?}: {err}; use ADDRESS:PORT such as 127.0.0.1:9464, or off"
            )
        })
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// The local tree: every change lands here first and reads are served from it.
    #[arg(long, value_name = "DIR")]
    pub local: PathBuf,

    /// The remote tree: every change is mirrored here.
    #[arg(long, value_name = "DIR")]
    pub remote: PathBuf,

    /// Where to mount the unified view; must be an empty directory.
    pub mountpoint: PathBuf,

    /// sync: each change waits for the remote too, up to --remote-timeout; async: the remote
    /// follows in the background.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    pub mode: Mode,

    /// How long a change waits for the remote in sync mode before it stays queued and the
    /// call returns.
    #[arg(long, value_parser = parse_positive_duration, allow_hyphen_values = true, default_value = "5s", value_name = "DURATION")]
    pub remote_timeout: Duration,

    /// In async mode, how long a new change waits for the writes, chmods and time updates that
    /// usually follow it to join it, saving journal records and remote calls.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "20ms", value_name = "DURATION")]
    pub coalesce_window: Duration,

    /// When a change may go ahead after its journal record. `always` waits for the record to
    /// be on stable storage, so even a machine crash loses nothing. `background` waits only for
    /// the write and syncs within milliseconds: a killed daemon loses nothing, and after a
    /// machine crash the next start compares both trees.
    #[arg(long, value_enum, default_value = "background", value_name = "WHEN")]
    pub journal_sync: crate::replication::journal::JournalSync,

    /// How long the kernel may cache name lookups.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "1s", value_name = "DURATION")]
    pub entry_ttl: Duration,

    /// How long the kernel may cache file attributes.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "1s", value_name = "DURATION")]
    pub attr_ttl: Duration,

    /// How long dualfs's metadata cache keeps an entry (0s disables it).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "1s", value_name = "DURATION")]
    pub cache_ttl: Duration,

    /// Maximum number of paths in dualfs's metadata cache.
    #[arg(long, default_value_t = 100_000, value_name = "ENTRIES")]
    pub cache_size: usize,

    /// Copy a remote-only file into the local tree when it is first opened, so later reads are
    /// local.
    #[arg(long)]
    pub hydrate: bool,

    /// Do not use FUSE passthrough for read-only opens (it needs Linux 6.9 or later and
    /// CAP_SYS_ADMIN, and is turned off by itself where unavailable).
    #[arg(long)]
    pub no_passthrough: bool,

    /// Let users other than the one who mounted use the mount (needs root or
    /// user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,

    /// Threads that serve FUSE requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Threads that apply queued changes to the remote.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,

    /// Do not copy file ownership to the remote (for an EFS access point that enforces one
    /// POSIX identity and rejects chown).
    #[arg(long)]
    pub no_mirror_owner: bool,

    /// Address for /metrics (Prometheus), /healthz and /readyz; `off` disables them.
    #[arg(long, value_parser = parse_metrics_addr, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT|off")]
    pub metrics_addr: String,

    /// On unmount, how long to wait for queued changes to reach the remote before exiting.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true, default_value = "60s", value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// If MOUNTPOINT is already served by a running dualfs with the same --local and
    /// --remote, take its FUSE connection over through --handover-socket instead of failing:
    /// applications keep their open files (for upgrades). Without a running dualfs, mount as
    /// usual.
    #[arg(long)]
    pub takeover: bool,

    /// The Unix socket where this mount listens for a takeover and where --takeover sends its
    /// request [default: /run/dualfs/ and the mount point escaped as systemd escapes unit
    /// names, such as var-lib-dualfs-mnt.sock].
    #[arg(long, value_name = "PATH")]
    pub handover_socket: Option<PathBuf>,

    /// After handing the mount over: exit, or wait for SIGTERM (for a Kubernetes pod whose
    /// container must not be restarted in the meantime).
    #[arg(long, value_enum, default_value_t = AfterHandover::Exit)]
    pub after_handover: AfterHandover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AfterHandover {
    Exit,
    Wait,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The local tree (the reference).
    #[arg(long, value_name = "DIR")]
    pub local: PathBuf,

    /// The remote tree (the copy to check).
    #[arg(long, value_name = "DIR")]
    pub remote: PathBuf,

    /// Compare file contents byte by byte too, not only sizes and attributes.
    #[arg(long)]
    pub checksum: bool,

    /// Ignore ownership, as for a mount with --no-mirror-owner.
    #[arg(long)]
    pub no_mirror_owner: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A path on a dualfs mount (the mount point shows the whole mount).
    pub path: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
