//! The supervisor that `dualfs mount` runs: it mounts, keeps the FUSE connection open, and runs
//! the serving daemon as a child process on it.
//!
//! The kernel keeps a FUSE mount alive for as long as some process holds its /dev/fuse
//! descriptor, so a daemon that crashes is restarted on the same connection and applications
//! do not see "Transport endpoint is not connected". The supervisor also hands the connection
//! to a newer dualfs (`dualfs mount --takeover`) over a Unix socket, for upgrades.
//!
//! fuser only serves a connection after the INIT handshake, which the kernel sends once. The
//! supervisor therefore reads the kernel's INIT request itself and gives every daemon a copy
//! of it on a socket pair: the first daemon's reply is forwarded to the kernel, later daemons'
//! replies are dropped. The daemon then swaps the socket for the FUSE descriptor.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::cli::{AfterHandover, MountArgs};
use crate::mount;

/// Names the inherited descriptors of a serving daemon and its start count:
/// `FUSE,INIT,RECORD,NODES,RESTARTS` (RESTARTS > 0 when an earlier daemon served the
/// connection).
pub const SERVE_ENV: &str = "DUALFS_SERVE";

/// The exit code of a daemon that stopped for a handover.
pub const EXIT_HANDED_OVER: i32 = 75;

/// FUSE_INIT's opcode.
const FUSE_INIT: u32 = 26;

/// More crashes than this within `CRASH_WINDOW` stop the restarts (kills by SIGKILL do not
/// count).
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// How long a daemon may take to stop for a handover before it is killed (the kernel then
/// sends its unanswered requests again to the next daemon).
const HANDOVER_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The FUSE connection of a mount, as held by the supervisor.
pub struct Connection {
    pub fuse: OwnedFd,
    /// The record of open files (a memfd), shared by every daemon of the connection.
    pub record: OwnedFd,
    /// The node table a daemon leaves at a handover (a memfd, empty otherwise).
    pub nodes: OwnedFd,
    /// The kernel's INIT request, as first read from the connection.
    pub init: Vec<u8>,
    /// How many times a daemon was started again on this connection.
    pub restarts: u64,
}

/// The descriptors a serving daemon inherits from its supervisor.
pub struct Inherited {
    pub fuse: OwnedFd,
    pub init: OwnedFd,
    pub record: OwnedFd,
    pub nodes: OwnedFd,
    /// Whether an earlier daemon served this connection.
    pub resume: bool,
    /// How many daemons served this connection before this one, minus the first.
    pub restarts: u64,
}

impl Inherited {
    /// Reads the descriptors named in `DUALFS_SERVE`, if this process is a serving daemon.
    pub fn from_env() -> Result<Option<Inherited>> {
        let Ok(value) = std::env::var(SERVE_ENV) else {
            return Ok(None);
        };
        std::env::remove_var(SERVE_ENV);
        let fields: Vec<&str> = value.split(',').collect();
        let parse = |index: usize| -> Result<RawFd> {
            fields
                .get(index)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("malformed {SERVE_ENV}={value:?}"))
        };
        let (fuse, init, record, nodes) = (parse(0)?, parse(1)?, parse(2)?, parse(3)?);
        let restarts = u64::try_from(parse(4)?).unwrap_or(0);
        // SAFETY: the supervisor passed these open descriptors to this process alone.
        let own = |fd: RawFd| -> Result<OwnedFd> {
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                bail!("{SERVE_ENV} names descriptor {fd}, which is not open");
            }
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Ok(Some(Inherited {
            fuse: own(fuse)?,
            init: own(init)?,
            record: own(record)?,
            nodes: own(nodes)?,
            resume: restarts > 0,
            restarts,
        }))
    }
}

/// Returns the socket path where the supervisor of `mountpoint` listens for a takeover,
/// unless --handover-socket names another path: the mount point escaped as systemd does for
/// unit names (`/` becomes `-`, and `-` and other bytes become `\xNN`), so two mount points
/// never share a socket. A name too long for a socket address is replaced by a hash.
pub fn default_socket(mountpoint: &Path) -> PathBuf {
    let mut name = String::new();
    let bytes = mountpoint.as_os_str().as_encoded_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    for (index, &byte) in trimmed.iter().enumerate() {
        match byte {
            b'/' => name.push('-'),
            b'.' if index == 0 => name.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => name.push(byte as char),
            _ => name.push_str(&format!("\\x{byte:02x}")),
        }
    }
    let dir = PathBuf::from("/run/dualfs");
    // sun_path has room for 108 bytes, the terminating NUL included.
    if dir.as_os_str().len() + 1 + name.len() + ".sock".len() >= 108 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        name = format!("mount-{hash:016x}");
    }
    dir.join(format!("{name}.sock"))
}

/// Reads the kernel's INIT request from a freshly mounted connection.
fn read_init(fuse: &OwnedFd) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = nix::unistd::read(fuse.as_raw_fd(), &mut buf)
        .context("cannot read the kernel's INIT request from /dev/fuse")?;
    buf.truncate(n);
    let opcode = buf
        .get(4..8)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if opcode != Some(FUSE_INIT) {
        bail!("the kernel's first FUSE request is opcode {opcode:?}, not INIT");
    }
    Ok(buf)
}

fn memfd(name: &std::ffi::CStr) -> Result<OwnedFd> {
    // SAFETY: memfd_create reads the NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create failed");
    }
    // SAFETY: the descriptor was just created and is owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mounts a new connection.
fn establish(args: &MountArgs) -> Result<(Connection, mount::MountPaths)> {
    mount::clear_dead_mount(&args.mountpoint)?;
    let paths = mount::check_paths(&args.local, &args.remote, &args.mountpoint)?;
    // Fail before mounting when another daemon serves this tree; the daemon takes the lock.
    drop(mount::lock_local_tree(&paths.local)?);
    let fuse = mount::mount_fuse(&paths.local, &paths.mountpoint, args.allow_other)?;
    let init = match read_init(&fuse) {
        Ok(init) => init,
        Err(err) => {
            mount::unmount(&paths.mountpoint);
            return Err(err);
        }
    };
    let record = memfd(c"dualfs-open-files")?;
    let nodes = memfd(c"dualfs-nodes")?;
    Ok((
        Connection {
            fuse,
            record,
            nodes,
            init,
            restarts: 0,
        },
        paths,
    ))
}

/// A running serving daemon.
struct Daemon {
    pid: Pid,
    /// The supervisor's end of the socket pair the daemon's handshake runs on.
    handshake: OwnedFd,
}

/// Starts a serving daemon; `restarts` is how many daemons were started on the connection
/// before, minus the first (0 for a fresh mount).
fn spawn(exe: &Path, conn: &Connection, restarts: u64, events: &Sender<Event>) -> Result<Daemon> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .context("socketpair failed")?;
    nix::unistd::write(&ours, &conn.init).context("cannot queue INIT for the daemon")?;

    let inherited = [
        conn.fuse.as_raw_fd(),
        theirs.as_raw_fd(),
        conn.record.as_raw_fd(),
        conn.nodes.as_raw_fd(),
    ];
    let mut command = Command::new(exe);
    command.args(std::env::args_os().skip(1)).env(
        SERVE_ENV,
        format!(
            "{},{},{},{},{}",
            inherited[0], inherited[1], inherited[2], inherited[3], restarts
        ),
    );
    // SAFETY: fcntl is async-signal-safe; it only lets the inherited descriptors cross exec.
    unsafe {
        command.pre_exec(move || {
            for fd in inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start the daemon {}", exe.display()))?;
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    let events = events.clone();
    std::thread::Builder::new()
        .name("daemon-wait".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = events.send(Event::Exited(status));
            }
        })?;
    Ok(Daemon {
        pid,
        handshake: ours,
    })
}

/// Forwards the first daemon's INIT reply to the kernel, which completes the mount.
fn forward_init_reply(daemon: &Daemon, conn: &Connection) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let n = nix::unistd::read(daemon.handshake.as_raw_fd(), &mut buf)
        .context("the daemon did not reply to INIT")?;
    if n == 0 {
        bail!("the daemon exited before replying to INIT");
    }
    nix::unistd::write(&conn.fuse, &buf[..n])
        .context("cannot send the INIT reply to the kernel")?;
    Ok(())
}

enum Event {
    Exited(ExitStatus),
    Signal(i32),
    Handover(UnixStream, Request),
}

/// A takeover request, sent as one JSON line.
#[derive(Serialize, Deserialize)]
struct Request {
    local: PathBuf,
    remote: PathBuf,
    mountpoint: PathBuf,
}

/// The reply to a takeover request. The descriptors travel with it.
#[derive(Serialize, Deserialize)]
struct Offer {
    error: Option<String>,
    init: Vec<u8>,
    #[serde(default)]
    restarts: u64,
}

/// Listens for takeover requests on `path`. A socket file left there is replaced when nothing
/// answers on it, or when `replace` is set (after a takeover, the old supervisor that listened
/// there has handed its mount over); a live one of another mount is an error.
fn listen(path: &Path, replace: bool, events: Sender<Event>) -> Result<()> {
    if let Some(dir) = path.parent() {
        if dir.exists() && !dir.is_dir() {
            bail!(
                "the socket folder {} exists but is not a directory; pass another --handover-socket",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket folder {}", dir.display()))?;
    }
    if !replace && UnixStream::connect(path).is_ok() {
        bail!(
            "another dualfs listens for takeovers on {}; give this mount its own --handover-socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen for takeovers on {}; pass another --handover-socket",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("handover".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                if BufReader::new(reader).read_line(&mut line).is_err() {
                    continue;
                }
                match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let _ = events.send(Event::Handover(stream, request));
                    }
                    Err(err) => reject(&stream, &format!("malformed takeover request: {err}")),
                }
            }
        })?;
    Ok(())
}

fn reject(stream: &UnixStream, message: &str) {
    let offer = Offer {
        error: Some(message.to_string()),
        init: Vec::new(),
        restarts: 0,
    };
    let mut stream = stream;
    let _ = writeln!(
        stream,
        "{}",
        serde_json::to_string(&offer).unwrap_or_default()
    );
}

fn send_connection(stream: &UnixStream, conn: &Connection, restarts: u64) -> Result<()> {
    let offer = serde_json::to_vec(&Offer {
        error: None,
        init: conn.init.clone(),
        restarts,
    })?;
    let fds = [
        conn.fuse.as_raw_fd(),
        conn.record.as_raw_fd(),
        conn.nodes.as_raw_fd(),
    ];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(&offer)];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .context("cannot send the connection to the new daemon")?;
    Ok(())
}

/// Asks the supervisor listening on `socket` for its connection.
fn take_over(socket: &Path, paths: &mount::MountPaths) -> Result<Connection> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the running dualfs at {} to take over its mount; is it older than takeover support, or started with another --handover-socket?",
            socket.display()
        )
    })?;
    let request = Request {
        local: paths.local.clone(),
        remote: paths.remote.clone(),
        mountpoint: paths.mountpoint.clone(),
    };
    writeln!(stream, "{}", serde_json::to_string(&request)?)?;
    stream.set_read_timeout(Some(HANDOVER_STOP_TIMEOUT + Duration::from_secs(30)))?;

    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("the running dualfs did not reply to the takeover request")?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: descriptors received with SCM_RIGHTS belong to this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let length = message.bytes;
    let offer: Offer = serde_json::from_slice(&buf[..length])
        .context("the running dualfs sent a malformed reply")?;
    if let Some(error) = offer.error {
        bail!("the running dualfs rejected the takeover: {error}");
    }
    let mut fds = fds.into_iter();
    let (Some(fuse), Some(record), Some(nodes)) = (fds.next(), fds.next(), fds.next()) else {
        bail!("the running dualfs sent no FUSE connection");
    };
    Ok(Connection {
        fuse,
        record,
        nodes,
        init: offer.init,
        // The new daemon is one more start on the connection.
        restarts: offer.restarts + 1,
    })
}

fn signals(events: Sender<Event>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let _ = events.send(Event::Signal(signal));
            }
        })?;
    Ok(())
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => ExitCode::FAILURE,
    }
}

/// `dualfs mount`: mounts (or takes over a running mount) and supervises the daemon.
pub fn run(args: MountArgs) -> Result<ExitCode> {
    // Descriptors inherited from the caller (a shell's `exec 7<file`) would keep files open,
    // possibly inside the mount itself, for as long as the mount lives.
    // SAFETY: close_range only closes descriptors; none above 2 is in use by this process yet.
    unsafe { libc::close_range(3, u32::MAX, 0) };
    let exe = std::env::current_exe().context("cannot find the dualfs binary")?;
    let mountpoint = mount::mount_point_path(&args.mountpoint)?;
    let socket = args
        .handover_socket
        .clone()
        .unwrap_or_else(|| default_socket(&mountpoint));
    let (events_tx, events) = crossbeam_channel::unbounded();
    // Handlers go in before anything is mounted: a SIGTERM that arrives while the mount is
    // being set up waits in the channel and stops the daemon once it serves, so no dead mount
    // is left behind.
    signals(events_tx.clone())?;

    let takeover = args.takeover && mount::is_live_dualfs(&mountpoint);
    if args.takeover && !takeover {
        tracing::info!(mountpoint = %mountpoint.display(), "no running dualfs serves the mount point; mounting");
    }
    if !takeover && mount::is_live_dualfs(&mountpoint) {
        bail!(
            "{} is already served by a running dualfs; pass --takeover to replace it, or unmount it first",
            mountpoint.display()
        );
    }
    // A socket path given on the command line must work, so it is checked before mounting;
    // the default one only costs takeovers when it cannot be used.
    let mut listening = false;
    if !takeover {
        match listen(&socket, false, events_tx.clone()) {
            Ok(()) => listening = true,
            Err(err) if args.handover_socket.is_some() => return Err(err),
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "takeovers of this mount are not possible"
                )
            }
        }
    }

    let (conn, resumed, paths) = if takeover {
        let paths = mount::serving_paths(&args)?;
        let started = Instant::now();
        let conn = take_over(&socket, &paths)?;
        tracing::info!(elapsed = ?started.elapsed(), mountpoint = %paths.mountpoint.display(), "took over the running mount");
        if let Err(err) = listen(&socket, true, events_tx.clone()) {
            tracing::warn!(
                error = format!("{err:#}"),
                "takeovers of this mount are not possible"
            );
        }
        (conn, true, paths)
    } else {
        let (conn, paths) = match establish(&args) {
            Ok(established) => established,
            Err(err) => {
                if listening {
                    let _ = std::fs::remove_file(&socket);
                }
                return Err(err);
            }
        };
        (conn, false, paths)
    };

    if !kernel_resends(&conn.init) {
        tracing::warn!(
            fuse = protocol_version(&conn.init),
            "this kernel cannot resend requests (FUSE_NOTIFY_RESEND needs Linux 6.9): after a daemon crash, calls the dead daemon had read stay blocked, and takeovers are rejected"
        );
    }
    let outcome = supervise(&exe, &conn, resumed, &paths, &events, &events_tx);
    if listening && !matches!(outcome, Ok(Outcome::HandedOver)) {
        let _ = std::fs::remove_file(&socket);
    }
    match outcome? {
        Outcome::Exited(code) => Ok(code),
        Outcome::HandedOver => {
            drop(conn);
            if args.after_handover == AfterHandover::Wait {
                tracing::info!("handed the mount over; waiting to be stopped");
                while !matches!(events.recv(), Ok(Event::Signal(_)) | Err(_)) {}
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

enum Outcome {
    Exited(ExitCode),
    HandedOver,
}

fn supervise(
    exe: &Path,
    conn: &Connection,
    resumed: bool,
    paths: &mount::MountPaths,
    events: &Receiver<Event>,
    events_tx: &Sender<Event>,
) -> Result<Outcome> {
    let mut restarts = conn.restarts;
    let mut daemon = Some(spawn(exe, conn, restarts, events_tx)?);
    if !resumed {
        if let Err(err) = forward_init_reply(daemon.as_ref().expect("just spawned"), conn) {
            mount::unmount(&paths.mountpoint);
            // A daemon that exits before replying has printed why, so its exit code is ours.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(event) = events.recv_deadline(deadline) {
                if let Event::Exited(status) = event {
                    return Ok(Outcome::Exited(exit_code(status)));
                }
            }
            return Err(err);
        }
    }
    let mut crashes: Vec<Instant> = Vec::new();
    let mut stopping = false;
    let mut handover: Option<(UnixStream, Instant)> = None;

    loop {
        let timeout = match &handover {
            Some((_, asked)) => HANDOVER_STOP_TIMEOUT.saturating_sub(asked.elapsed()),
            None => Duration::from_secs(3600),
        };
        let event = match events.recv_timeout(timeout) {
            Ok(event) => event,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Some(current) = &daemon {
                    tracing::warn!("the daemon did not stop for the handover in time; killing it, the kernel resends its requests");
                    let _ = kill(current.pid, Signal::SIGKILL);
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => bail!("event channel closed"),
        };
        match event {
            Event::Signal(signal) => {
                stopping = true;
                match &daemon {
                    Some(current) => {
                        let signal = Signal::try_from(signal).unwrap_or(Signal::SIGTERM);
                        let _ = kill(current.pid, signal);
                    }
                    None => {
                        mount::unmount(&paths.mountpoint);
                        return Ok(Outcome::Exited(ExitCode::SUCCESS));
                    }
                }
            }
            Event::Handover(stream, request) => {
                let matches = request.local == paths.local
                    && request.remote == paths.remote
                    && request.mountpoint == paths.mountpoint;
                if !matches {
                    tracing::warn!(local = %request.local.display(), remote = %request.remote.display(), mountpoint = %request.mountpoint.display(), "rejected a takeover request for other directories");
                    reject(&stream, &format!(
                        "this mount serves local {}, remote {} at {}; the new daemon asked for local {}, remote {} at {}",
                        paths.local.display(), paths.remote.display(), paths.mountpoint.display(),
                        request.local.display(), request.remote.display(), request.mountpoint.display()));
                    continue;
                }
                if stopping || handover.is_some() {
                    reject(
                        &stream,
                        "this mount is already stopping or being handed over",
                    );
                    continue;
                }
                if !kernel_resends(&conn.init) {
                    reject(&stream, &format!(
                        "the kernel speaks FUSE {}, which cannot resend requests (FUSE_NOTIFY_RESEND needs 7.40, Linux 6.9), so requests arriving during a takeover would never be answered; unmount and mount again instead",
                        protocol_version(&conn.init)));
                    continue;
                }
                tracing::info!(
                    "a new dualfs asked for this mount; stopping the daemon for the handover"
                );
                if let Some(current) = &daemon {
                    let _ = kill(current.pid, Signal::SIGUSR1);
                }
                handover = Some((stream, Instant::now()));
            }
            Event::Exited(status) => {
                let _ = daemon.take();
                if let Some((stream, asked)) = handover.take() {
                    send_connection(&stream, conn, restarts)?;
                    tracing::info!(stop = ?asked.elapsed(), "handed the connection over");
                    return Ok(Outcome::HandedOver);
                }
                if stopping && status.code() != Some(0) {
                    // The daemon died before it could unmount because the signal came before
                    // its handlers, so the mount is taken down here. The journal keeps what
                    // was queued.
                    tracing::warn!(%status, "the daemon stopped without unmounting; unmounting");
                    mount::unmount(&paths.mountpoint);
                    return Ok(Outcome::Exited(ExitCode::FAILURE));
                }
                if stopping || status.code() == Some(0) {
                    return Ok(Outcome::Exited(exit_code(status)));
                }
                let crashed = status.signal().is_some() || status.code() == Some(101);
                // A daemon killed from outside (SIGKILL: the OOM killer, an operator) is always
                // restarted; one that keeps failing by itself (a panic, SIGSEGV, SIGABRT) may
                // fail the same way at every start, so those crashes are counted.
                let killed = status.signal() == Some(libc::SIGKILL);
                let now = Instant::now();
                crashes.retain(|at| now.duration_since(*at) < CRASH_WINDOW);
                if !killed {
                    crashes.push(now);
                }
                if !crashed || crashes.len() > MAX_CRASHES {
                    tracing::error!(%status, crashes = crashes.len(), "the daemon failed; unmounting");
                    mount::unmount(&paths.mountpoint);
                    return Ok(Outcome::Exited(ExitCode::FAILURE));
                }
                tracing::warn!(%status, "the daemon crashed; restarting it on the same connection");
                restarts += 1;
                let restarted = spawn(exe, conn, restarts, events_tx)?;
                daemon = Some(restarted);
            }
        }
    }
}

/// Returns the FUSE protocol version (major, minor) of the kernel's INIT request, whose
/// fuse_init_in follows the 40-byte fuse_in_header with major, then minor.
fn init_version(init: &[u8]) -> (u32, u32) {
    let word = |at: usize| {
        init.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    (word(40), word(44))
}

/// Returns the FUSE protocol version of the kernel's INIT request as `major.minor`.
fn protocol_version(init: &[u8]) -> String {
    let (major, minor) = init_version(init);
    format!("{major}.{minor}")
}

/// Checks whether the kernel can resend unanswered requests: FUSE 7.40 (Linux 6.9) or later.
fn kernel_resends(init: &[u8]) -> bool {
    init_version(init) >= (7, 40)
}

/// Asks the kernel to send again every request that an earlier daemon read but did not
/// reply to (FUSE_NOTIFY_RESEND, Linux 6.9 and later).
pub fn request_resend(fuse: impl AsFd) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&16u32.to_le_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    nix::unistd::write(fuse, &header)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_of(major: u32, minor: u32) -> Vec<u8> {
        let mut init = vec![0u8; 104];
        init[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
        init[40..44].copy_from_slice(&major.to_le_bytes());
        init[44..48].copy_from_slice(&minor.to_le_bytes());
        init
    }

    #[test]
    fn default_sockets_of_two_mount_points_differ() {
        let dashed = default_socket(Path::new("/tmp/x-y"));
        let nested = default_socket(Path::new("/tmp/x/y"));
        assert_ne!(dashed, nested);
        assert_eq!(nested, PathBuf::from("/run/dualfs/tmp-x-y.sock"));
        assert_eq!(dashed, PathBuf::from("/run/dualfs/tmp-x\\x2dy.sock"));

        let long = format!("/{}", "d".repeat(200));
        let hashed = default_socket(Path::new(&long));
        assert!(hashed.as_os_str().len() < 108, "{}", hashed.display());
        assert_ne!(hashed, default_socket(Path::new(&format!("{long}e"))));
    }

    #[test]
    fn resend_needs_protocol_7_40() {
        assert!(kernel_resends(&init_of(7, 45)));
        assert!(kernel_resends(&init_of(7, 40)));
        assert!(!kernel_resends(&init_of(7, 39)));
        assert!(!kernel_resends(&[0u8; 10]));
        assert_eq!(protocol_version(&init_of(7, 38)), "7.38");
    }
}
