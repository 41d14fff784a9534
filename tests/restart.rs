//! Restarts under a running application: a takeover by a new dualfs process and a kill -9 of
//! the serving daemon must not show the application an error or lose a byte, and the remote
//! must converge afterwards.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Mount;

/// What the application saw: its first error, if any, how many rounds it made, and when each
/// round started and how long it took.
struct AppReport {
    error: Option<String>,
    rounds: u64,
    timeline: Vec<(Instant, Duration)>,
}

impl AppReport {
    /// Returns the maximum duration of the rounds that overlapped `window`: the pause the
    /// application saw then.
    fn longest_in(&self, window: (Instant, Instant)) -> Duration {
        self.timeline
            .iter()
            .filter(|(start, took)| *start <= window.1 && *start + *took >= window.0)
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default()
    }
}

/// Runs an application that keeps a log file open for appending and one open for reading, appends
/// a line and reads the whole file back every round, fsyncs once a second, and creates and
/// renames a small file every round.
fn application(dir: PathBuf, stop: Arc<AtomicBool>) -> AppReport {
    let mut report = AppReport {
        error: None,
        rounds: 0,
        timeline: Vec::new(),
    };
    let run = |report: &mut AppReport| -> std::io::Result<()> {
        let log_path = dir.join("app.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut reader = File::open(&log_path)?;
        let mut expected = String::new();
        let mut last_sync = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let line = format!("round {}\n", report.rounds);
            writer.write_all(line.as_bytes())?;
            expected.push_str(&line);
            if last_sync.elapsed() >= Duration::from_secs(1) {
                writer.sync_all()?;
                last_sync = Instant::now();
            }
            let mut seen = String::new();
            reader.seek(SeekFrom::Start(0))?;
            reader.read_to_string(&mut seen)?;
            if seen != expected {
                return Err(std::io::Error::other(format!(
                    "round {}: read back {} bytes, wrote {}",
                    report.rounds,
                    seen.len(),
                    expected.len()
                )));
            }
            let temp = dir.join(format!("part-{}.tmp", report.rounds % 7));
            fs::write(&temp, line.as_bytes())?;
            fs::rename(&temp, dir.join(format!("part-{}", report.rounds % 7)))?;
            report.timeline.push((started, started.elapsed()));
            report.rounds += 1;
            thread::sleep(Duration::from_millis(10));
        }
        writer.sync_all()
    };
    if let Err(err) = run(&mut report) {
        report.error = Some(err.to_string());
    }
    report
}

fn start_application(mount: &Mount) -> (Arc<AtomicBool>, thread::JoinHandle<AppReport>) {
    let stop = Arc::new(AtomicBool::new(false));
    let dir = mount.path().to_path_buf();
    let flag = stop.clone();
    (stop, thread::spawn(move || application(dir, flag)))
}

fn finish_application(
    stop: Arc<AtomicBool>,
    app: thread::JoinHandle<AppReport>,
    mount: &Mount,
) -> AppReport {
    stop.store(true, Ordering::Relaxed);
    let report = app.join().expect("the application thread panicked");
    assert!(
        report.error.is_none(),
        "the application saw an error after {} rounds: {}\ndaemon log:\n{}",
        report.rounds,
        report.error.clone().unwrap_or_default(),
        mount.log_tail()
    );
    assert!(
        report.rounds > 20,
        "the application made only {} rounds",
        report.rounds
    );
    report
}

fn converge(mut mount: Mount) {
    mount.wait_synced();
    let (local, remote) = (mount.local().to_path_buf(), mount.remote().to_path_buf());
    mount.unmount();
    let differences = common::compare_trees(&local, &remote);
    assert!(
        differences.is_empty(),
        "the remote differs from the local tree:\n{}",
        differences.join("\n")
    );
}

#[test]
fn application_survives_takeovers_and_daemon_kills() {
    let mut mount = Mount::start();
    let (stop, app) = start_application(&mount);
    let calm_start = Instant::now();
    thread::sleep(Duration::from_millis(700));
    let calm = (calm_start, Instant::now());

    let mut events = Vec::new();
    for round in 0..4 {
        let started = Instant::now();
        let what = if round % 2 == 0 {
            mount.take_over();
            "takeover"
        } else {
            mount.kill_serving_daemon();
            "kill -9"
        };
        // The pause ends with the first round after the event; the window reaches past it.
        thread::sleep(Duration::from_millis(700));
        events.push((what, (started, Instant::now())));
    }

    let report = finish_application(stop, app, &mount);
    eprintln!(
        "application: {} rounds; longest round without a restart {:?}",
        report.rounds,
        report.longest_in(calm)
    );
    for (what, window) in events {
        eprintln!(
            "  longest round around a {what}: {:?}",
            report.longest_in(window)
        );
    }
    let log = fs::read_to_string(mount.path().join("app.log")).unwrap();
    assert!(log
        .lines()
        .enumerate()
        .all(|(i, line)| line == format!("round {i}")));
    converge(mount);
}

/// A file open for reading uses FUSE passthrough, which the kernel keeps serving while no
/// daemon runs; a writer opened after a restart must not be refused for mixing I/O modes.
#[test]
fn passthrough_readers_keep_working_across_a_restart() {
    let mut mount = Mount::start();
    let path = mount.path().join("shared.bin");
    fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    let mut reader = File::open(&path).unwrap();

    mount.kill_serving_daemon();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|b| *b == 7));

    // The new daemon read the inode's passthrough open from the record, so the writer is not
    // rejected.
    let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all(&[9u8; 4096]).unwrap();
    writer.sync_all().unwrap();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|b| *b == 9));
    drop((reader, writer));

    mount.take_over();
    assert_eq!(fs::read(&path).unwrap()[..4096], [9u8; 4096]);
    converge(mount);
}

/// A write that the daemon has read but not answered when it is killed is sent again by the
/// kernel to the restarted daemon; the application only sees a longer call.
#[test]
fn request_in_flight_at_a_kill_is_resent() {
    let local_backing = tempfile::Builder::new()
        .prefix("dualfs-test-local-")
        .tempdir()
        .unwrap();
    let local = faultfs::FaultFs::mount(local_backing.path());
    let mut mount = Mount::start_over(Some(local.path()), None, &[]);
    let path = mount.path().join("slow.txt");
    fs::write(&path, b"before\n").unwrap();

    local.set_rules("write slow.txt delay=1500ms");
    let writer_path = path.clone();
    let writer = thread::spawn(move || {
        let mut file = OpenOptions::new().append(true).open(&writer_path)?;
        file.write_all(b"during the kill\n")?;
        file.sync_all()
    });
    // Wait until the write is inside the daemon, held by the delay.
    wait_for_calls(&local, &["write"]);
    mount.kill_serving_daemon();
    local.clear_rules();

    writer
        .join()
        .unwrap()
        .expect("the write in flight at the kill failed");
    assert_eq!(fs::read(&path).unwrap(), b"before\nduring the kill\n");
    converge(mount);
    drop(local);
}

/// Waits until each of `calls` has reached the fault-injecting local tree.
fn wait_for_calls(local: &faultfs::FaultFs, calls: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for call in calls {
        while local.count(call) == 0 {
            assert!(
                Instant::now() < deadline,
                "{call} never reached the local tree"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A mkdir and an unlink held inside the daemon when it is killed: the kernel sends them
/// again, and whether or not they ran before the kill, the application gets success.
#[test]
fn namespace_changes_in_flight_at_a_kill_succeed() {
    let local_backing = tempfile::Builder::new()
        .prefix("dualfs-test-local-")
        .tempdir()
        .unwrap();
    let local = faultfs::FaultFs::mount(local_backing.path());
    let mut mount = Mount::start_over(Some(local.path()), None, &[]);
    fs::write(mount.path().join("doomed"), b"x").unwrap();

    local.set_rules("mkdir fresh delay=1500ms\nunlink doomed delay=1500ms");
    let root = mount.path().to_path_buf();
    let mkdir = thread::spawn({
        let root = root.clone();
        move || fs::create_dir(root.join("fresh"))
    });
    let unlink = thread::spawn(move || fs::remove_file(root.join("doomed")));
    wait_for_calls(&local, &["mkdir", "unlink"]);
    mount.kill_serving_daemon();
    local.clear_rules();

    mkdir
        .join()
        .unwrap()
        .expect("the mkdir in flight at the kill failed");
    unlink
        .join()
        .unwrap()
        .expect("the unlink in flight at the kill failed");
    assert!(mount.path().join("fresh").is_dir());
    assert!(!mount.path().join("doomed").exists());
    converge(mount);
    drop(local);
}

/// A file unlinked while open (a temporary file) keeps working through a kill and a
/// takeover, and its hidden link goes with its last handle.
#[test]
fn unlinked_open_file_survives_restarts() {
    let mut mount = Mount::start();
    let path = mount.path().join("scratch.tmp");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.write_all(b"before ").unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(file.metadata().unwrap().nlink(), 0);

    mount.kill_serving_daemon();
    file.write_all(b"kill ").unwrap();
    mount.take_over();
    file.write_all(b"takeover").unwrap();
    file.sync_all().unwrap();
    let mut content = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut content).unwrap();
    assert_eq!(content, "before kill takeover");
    assert_eq!(file.metadata().unwrap().nlink(), 0);
    assert!(!path.exists());
    drop(file);

    // The release reaches the daemon after close returns.
    let orphans = mount.local().join(".dualfs/orphans");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_dir(&orphans).map_or(0, |d| d.count()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the hidden link outlived the last handle"
        );
        thread::sleep(Duration::from_millis(10));
    }
    converge(mount);
}

/// A takeover hands the node table over, so the new daemon resolves the kernel's node ids
/// without walking the trees (which takes long on a large EFS tree).
#[test]
fn takeover_hands_node_table_over() {
    let mut mount = Mount::start();
    fs::create_dir_all(mount.path().join("a/b")).unwrap();
    fs::write(mount.path().join("a/b/file"), b"content").unwrap();
    let mut open = File::open(mount.path().join("a/b/file")).unwrap();

    mount.take_over();
    let mut content = String::new();
    open.read_to_string(&mut content).unwrap();
    assert_eq!(content, "content");
    assert_eq!(fs::read(mount.path().join("a/b/file")).unwrap(), b"content");

    let log = mount.log_tail();
    assert!(
        log.contains("took over the node table of the previous daemon"),
        "the new daemon did not get the node table:\n{log}"
    );
    assert!(
        !log.contains("learned the node ids of the previous daemon"),
        "the new daemon walked the trees although it got the table:\n{log}"
    );
    drop(open);
    converge(mount);
}

/// The restarts of the serving daemon on a live connection are counted in /metrics, across
/// takeovers too.
#[test]
fn restarts_counted_in_metrics() {
    let mut mount = Mount::start();
    assert_restarts(&mount, 0);

    mount.kill_serving_daemon();
    assert_restarts(&mount, 1);

    mount.take_over();
    assert_restarts(&mount, 2);

    converge(mount);
}

/// Waits until the metrics server of the daemon that serves now reports `expected` restarts.
/// Right after a restart the log may still name the previous daemon's server, so this polls.
fn assert_restarts(mount: &Mount, expected: u64) {
    let expected_line = format!("dualfs_daemon_restarts {expected}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((200, body)) = common::try_http_get(&mount.metrics_addr(), "/metrics") {
            last = body
                .lines()
                .find(|line| line.starts_with("dualfs_daemon_restarts "))
                .unwrap_or("(no dualfs_daemon_restarts line)")
                .to_string();
            if last == expected_line {
                return;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("/metrics never showed {expected_line:?}; last seen {last:?}");
}

/// Two mounts given the same --handover-socket: the second is rejected before it mounts,
/// instead of taking the first one's socket.
#[test]
fn shared_handover_socket_rejected() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("shared.sock");
    let socket_arg = format!("--handover-socket={}", socket.display());
    let first = Mount::start_with_args(&[&socket_arg]);

    let second = tempfile::tempdir().unwrap();
    for dir in ["local", "remote", "mnt"] {
        fs::create_dir(second.path().join(dir)).unwrap();
    }
    let output = Command::new(common::dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(second.path().join("local"))
        .arg("--remote")
        .arg(second.path().join("remote"))
        .arg("--metrics-addr=off")
        .arg(&socket_arg)
        .arg(second.path().join("mnt"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the second mount started: {stderr}"
    );
    assert!(
        stderr.contains("another dualfs listens for takeovers"),
        "unexpected error: {stderr}"
    );
    assert_eq!(common::mount_fs_type(&second.path().join("mnt")), None);
    // The first mount still owns its socket.
    assert!(UnixStream::connect(&socket).is_ok());
    converge(first);
}

fn dualfs_takeover(mount: &Mount, local: &Path) -> std::process::Output {
    Command::new(common::dualfs_binary())
        .arg("mount")
        .arg("--takeover")
        .arg("--local")
        .arg(local)
        .arg("--remote")
        .arg(mount.remote())
        .arg("--metrics-addr")
        .arg("off")
        .arg(mount.path())
        .output()
        .unwrap()
}

#[test]
fn takeover_with_other_directories_rejected() {
    let mount = Mount::start();
    fs::write(mount.path().join("kept"), b"data").unwrap();
    let other = tempfile::tempdir().unwrap();

    let output = dualfs_takeover(&mount, other.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rejected the takeover") && stderr.contains("this mount serves local"),
        "unexpected error: {stderr}"
    );
    // The running mount is untouched.
    assert_eq!(fs::read(mount.path().join("kept")).unwrap(), b"data");
    assert!(mount.serving_pid().is_some());
    converge(mount);
}

/// A plain mount over a mount point that dualfs already serves is rejected, and leaves the
/// running mount's handover socket in place, so it can still be taken over.
#[test]
fn second_plain_mount_rejected() {
    let mut mount = Mount::start();
    let output = Command::new(common::dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(mount.local())
        .arg("--remote")
        .arg(mount.remote())
        .arg("--metrics-addr=off")
        .arg(mount.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the second mount started: {stderr}"
    );
    assert!(
        stderr.contains("already served by a running dualfs"),
        "unexpected error: {stderr}"
    );
    mount.take_over();
    converge(mount);
}

/// A first mount whose mount point is written with a trailing slash: the daemon must not
/// look the mount point up through its own mount before it serves it.
#[test]
fn mount_point_with_trailing_slash() {
    let root = tempfile::tempdir().unwrap();
    for dir in ["local", "remote", "mnt"] {
        fs::create_dir(root.path().join(dir)).unwrap();
    }
    let mountpoint = root.path().join("mnt");
    let log = File::create(root.path().join("daemon.log")).unwrap();
    let mut daemon = Command::new(common::dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(root.path().join("local"))
        .arg("--remote")
        .arg(root.path().join("remote"))
        .arg("--metrics-addr=off")
        .arg(format!("{}/", mountpoint.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mounted = loop {
        if common::mount_fs_type(&mountpoint).is_some() && fs::read_dir(&mountpoint).is_ok() {
            break true;
        }
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let written = mounted && fs::write(mountpoint.join("file"), b"x").is_ok();

    // SAFETY: kill has no memory-safety preconditions; the pid is the child started above.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = common::wait_timeout(&mut daemon, Duration::from_secs(10));
    if stopped.is_none() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    if common::mount_fs_type(&mountpoint).is_some() {
        common::lazy_unmount(&mountpoint);
    }
    let log = fs::read_to_string(root.path().join("daemon.log")).unwrap_or_default();
    assert!(mounted, "the mount never answered:\n{log}");
    assert!(written, "a write through the mount failed:\n{log}");
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly:\n{log}"
    );
}

/// A SIGTERM that arrives while the mount is being set up (a pod stopped right after it
/// started) must still end with nothing mounted, never a dead mount.
#[test]
fn sigterm_during_startup_leaves_no_mount() {
    for _ in 0..5 {
        let dirs = tempfile::tempdir().unwrap();
        for dir in ["local", "remote", "mnt"] {
            std::fs::create_dir(dirs.path().join(dir)).unwrap();
        }
        let mountpoint = dirs.path().join("mnt");
        let mut daemon = std::process::Command::new(common::dualfs_binary())
            .arg("mount")
            .arg("--local")
            .arg(dirs.path().join("local"))
            .arg("--remote")
            .arg(dirs.path().join("remote"))
            .arg(&mountpoint)
            .args(["--metrics-addr", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + common::READY_TIMEOUT;
        while common::mount_fs_type(&mountpoint).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
        let status = common::wait_timeout(&mut daemon, common::STOP_TIMEOUT);
        let left = common::mount_fs_type(&mountpoint);
        if left.is_some() {
            common::lazy_unmount(&mountpoint);
        }
        assert!(status.is_some(), "dualfs did not exit after SIGTERM");
        assert_eq!(left, None, "SIGTERM during startup left a mount behind");
    }
}
