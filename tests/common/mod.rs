//! Helpers shared by the integration tests: a guard that runs `dualfs mount`
//! over fresh temporary directories, a tree comparison, and wrappers for the
//! external programs that the workloads run.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Name of the state folder that dualfs keeps at the root of the local tree.
pub const STATE_DIR: &str = ".dualfs";

/// Virtual extended attribute that reports the replication state of a path.
pub const STATE_XATTR: &str = "user.dualfs.state";

/// Filesystem type that a dualfs mount shows in /proc/self/mountinfo.
pub const FS_TYPE: &str = "fuse.dualfs";

/// Maximum time from starting the daemon until the mount appears.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Maximum time for the mount root to report `synced`.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Maximum time for the daemon to exit after SIGTERM. It replicates all
/// queued changes before it exits, so this is as long as the sync timeout.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Number of daemon log lines that failure messages include.
const LOG_TAIL_LINES: usize = 60;

/// Path of the dualfs binary that Cargo built for these tests.
pub fn dualfs_binary() -> &'static str {
    env!("CARGO_BIN_EXE_dualfs")
}

/// A running `dualfs mount` over fresh local, remote and mount point
/// directories inside one temporary directory.
///
/// Dropping the guard stops the daemon with SIGTERM, kills it if it has not
/// exited within [`STOP_TIMEOUT`], and lazily unmounts the mount point if it
/// is still mounted, so a panicking test leaves no mount behind.
pub struct Mount {
    local: PathBuf,
    remote: PathBuf,
    mountpoint: PathBuf,
    log_path: PathBuf,
    /// Options added to every start of the daemon, restarts included.
    extra_args: Vec<String>,
    daemon: Option<Child>,
    // Dropped after `Drop::drop` has unmounted, so removing it never walks
    // through a live mount.
    _root: TempDir,
}

impl Mount {
    /// Mounts dualfs with the default options. Panics with the daemon log if
    /// the mount does not appear within [`READY_TIMEOUT`].
    pub fn start() -> Mount {
        Mount::start_with_args(&[])
    }

    /// Mounts dualfs with `extra_args` appended to the command line.
    ///
    /// When the environment variable `DUALFS_TEST_MODE` is set and
    /// `extra_args` contains no `--mode`, its value is passed as `--mode`, so
    /// the whole suite can run in `sync` or `async` mode.
    pub fn start_with_args(extra_args: &[&str]) -> Mount {
        Mount::start_over(None, None, extra_args)
    }

    /// Mounts dualfs over the given local and remote directories (fresh temporary ones where
    /// `None`), for tests that put a fault-injecting filesystem under one of them.
    pub fn start_over(local: Option<&Path>, remote: Option<&Path>, extra_args: &[&str]) -> Mount {
        let root = tempfile::Builder::new()
            .prefix("dualfs-test-")
            .tempdir()
            .expect("failed to create a temporary directory for the mount");
        let root_path = canonical(root.path());
        let mountpoint = root_path.join("mnt");
        let mut fresh = vec![&mountpoint];
        let own_local = root_path.join("local");
        let own_remote = root_path.join("remote");
        let local = match local {
            Some(dir) => dir.to_path_buf(),
            None => {
                fresh.push(&own_local);
                own_local.clone()
            }
        };
        let remote = match remote {
            Some(dir) => dir.to_path_buf(),
            None => {
                fresh.push(&own_remote);
                own_remote.clone()
            }
        };
        for dir in fresh {
            fs::create_dir(dir)
                .unwrap_or_else(|e| panic!("failed to create {}: {e}", dir.display()));
        }
        let log_path = root_path.join("daemon.log");

        // The guard exists before the daemon starts, so its Drop cleans up when the start or
        // the readiness wait panics.
        let mut mount = Mount {
            local,
            remote,
            mountpoint,
            log_path,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            daemon: None,
            _root: root,
        };
        mount.spawn_daemon();
        mount
    }

    /// Starts the daemon over this guard's directories, appending to its log.
    fn spawn_daemon(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("failed to open {}: {e}", self.log_path.display()));
        let log_for_stdout = log
            .try_clone()
            .expect("failed to duplicate the log file descriptor");

        let mut command = Command::new(dualfs_binary());
        command
            .arg("mount")
            .arg("--local")
            .arg(&self.local)
            .arg("--remote")
            .arg(&self.remote)
            .arg(&self.mountpoint);
        let mode_given = self
            .extra_args
            .iter()
            .any(|arg| arg == "--mode" || arg.starts_with("--mode="));
        if let (Ok(mode), false) = (std::env::var("DUALFS_TEST_MODE"), mode_given) {
            command.arg("--mode").arg(mode);
        }
        // Parallel tests must not compete for the default metrics port.
        let metrics_given = self
            .extra_args
            .iter()
            .any(|arg| arg.starts_with("--metrics-addr"));
        if !metrics_given {
            command.arg("--metrics-addr").arg("127.0.0.1:0");
        }
        command
            .args(&self.extra_args)
            // Plain log lines, because the log is read from a file.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log);
        let daemon = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", dualfs_binary()));
        self.daemon = Some(daemon);
        self.wait_ready();
    }

    /// Kills the supervisor and its serving daemon with SIGKILL, as the loss of the whole
    /// process tree (a deleted pod) would, and leaves the dead mount in place ("Transport
    /// endpoint is not connected").
    pub fn crash(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let serving = descendants(daemon.id());
            let _ = daemon.kill();
            let _ = daemon.wait();
            for &pid in &serving {
                // SAFETY: kill has no memory-safety preconditions; the pid is a process this
                // guard's supervisor started, which nothing else reaps.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            for &pid in &serving {
                wait_gone(pid);
            }
            // The connection dies when the last holder's files are released.
            let deadline = Instant::now() + STOP_TIMEOUT;
            while fs::read_dir(&self.mountpoint).is_ok()
                && mount_fs_type(&self.mountpoint).is_some()
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Kills only the serving daemon with SIGKILL; its supervisor keeps the FUSE connection
    /// and restarts it. Returns the new serving daemon's pid once it runs.
    pub fn kill_serving_daemon(&mut self) -> u32 {
        let supervisor = self.pid().expect("the daemon runs");
        let old = serving_pid(supervisor).expect("the supervisor has a serving daemon");
        // SAFETY: kill has no memory-safety preconditions; the pid is the serving daemon
        // this guard's supervisor started.
        unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match serving_pid(supervisor) {
                Some(new) if new != old => return new,
                _ if Instant::now() > deadline => panic!(
                    "the supervisor did not restart its daemon within {READY_TIMEOUT:?}\n{}",
                    self.log_tail()
                ),
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Starts a second `dualfs mount --takeover` over the same directories and waits until
    /// it has taken the mount over and the first one has exited.
    pub fn take_over(&mut self) {
        let mut old = self.daemon.take().expect("the daemon runs");
        self.extra_args.push("--takeover".into());
        self.spawn_daemon();
        self.extra_args.pop();
        match wait_timeout(&mut old, STOP_TIMEOUT) {
            Some(status) if status.success() => {}
            other => panic!(
                "the old dualfs did not hand over and exit cleanly ({other:?})\n{}",
                self.log_tail()
            ),
        }
    }

    /// Returns the address of the metrics server of the daemon that serves now: the one the
    /// log names last, because every daemon started on the connection logs its own.
    pub fn metrics_addr(&self) -> String {
        for _ in 0..100 {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            let latest = log
                .lines()
                .rev()
                .find(|line| line.contains("serving /metrics"));
            if let Some(line) = latest {
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
                    .expect("the log line names the address");
                return addr.to_string();
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the daemon never logged its metrics address:\n{}",
            self.log_tail()
        );
    }

    /// Process id of the serving daemon that the supervisor runs.
    pub fn serving_pid(&self) -> Option<u32> {
        serving_pid(self.pid()?)
    }

    /// Starts the daemon again over the same directories after `crash` or `unmount`.
    pub fn restart(&mut self) {
        assert!(
            self.daemon.is_none(),
            "restart called while the daemon runs"
        );
        self.spawn_daemon();
    }

    /// Local (primary) backing directory.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Remote (mirror) backing directory.
    pub fn remote(&self) -> &Path {
        &self.remote
    }

    /// Mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Process id of the daemon, or `None` after it was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Returns the daemon's stdout and stderr so far, limited to the last
    /// [`LOG_TAIL_LINES`] lines.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("(cannot read daemon log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        if lines.is_empty() {
            "(daemon log is empty)".to_string()
        } else {
            lines[start..].join("\n")
        }
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let daemon = self.daemon.as_mut().expect("daemon is running");
            if let Some(status) = daemon.try_wait().expect("failed to poll the daemon") {
                self.daemon = None;
                panic!(
                    "dualfs exited with {status} before {} was mounted; processes:\n{}\nmounts there:\n{}\ndaemon log:\n{}",
                    self.mountpoint.display(),
                    dualfs_processes(),
                    mounts_at(&self.mountpoint),
                    self.log_tail()
                );
            }
            // A dead mount left by a killed daemon keeps its type and may still answer stat
            // from the kernel's cache, so the mount must serve a listing too. The new daemon
            // may detach the dead mount between the two checks, and the bare folder can be
            // listed as well, so the folder's device must be the mount's own.
            let entry = mount_entry(&self.mountpoint);
            let fs_type = entry.as_ref().map(|(fs_type, _)| fs_type.clone());
            if let Some((FS_TYPE, device)) = entry.as_ref().map(|(t, d)| (t.as_str(), *d)) {
                let listed = fs::read_dir(&self.mountpoint).is_ok();
                let own_device = fs::metadata(&self.mountpoint)
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::dev(&m) == device);
                if listed && own_device {
                    return;
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "timed out after {READY_TIMEOUT:?} waiting for {} to be mounted as {FS_TYPE} \
                     (current filesystem type: {}); daemon log:\n{}",
                    self.mountpoint.display(),
                    fs_type.as_deref().unwrap_or("not mounted"),
                    self.log_tail()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Reads the replication state of `path` (a path on the mount).
    pub fn state_of(&self, path: &Path) -> io::Result<String> {
        let value = get_xattr(path, STATE_XATTR)?;
        Ok(String::from_utf8_lossy(&value).into_owned())
    }

    /// Waits until the mount root reports `synced`, that is until nothing is
    /// queued for the remote. Panics after [`SYNC_TIMEOUT`] with the last
    /// state read, or at once if the daemon exits.
    pub fn wait_synced(&mut self) {
        let started = Instant::now();
        let mut last_state = String::from("(not read yet)");
        loop {
            if let Some(daemon) = self.daemon.as_mut() {
                if let Some(status) = daemon.try_wait().expect("failed to poll the daemon") {
                    self.daemon = None;
                    panic!(
                        "dualfs exited with {status} while waiting for {} to be synced \
                         (last state: {last_state}); daemon log:\n{}",
                        self.mountpoint.display(),
                        self.log_tail()
                    );
                }
            } else {
                panic!("wait_synced called after the daemon was stopped");
            }
            match get_xattr(&self.mountpoint, STATE_XATTR) {
                Ok(value) if value == b"synced" => return,
                Ok(value) => last_state = format!("{:?}", String::from_utf8_lossy(&value)),
                Err(error) => last_state = format!("getxattr failed: {error}"),
            }
            if started.elapsed() > SYNC_TIMEOUT {
                panic!(
                    "timed out after {SYNC_TIMEOUT:?} waiting for {STATE_XATTR} of {} to be \
                     \"synced\"; last state: {last_state}; daemon log:\n{}",
                    self.mountpoint.display(),
                    self.log_tail()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the daemon with SIGTERM and panics unless it exits with status 0
    /// within [`STOP_TIMEOUT`] and the mount point is no longer mounted.
    /// The backing directories stay in place for inspection.
    pub fn unmount(&mut self) {
        let problems = self.stop();
        assert!(
            problems.is_empty(),
            "unmounting {} failed:\n{}\ndaemon log:\n{}",
            self.mountpoint.display(),
            problems.join("\n"),
            self.log_tail()
        );
    }

    /// Stops the daemon and removes the mount. Returns what went wrong
    /// instead of panicking, because Drop calls it.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mut daemon) = self.daemon.take() {
            let pid = daemon.id() as libc::pid_t;
            // SAFETY: kill has no memory-safety preconditions. The pid belongs
            // to a child that has not been reaped yet, so it cannot have been
            // reused by another process.
            let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
            if sent != 0 {
                problems.push(format!(
                    "sending SIGTERM to dualfs (pid {pid}) failed: {}",
                    io::Error::last_os_error()
                ));
            }
            match wait_timeout(&mut daemon, STOP_TIMEOUT) {
                Some(status) if status.success() => {}
                Some(status) => problems.push(format!("dualfs exited with {status} after SIGTERM")),
                None => {
                    problems.push(format!(
                        "dualfs (pid {pid}) did not exit within {STOP_TIMEOUT:?} after SIGTERM, \
                         so it was killed with SIGKILL"
                    ));
                    let _ = daemon.kill();
                    let _ = daemon.wait();
                }
            }
        }
        if let Some(fs_type) = mount_fs_type(&self.mountpoint) {
            problems.push(format!(
                "{} was still mounted ({fs_type}) after the daemon exited, so it was \
                 unmounted with umount -l",
                self.mountpoint.display()
            ));
            lazy_unmount(&self.mountpoint);
        }
        problems
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let problems = self.stop();
        if !problems.is_empty() || thread::panicking() {
            eprintln!(
                "cleanup of the dualfs mount at {}:\n{}\ndaemon log:\n{}",
                self.mountpoint.display(),
                if problems.is_empty() {
                    "(no problems)".to_string()
                } else {
                    problems.join("\n")
                },
                self.log_tail()
            );
        }
    }
}

/// Sends one HTTP GET request and returns the status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|err| panic!("GET {path} from {addr} failed: {err}"))
}

/// Like [`http_get`], but returns connection errors instead of panicking.
pub fn try_http_get(addr: &str, path: &str) -> io::Result<(u16, String)> {
    use std::io::Write;

    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The dualfs processes that run, for failure messages.
fn dualfs_processes() -> String {
    let output = Command::new("ps")
        .args(["-eo", "pid,ppid,stat,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    output
        .lines()
        .filter(|line| line.contains("dualfs"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The mount table lines for `path`, for failure messages.
fn mounts_at(path: &Path) -> String {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter(|line| line.contains(wanted.as_ref()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The child process of `supervisor` (its serving daemon), if one runs.
pub fn serving_pid(supervisor: u32) -> Option<u32> {
    let children =
        fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Returns the processes below `pid`, children of any of its threads included, so that
/// killing them all leaves no process with the FUSE connection open.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut pending = vec![pid];
    while let Some(parent) = pending.pop() {
        let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !found.contains(&child) {
                    found.push(child);
                    pending.push(child);
                }
            }
        }
    }
    found
}

/// Waits until every thread of process `pid` has exited: its leader is a zombie or gone and
/// it has no other task left (a zombie leader alone may still have threads that hold files).
fn wait_gone(pid: u32) {
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        let tasks = fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count());
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        match tasks {
            Err(_) => return,
            Ok(count) if count <= 1 && (stat.is_empty() || stat.contains(") Z ")) => return,
            _ => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Runs `umount -l` on `path` and reports a failure on stderr.
pub fn lazy_unmount(path: &Path) {
    match Command::new("umount").arg("-l").arg(path).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "umount -l {} failed with {}: {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => eprintln!("failed to run umount -l {}: {error}", path.display()),
    }
}

/// Waits up to `timeout` for `child` to exit and returns its status, or
/// `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() > timeout => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(error) => panic!("failed to poll child process {}: {error}", child.id()),
        }
    }
}

/// Returns the filesystem type mounted at `path` according to
/// /proc/self/mountinfo, or `None` if nothing is mounted there. With stacked
/// mounts, the last (topmost) one wins.
pub fn mount_fs_type(path: &Path) -> Option<String> {
    mount_entry(path).map(|(fs_type, _)| fs_type)
}

/// Returns the type and device number of the topmost mount at `path`, according to
/// /proc/self/mountinfo.
pub fn mount_entry(path: &Path) -> Option<(String, u64)> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").expect("failed to read /proc/self/mountinfo");
    let mut found = None;
    for line in mountinfo.lines() {
        // Format: id parent major:minor root mount-point options [optional...] - type source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        if Path::new(&unescape_mountinfo(mount_point)) == path {
            let device = before.split(' ').nth(2).and_then(|numbers| {
                let (major, minor) = numbers.split_once(':')?;
                Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
            });
            found = after
                .split(' ')
                .next()
                .zip(device)
                .map(|(fs_type, device)| (fs_type.to_string(), device));
        }
    }
    found
}

/// Returns every mount point at or below `root` with its filesystem type,
/// according to /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<(PathBuf, String)> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").expect("failed to read /proc/self/mountinfo");
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        if mount_point.starts_with(root) {
            let fs_type = after.split(' ').next().unwrap_or_default().to_string();
            mounts.push((mount_point, fs_type));
        }
    }
    mounts
}

/// Decodes the octal escapes (`\040` for a space and so on) that the kernel
/// writes for special characters in mountinfo paths.
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let is_escape = bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b));
        if is_escape {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            decoded.push(value);
            i += 4;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::ffi::OsString::from_vec(decoded)
}

/// Reads the extended attribute `name` of `path` (following symlinks).
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path contains a NUL byte");
    let c_name = CString::new(name).expect("attribute name contains a NUL byte");
    let mut buffer = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated and the buffer pointer is
        // valid for `buffer.len()` bytes.
        let length = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if length >= 0 {
            buffer.truncate(length as usize);
            return Ok(buffer);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 4, 0);
            continue;
        }
        return Err(error);
    }
}

/// Sets the access and modification time of `path` without following a
/// final symlink.
pub fn set_times(path: &Path, seconds: i64, nanoseconds: i64) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path contains a NUL byte");
    let time = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: nanoseconds as libc::c_long,
    };
    let times = [time, time];
    // SAFETY: the path is NUL-terminated and `times` contains the two
    // timespec values that utimensat reads.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        result,
        0,
        "utimensat({}, {seconds}.{nanoseconds:09}) failed: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Waits up to `timeout` for `child` to exit and returns its status. Kills
/// the child and panics if it is still running then. `name` names the
/// process in the message.
pub fn wait_for_exit(child: &mut Child, timeout: Duration, name: &str) -> ExitStatus {
    match wait_timeout(child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not finish within {timeout:?}, so it was killed");
        }
    }
}

/// Returns the canonical form of `path`, panicking with the path on error.
pub fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("failed to canonicalize {}: {e}", path.display()))
}

/// Panics unless `program` is on PATH, naming the Debian package to install.
pub fn require_program(program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .map(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
            .unwrap_or(false)
    });
    assert!(
        found,
        "this test needs the program `{program}`, which is not on PATH; install the package \
         `{package}` (for example `apt-get install {package}`)"
    );
}

/// Runs `command`, panics with its output unless it exits with status 0, and
/// returns its output.
pub fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `command` like [`run`] and returns its stdout as a string with the
/// trailing newline removed.
pub fn run_stdout(command: &mut Command) -> String {
    let output = run(command);
    String::from_utf8_lossy(&output.stdout)
        .trim_end_matches('\n')
        .to_string()
}

/// Checks that apply when two trees are compared.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// Skip the state folder `.dualfs` at the root of the left tree.
    pub skip_left_state_dir: bool,
    /// Compare the mtime of directories (the mtime of regular files is always
    /// compared, the mtime of symlinks never).
    pub directory_mtimes: bool,
    /// Compare mode, owner and mtime of the two root directories.
    pub root_attributes: bool,
}

impl CompareOptions {
    /// Returns the options for comparing a local tree with its remote tree,
    /// which checks everything that a replica must reproduce.
    pub fn replica() -> CompareOptions {
        CompareOptions {
            skip_left_state_dir: true,
            directory_mtimes: true,
            root_attributes: true,
        }
    }

    /// Returns the options for comparing two separate copies, for example the
    /// same archive unpacked twice, where directory times are creation times.
    pub fn copy_without_directory_times() -> CompareOptions {
        CompareOptions {
            skip_left_state_dir: false,
            directory_mtimes: false,
            root_attributes: false,
        }
    }
}

/// Compares a local tree with its remote tree and returns one line per
/// difference, each naming the relative path. See [`compare_dirs`].
pub fn compare_trees(local: &Path, remote: &Path) -> Vec<String> {
    compare_dirs(local, "local", remote, "remote", CompareOptions::replica())
}

/// Compares two directory trees and returns one line per difference, each
/// naming the relative path (`.` is the root) and both values.
///
/// Compared: names, file types, permission bits including setuid, setgid and
/// sticky, uid and gid, symlink targets, device numbers, and for regular
/// files size, byte contents and mtime to the nanosecond. Directory mtimes
/// depend on `options`. Directory sizes are not compared because they depend
/// on the filesystem. Hard links are compared as groups: the paths that share
/// an inode in one tree must share one inode in the other, and no more paths.
pub fn compare_dirs(
    left: &Path,
    left_label: &str,
    right: &Path,
    right_label: &str,
    options: CompareOptions,
) -> Vec<String> {
    let mut differences = Vec::new();
    let left_entries = scan_tree(
        left,
        left_label,
        options.skip_left_state_dir,
        &mut differences,
    );
    let right_entries = scan_tree(right, right_label, false, &mut differences);

    let all_paths: BTreeSet<&PathBuf> = left_entries.keys().chain(right_entries.keys()).collect();
    for relative in all_paths {
        let display_path = show_relative(relative);
        match (left_entries.get(relative), right_entries.get(relative)) {
            (Some(_), None) => differences.push(format!("{display_path}: only in {left_label}")),
            (None, Some(_)) => differences.push(format!("{display_path}: only in {right_label}")),
            (Some(left_entry), Some(right_entry)) => {
                let is_root = relative.as_os_str().is_empty();
                let labels = [left_label, right_label];
                compare_entry(
                    &display_path,
                    labels,
                    left_entry,
                    right_entry,
                    is_root,
                    options,
                    &mut differences,
                );
            }
            (None, None) => unreachable!("path comes from one of the maps"),
        }
    }

    compare_hard_links(
        &left_entries,
        &right_entries,
        [left_label, right_label],
        &mut differences,
    );
    differences
}

/// Panics with the list of differences, headed by `context`, unless it is
/// empty.
pub fn assert_no_differences(differences: &[String], context: &str) {
    const SHOWN: usize = 200;
    if differences.is_empty() {
        return;
    }
    let mut message = format!("{context}: {} differences\n", differences.len());
    for line in differences.iter().take(SHOWN) {
        let _ = writeln!(message, "  {line}");
    }
    if differences.len() > SHOWN {
        let _ = writeln!(message, "  ... and {} more", differences.len() - SHOWN);
    }
    panic!("{message}");
}

struct TreeEntry {
    absolute: PathBuf,
    metadata: fs::Metadata,
    symlink_target: Option<PathBuf>,
}

fn show_relative(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        ".".to_string()
    } else {
        relative.display().to_string()
    }
}

/// Collects every entry below `root` (and the root itself under the empty
/// relative path) without following symlinks. Read errors become
/// differences so that a comparison never passes by skipping a directory.
fn scan_tree(
    root: &Path,
    label: &str,
    skip_state_dir: bool,
    differences: &mut Vec<String>,
) -> BTreeMap<PathBuf, TreeEntry> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let absolute = root.join(&relative);
        let metadata = match fs::symlink_metadata(&absolute) {
            Ok(metadata) => metadata,
            Err(error) => {
                differences.push(format!(
                    "{}: cannot stat in {label}: {error}",
                    show_relative(&relative)
                ));
                continue;
            }
        };
        let symlink_target = if metadata.file_type().is_symlink() {
            match fs::read_link(&absolute) {
                Ok(target) => Some(target),
                Err(error) => {
                    differences.push(format!(
                        "{}: cannot read symlink in {label}: {error}",
                        show_relative(&relative)
                    ));
                    None
                }
            }
        } else {
            None
        };
        if metadata.is_dir() {
            match fs::read_dir(&absolute) {
                Ok(children) => {
                    for child in children {
                        match child {
                            Ok(child) => {
                                let name = child.file_name();
                                if skip_state_dir
                                    && relative.as_os_str().is_empty()
                                    && name == STATE_DIR
                                {
                                    continue;
                                }
                                pending.push(relative.join(name));
                            }
                            Err(error) => differences.push(format!(
                                "{}: cannot list in {label}: {error}",
                                show_relative(&relative)
                            )),
                        }
                    }
                }
                Err(error) => differences.push(format!(
                    "{}: cannot list in {label}: {error}",
                    show_relative(&relative)
                )),
            }
        }
        entries.insert(
            relative,
            TreeEntry {
                absolute,
                metadata,
                symlink_target,
            },
        );
    }
    entries
}

fn describe_type(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_file() {
        "regular file"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "unknown type"
    }
}

fn compare_entry(
    display_path: &str,
    [left_label, right_label]: [&str; 2],
    left: &TreeEntry,
    right: &TreeEntry,
    is_root: bool,
    options: CompareOptions,
    differences: &mut Vec<String>,
) {
    let (left_meta, right_meta) = (&left.metadata, &right.metadata);
    let left_type = describe_type(left_meta.file_type());
    let right_type = describe_type(right_meta.file_type());
    if left_type != right_type {
        differences.push(format!(
            "{display_path}: file type differs: {left_label} {left_type}, {right_label} {right_type}"
        ));
        return;
    }
    let mut differ = |attribute: &str, left_value: String, right_value: String| {
        if left_value != right_value {
            differences.push(format!(
                "{display_path}: {attribute} differs: {left_label} {left_value}, {right_label} {right_value}"
            ));
        }
    };
    let file_type = left_meta.file_type();
    let check_attributes = !is_root || options.root_attributes;

    // Symlink permission bits are always 0777 on Linux and cannot be changed.
    if check_attributes && !file_type.is_symlink() {
        differ(
            "mode",
            format!("{:#o}", left_meta.mode() & 0o7777),
            format!("{:#o}", right_meta.mode() & 0o7777),
        );
    }
    if check_attributes {
        differ(
            "uid",
            left_meta.uid().to_string(),
            right_meta.uid().to_string(),
        );
        differ(
            "gid",
            left_meta.gid().to_string(),
            right_meta.gid().to_string(),
        );
    }
    let compare_mtime = if file_type.is_dir() {
        options.directory_mtimes && check_attributes
    } else {
        !file_type.is_symlink()
    };
    if compare_mtime {
        differ("mtime", format_mtime(left_meta), format_mtime(right_meta));
    }
    if file_type.is_symlink() {
        differ(
            "symlink target",
            format!("{:?}", left.symlink_target),
            format!("{:?}", right.symlink_target),
        );
    }
    if file_type.is_block_device() || file_type.is_char_device() {
        differ(
            "device number",
            left_meta.rdev().to_string(),
            right_meta.rdev().to_string(),
        );
    }
    if file_type.is_file() {
        if left_meta.size() != right_meta.size() {
            differ(
                "size",
                left_meta.size().to_string(),
                right_meta.size().to_string(),
            );
        } else if let Some(difference) = compare_contents(&left.absolute, &right.absolute) {
            differences.push(format!("{display_path}: contents differ: {difference}"));
        }
    }
}

fn format_mtime(metadata: &fs::Metadata) -> String {
    format!("{}.{:09}", metadata.mtime(), metadata.mtime_nsec())
}

/// Returns `None` if both files hold the same bytes, otherwise a description
/// of the first difference.
pub fn compare_contents(left: &Path, right: &Path) -> Option<String> {
    let open =
        |path: &Path| File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()));
    let (mut left_file, mut right_file) = match (open(left), open(right)) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => return Some(e),
    };
    let mut left_buffer = vec![0u8; 1 << 16];
    let mut right_buffer = vec![0u8; 1 << 16];
    let mut offset: u64 = 0;
    loop {
        let left_read = match read_full(&mut left_file, &mut left_buffer) {
            Ok(n) => n,
            Err(e) => return Some(format!("cannot read {}: {e}", left.display())),
        };
        let right_read = match read_full(&mut right_file, &mut right_buffer) {
            Ok(n) => n,
            Err(e) => return Some(format!("cannot read {}: {e}", right.display())),
        };
        let common = left_read.min(right_read);
        if let Some(index) = (0..common).find(|&i| left_buffer[i] != right_buffer[i]) {
            return Some(format!(
                "first difference at byte {}: {:#04x} vs {:#04x}",
                offset + index as u64,
                left_buffer[index],
                right_buffer[index]
            ));
        }
        if left_read != right_read {
            return Some(format!(
                "one file ends at byte {} and the other goes on",
                offset + common as u64
            ));
        }
        if left_read == 0 {
            return None;
        }
        offset += left_read as u64;
    }
}

/// Reads until `buffer` is full or the file ends, and returns the byte count.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Relative paths that name one inode.
type LinkGroup = BTreeSet<PathBuf>;

/// Groups the non-directory paths of a tree by inode and returns, for every
/// path that has other names in the tree, the whole group.
fn hard_link_groups(entries: &BTreeMap<PathBuf, TreeEntry>) -> BTreeMap<PathBuf, LinkGroup> {
    let mut by_inode: BTreeMap<(u64, u64), LinkGroup> = BTreeMap::new();
    for (relative, entry) in entries {
        if !entry.metadata.is_dir() {
            let key = (entry.metadata.dev(), entry.metadata.ino());
            by_inode.entry(key).or_default().insert(relative.clone());
        }
    }
    let mut groups = BTreeMap::new();
    for group in by_inode.into_values().filter(|group| group.len() > 1) {
        for path in &group {
            groups.insert(path.clone(), group.clone());
        }
    }
    groups
}

fn compare_hard_links(
    left: &BTreeMap<PathBuf, TreeEntry>,
    right: &BTreeMap<PathBuf, TreeEntry>,
    [left_label, right_label]: [&str; 2],
    differences: &mut Vec<String>,
) {
    let left_groups = hard_link_groups(left);
    let right_groups = hard_link_groups(right);
    let linked_paths: BTreeSet<&PathBuf> = left_groups.keys().chain(right_groups.keys()).collect();
    // Each mismatching pair of groups is reported once, not once per path.
    let mut reported: BTreeSet<(Option<&LinkGroup>, Option<&LinkGroup>)> = BTreeSet::new();
    let show_group = |group: Option<&LinkGroup>| match group {
        Some(group) => format!(
            "[{}]",
            group
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no other names".to_string(),
    };
    for path in linked_paths {
        let left_group = left_groups.get(path);
        let right_group = right_groups.get(path);
        if left_group == right_group || !reported.insert((left_group, right_group)) {
            continue;
        }
        differences.push(format!(
            "{}: hard links differ: {left_label} {}, {right_label} {}",
            path.display(),
            show_group(left_group),
            show_group(right_group)
        ));
    }
}
