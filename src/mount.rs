//! `dualfs mount`: checks the directories, mounts, serves until unmounted or signalled, then
//! drains the replication queue.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Config, SessionACL};
use nix::mount::MsFlags;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::backend::{Backend, Side};
use crate::cli::MountArgs;
use crate::fs::fuse::{FuseAdapter, Gate};
use crate::fs::handles::HandleTable;
use crate::fs::inode::InodeTable;
use crate::fs::passthrough::IoModes;
use crate::fs::{DualFs, FsConfig};
use crate::metrics::{Metrics, Snapshot};
use crate::replication::{Op, OpKind, ReplicationConfig, Replicator};
use crate::supervisor::Inherited;
use crate::STATE_DIR;

/// The three directories of a mount, canonicalized and checked.
#[derive(Debug)]
pub struct MountPaths {
    pub local: PathBuf,
    pub remote: PathBuf,
    pub mountpoint: PathBuf,
}

fn canonical_dir(path: &Path, role: &str, flag: &str) -> Result<PathBuf> {
    let canonical = std::fs::canonicalize(path).with_context(|| {
        format!(
            "{role} directory {} cannot be opened; create it or pass another {flag}",
            path.display()
        )
    })?;
    if !canonical.is_dir() {
        bail!(
            "{role} path {} is not a directory; pass a directory as {flag}",
            path.display()
        );
    }
    Ok(canonical)
}

fn check_writable(path: &Path, role: &str) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: access only reads the NUL-terminated path.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "{role} directory {} is not writable ({err}); fix its permissions or mount options",
            path.display()
        );
    }
    Ok(())
}

/// Checks the directories given to `dualfs mount` and returns them canonicalized.
pub fn check_paths(local: &Path, remote: &Path, mountpoint: &Path) -> Result<MountPaths> {
    let local = canonical_dir(local, "local", "--local")?;
    let remote = canonical_dir(remote, "remote", "--remote")?;
    let mountpoint = canonical_dir(mountpoint, "mount point", "MOUNTPOINT")?;

    if local == remote {
        bail!(
            "--local and --remote are the same directory {}; give two different directories",
            local.display()
        );
    }
    if local.starts_with(&remote) || remote.starts_with(&local) {
        bail!(
            "one backing directory is inside the other (local {}, remote {}); give two separate trees",
            local.display(),
            remote.display()
        );
    }
    for (role, backing) in [("local", &local), ("remote", &remote)] {
        if mountpoint.starts_with(backing) || backing.starts_with(&mountpoint) {
            bail!(
                "mount point {} overlaps the {role} directory {}; mount somewhere outside both trees",
                mountpoint.display(),
                backing.display()
            );
        }
    }

    check_writable(&local, "local")?;
    check_writable(&remote, "remote")?;
    let first_entry = std::fs::read_dir(&mountpoint)
        .with_context(|| format!("mount point {} cannot be listed", mountpoint.display()))?
        .next();
    if let Some(entry) = first_entry {
        let name = entry.map(|e| e.file_name()).unwrap_or_default();
        bail!(
            "mount point {} is not empty (it holds {name:?}); mount on an empty directory so nothing is hidden",
            mountpoint.display()
        );
    }

    Ok(MountPaths {
        local,
        remote,
        mountpoint,
    })
}

fn prepare_state_dir(local: &Path) -> Result<()> {
    let state = local.join(STATE_DIR);
    // The state folder contains the journal, which names every changed path, so only the
    // daemon's user may enter it.
    let created = std::fs::DirBuilder::new().mode(0o700).create(&state);
    match created {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && state.is_dir() => {
            // Older versions created it readable by everyone.
            let _ = std::fs::set_permissions(
                &state,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            );
            Ok(())
        }
        Err(err) => Err(err).with_context(|| {
            format!(
                "cannot create the state folder {}; the local directory must be writable",
                state.display()
            )
        }),
    }
}

fn fuse_config(args: &MountArgs) -> Config {
    let mut config = Config::default();
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(args.threads as usize);
    config
}

/// Opens /dev/fuse and mounts it with mount(2) as type `fuse.dualfs`, so that mount tables
/// and `mount -t` name the filesystem. Returns the connection's descriptor.
///
/// fuser's own mount names every filesystem plain `fuse`, which is why dualfs mounts itself
/// and serves the descriptor with `Session::from_fd`.
pub(crate) fn mount_fuse(local: &Path, mountpoint: &Path, allow_other: bool) -> Result<OwnedFd> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse; load the fuse module and run as root")?;
    let fd = OwnedFd::from(device);

    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut options = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        fd.as_raw_fd()
    );
    if allow_other {
        options.push_str(",allow_other");
    }

    let source = format!("dualfs:{}", local.display());
    nix::mount::mount(
        Some(source.as_str()),
        mountpoint,
        Some("fuse.dualfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mount(2) of {} failed; dualfs needs root (CAP_SYS_ADMIN)",
            mountpoint.display()
        )
    })?;
    Ok(fd)
}

/// `dualfs unmount`: unmounts a dualfs mount and waits until its daemon has drained its queue
/// and exited (it then releases the lock of its local tree).
pub fn run_unmount(args: crate::cli::UnmountArgs) -> Result<ExitCode> {
    let absolute = std::path::absolute(&args.path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let source = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let point = fields.get(4)?.replace("\\040", " ");
        let is_dualfs = fields.get(separator + 1) == Some(&"fuse.dualfs");
        (Path::new(&point) == absolute && is_dualfs)
            .then(|| fields.get(separator + 2).map(|s| s.replace("\\040", " ")))?
    });
    let Some(source) = source else {
        bail!("{} is not a dualfs mount point", absolute.display());
    };
    let local = PathBuf::from(source.trim_start_matches("dualfs:"));

    unmount(&absolute);
    let deadline = std::time::Instant::now() + args.timeout;
    loop {
        if lock_local_tree(&local).is_ok() {
            eprintln!("unmounted {}; the daemon has exited", absolute.display());
            return Ok(ExitCode::SUCCESS);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "unmounted {}, but its daemon was still draining its queue after {:?}; it keeps the rest in its journal",
                absolute.display(),
                args.timeout
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Unmounts, falling back to a lazy detach while files are still open.
pub(crate) fn unmount(mountpoint: &Path) {
    let Ok(c_path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2 only reads the NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        return;
    }
    let err = std::io::Error::last_os_error();
    tracing::warn!(mountpoint = %mountpoint.display(), %err, "unmount failed, detaching lazily");
    // SAFETY: as above.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        tracing::error!(mountpoint = %mountpoint.display(), %err, "lazy unmount failed");
    }
}

/// Detaches a dualfs mount whose daemon died ("Transport endpoint is not connected") from the
/// mount point, so a restarted daemon can mount there again. Dead mounts of other filesystems
/// are reported, not touched.
pub(crate) fn clear_dead_mount(mountpoint: &Path) -> Result<()> {
    // The kernel may serve stat of the mount root from its cache, so list it instead.
    match std::fs::read_dir(mountpoint) {
        Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => return Ok(()),
    }
    let absolute = std::path::absolute(mountpoint)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let fs_type = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let point = fields.get(4)?.replace("\\040", " ");
        (Path::new(&point) == absolute).then(|| fields.get(separator + 1).map(|t| t.to_string()))?
    });

    match fs_type.as_deref() {
        Some("fuse.dualfs") => {
            tracing::warn!(mountpoint = %absolute.display(), "the previous dualfs daemon of this mount point died; detaching its dead mount");
            unmount(&absolute);
            Ok(())
        }
        Some(other) => bail!(
            "mount point {} is a dead {other} mount; unmount it with `umount -l {}`",
            absolute.display(),
            absolute.display()
        ),
        None => Ok(()),
    }
}

/// Takes the exclusive lock of a local tree's state folder, held by the daemon for as long as
/// it runs, so no second daemon or offline repair works on the same tree.
pub fn lock_local_tree(local: &Path) -> Result<std::fs::File> {
    prepare_state_dir(local)?;
    let path = local.join(STATE_DIR).join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on an open descriptor; the result is checked.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "the local tree {} is in use by another dualfs process (lock {} is held: {err})",
            local.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Checks whether `mountpoint` is a dualfs mount whose daemon replies.
pub(crate) fn is_live_dualfs(mountpoint: &Path) -> bool {
    crate::helper::mount_is_live(mountpoint)
}

/// Returns the canonical directories of a mount that is already mounted (for a daemon that
/// serves it or a takeover).
pub(crate) fn serving_paths(args: &MountArgs) -> Result<MountPaths> {
    Ok(MountPaths {
        local: canonical_dir(&args.local, "local", "--local")?,
        remote: canonical_dir(&args.remote, "remote", "--remote")?,
        mountpoint: mount_point_path(&args.mountpoint)?,
    })
}

/// Returns the mount point as mount tables list it: canonical, or for a mount point that
/// cannot be resolved (a dead mount) absolute without a trailing slash or `.` components.
pub(crate) fn mount_point_path(path: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(canonical) => Ok(canonical),
        Err(_) => Ok(std::path::absolute(path)?.components().collect()),
    }
}

/// `dualfs mount`: a supervisor, or the serving daemon it started.
pub fn run(args: MountArgs) -> Result<ExitCode> {
    match Inherited::from_env()? {
        Some(inherited) => serve(args, inherited),
        None => crate::supervisor::run(args),
    }
}

/// Serves the FUSE connection a supervisor passed down, until it is unmounted, then drains
/// the replication queue.
fn serve(args: MountArgs, inherited: Inherited) -> Result<ExitCode> {
    // Handlers go in first: a SIGTERM forwarded while the journal replays waits here and
    // unmounts once the daemon serves, instead of killing it and leaving a dead mount.
    // The handler stays installed until the process exits, so a signal that arrives while
    // the queue drains after an unmount does not kill the daemon mid-write.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("cannot install signal handlers")?;
    // The mount point must not be touched here: this daemon does not serve it yet, so any
    // access to it would wait for this very process.
    let paths = MountPaths {
        local: canonical_dir(&args.local, "local", "--local")?,
        remote: canonical_dir(&args.remote, "remote", "--remote")?,
        mountpoint: std::path::absolute(&args.mountpoint)?
            .components()
            .collect(),
    };
    let _lock = lock_local_tree(&paths.local)?;
    // The metrics port is taken before the journal opens, so a taken port fails the start
    // without leaving the journal marked open.
    let metrics_server = match args.metrics_addr.as_str() {
        "off" => None,
        addr => {
            let addr = addr.parse().map_err(|err| {
                anyhow::anyhow!(
                    "invalid --metrics-addr {addr:?}: {err}; use ADDRESS:PORT such as 127.0.0.1:9464, or off"
                )
            })?;
            Some(crate::metrics::bind(addr)?)
        }
    };
    // Modes arrive already masked by the kernel; our own umask must not mask them again.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };

    let local = Arc::new(
        Backend::open(Side::Local, &paths.local)
            .with_context(|| format!("cannot open local directory {}", paths.local.display()))?,
    );
    let remote = Arc::new(
        Backend::open(Side::Remote, &paths.remote)
            .with_context(|| format!("cannot open remote directory {}", paths.remote.display()))?,
    );

    let replicator = Arc::new(Replicator::start(
        local.clone(),
        remote.clone(),
        ReplicationConfig {
            mode: args.mode,
            remote_timeout: args.remote_timeout,
            workers: args.workers as usize,
            mirror_owner: !args.no_mirror_owner,
            remote_call_threads: args.threads as usize * 2,
            coalesce_window: args.coalesce_window,
            journal_sync: args.journal_sync,
        },
        &paths.local.join(STATE_DIR).join("journal"),
    )?);

    // The roots' own attributes are copied at every start, because they may differ before
    // the first change (a fresh remote directory, a tmpfs root with mode 1777).
    replicator
        .enqueue(Op::new("", OpKind::Attr))
        .map_err(|errno| anyhow::anyhow!("cannot record the root's attributes: {errno}"))?;

    let record = std::fs::File::from(inherited.record);
    let (handles, left_open) =
        HandleTable::with_record(record).context("cannot read the record of open files")?;
    let nodes_record = std::fs::File::from(inherited.nodes);
    let handed_nodes = take_node_table(&nodes_record);
    let fs = DualFs::new(
        local,
        remote,
        replicator.clone(),
        FsConfig {
            entry_ttl: args.entry_ttl,
            attr_ttl: args.attr_ttl,
            cache_ttl: args.cache_ttl,
            cache_size: args.cache_size,
            hydrate: args.hydrate,
        },
        handles,
        handed_nodes,
        inherited.resume,
    );

    let metrics = Arc::new(Metrics::new());
    let cache_stats = fs.cache_stats_source();
    let source = replicator.clone();
    metrics.set_source(move || {
        let summary = source.summary();
        let cache = cache_stats();
        Snapshot {
            queue_ops: summary.ops as u64,
            queue_bytes: summary.bytes,
            oldest_pending: summary.oldest_age,
            health: Some(source.health()),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
        }
    });
    if let Some(server) = metrics_server {
        crate::metrics::serve(server, metrics.clone(), paths.mountpoint.clone())?;
    }

    let config = fuse_config(&args);
    let io_modes = Arc::new(IoModes::new(!args.no_passthrough));
    let gate = Arc::new(Gate::default());
    fs.recover_passthrough_writers(&left_open);
    let inode_table = fs.inode_table();
    let adapter = FuseAdapter::new(fs, metrics.clone(), io_modes.clone(), gate.clone());
    // fuser serves a connection only after an INIT handshake, which runs on the socket that
    // carries the supervisor's copy of the kernel's INIT; the socket's descriptor number is
    // then pointed at the FUSE connection itself.
    let session_fd = inherited.init.as_raw_fd();
    let session = fuser::Session::from_fd(adapter, inherited.init, config.acl, config)
        .context("the FUSE handshake with the supervisor failed")?;
    nix::unistd::dup3(
        inherited.fuse.as_raw_fd(),
        session_fd,
        nix::fcntl::OFlag::O_CLOEXEC,
    )
    .context("cannot attach the FUSE connection")?;
    drop(inherited.fuse);
    if inherited.resume {
        io_modes.recover(session_fd, &left_open);
        // SAFETY: session_fd now names the FUSE connection, which the session keeps open.
        let device = unsafe { std::os::fd::BorrowedFd::borrow_raw(session_fd) };
        if let Err(err) = crate::supervisor::request_resend(device) {
            tracing::warn!(%err, "the kernel cannot resend the requests the previous daemon left unanswered (needs Linux 6.9)");
        }
        tracing::info!(
            open_files = left_open.len(),
            "resumed the connection of the previous daemon"
        );
    }
    metrics.set_daemon_restarts(inherited.restarts);
    metrics.set_ready();
    tracing::info!(
        local = %paths.local.display(),
        remote = %paths.remote.display(),
        mountpoint = %paths.mountpoint.display(),
        mode = ?args.mode,
        journal_sync = ?args.journal_sync,
        "mounted"
    );

    let mountpoint = paths.mountpoint.clone();
    let stopper = replicator.clone();
    let request_wait = args.remote_timeout + Duration::from_secs(5);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut unmounting = false;
            for signal in signals.forever() {
                if signal == SIGUSR1 && !unmounting {
                    hand_over(&gate, &stopper, request_wait, &inode_table, &nodes_record);
                } else if !unmounting {
                    tracing::info!(signal, "unmounting on signal");
                    unmounting = true;
                    unmount(&mountpoint);
                } else {
                    tracing::info!(signal, "already unmounting; still draining the queue");
                }
            }
        })?;

    let served = match session.run() {
        // The kernel aborts the connection when the mount goes away while a reply is in
        // flight; that is an unmount like any other.
        Err(err) if err.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::debug!(%err, "FUSE connection closed during unmount");
            Ok(())
        }
        other => other,
    };
    if let Err(err) = &served {
        tracing::error!(%err, "FUSE session ended with an error");
    }

    let left = replicator.shutdown(args.drain_timeout);
    if left > 0 {
        tracing::warn!(
            left,
            "unmounted with changes not yet on the remote; the journal keeps them for the next mount"
        );
    }
    if left == 0 {
        tracing::info!("unmounted; every change reached the remote");
    }
    Ok(if served.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Stops serving for a handover: lets running requests finish, keeps new ones unanswered,
/// leaves queued changes in the journal for the next daemon, and exits.
fn hand_over(
    gate: &Gate,
    replicator: &Replicator,
    request_wait: Duration,
    inodes: &parking_lot::Mutex<InodeTable>,
    nodes_record: &std::fs::File,
) -> ! {
    let started = std::time::Instant::now();
    let running = gate.close(request_wait);
    if running > 0 {
        tracing::warn!(
            running,
            "requests still running at the handover; the next daemon gets them again"
        );
    }

    // No request changes the table any more, so the next daemon gets it exactly.
    let encoded = inodes.lock().encode();
    let written = nodes_record
        .set_len(0)
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(nodes_record, &encoded, 0));
    if let Err(err) = written {
        tracing::warn!(%err, "cannot hand the node table over; the next daemon walks the trees instead");
        let _ = nodes_record.set_len(0);
    }

    let left = replicator.shutdown(Duration::ZERO);
    tracing::info!(left, elapsed = ?started.elapsed(), "stopped for a handover; the next daemon continues the queue");
    std::process::exit(crate::supervisor::EXIT_HANDED_OVER);
}

/// Reads the node table that the previous daemon left at a handover, and empties the record so
/// a later crash does not read a stale table. `None` after a crash or on a fresh mount.
fn take_node_table(record: &std::fs::File) -> Option<InodeTable> {
    let len = record.metadata().ok()?.len() as usize;
    if len == 0 {
        return None;
    }
    let mut bytes = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(record, &mut bytes, 0).ok()?;
    let _ = record.set_len(0);
    let table = InodeTable::decode(&bytes);
    match &table {
        Some(table) => tracing::info!(
            nodes = table.len(),
            "took over the node table of the previous daemon"
        ),
        None => tracing::warn!(
            "the node table of the previous daemon is malformed; walking the trees instead"
        ),
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_point_path_drops_trailing_slash() {
        let missing = Path::new("/nonexistent-dualfs-test/mnt/");
        assert_eq!(
            mount_point_path(missing).unwrap(),
            PathBuf::from("/nonexistent-dualfs-test/mnt")
        );
        let dir = tempfile::tempdir().unwrap();
        let with_slash = PathBuf::from(format!("{}/", dir.path().display()));
        assert_eq!(
            mount_point_path(&with_slash).unwrap(),
            std::fs::canonicalize(dir.path()).unwrap()
        );
    }
}
