//! Integration tests on real faultfs mounts over temporary directories. They need root and
//! `/dev/fuse`.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use faultfs::{FaultFs, MountOptions};
use tempfile::TempDir;

/// Maximum wait for something that should happen at once. Only a hung test waits this long.
const PROMPT: Duration = Duration::from_secs(10);

/// How long a held request must stay blocked before the test calls it held.
const HELD_FOR: Duration = Duration::from_millis(300);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "faultfs tests mount FUSE filesystems: run them as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "faultfs tests need /dev/fuse"
    );
}

/// A backing directory and a faultfs mount over it.
struct Fixture {
    backing: TempDir,
    fs: FaultFs,
}

impl Fixture {
    fn new() -> Fixture {
        require_root();
        let backing = tempfile::tempdir().unwrap();
        let fs = FaultFs::mount(backing.path());
        Fixture { backing, fs }
    }

    fn mounted(&self, relative: &str) -> PathBuf {
        self.fs.path().join(relative)
    }

    fn backing(&self, relative: &str) -> PathBuf {
        self.backing.path().join(relative)
    }
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted))
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (path, name) = (c_path(path), CString::new(name).unwrap());
    // SAFETY: setxattr reads the strings and `value.len()` bytes of `value`.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (path, name) = (c_path(path), CString::new(name).unwrap());
    let mut buffer = vec![0u8; 4096];
    // SAFETY: getxattr writes at most `buffer.len()` bytes into `buffer`.
    let ret = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buffer.truncate(ret as usize);
    Ok(buffer)
}

fn list_xattrs(path: &Path) -> Vec<String> {
    let path = c_path(path);
    let mut buffer = vec![0u8; 4096];
    // SAFETY: listxattr writes at most `buffer.len()` bytes into `buffer`.
    let ret = unsafe { libc::listxattr(path.as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
    assert!(ret >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buffer.truncate(ret as usize);
    buffer
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

fn rename2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (from, to) = (c_path(from), c_path(to));
    // SAFETY: renameat2 only reads the two strings.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs `task` on a new thread and returns a receiver for its result.
fn in_thread<T: Send + 'static>(task: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(task());
    });
    receiver
}

#[test]
fn passthrough_write_read_rename_readdir() {
    let fx = Fixture::new();
    fs::write(fx.mounted("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(fx.mounted("a.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(fx.backing("a.txt")).unwrap(), b"hello");

    let mut file = OpenOptions::new()
        .append(true)
        .open(fx.mounted("a.txt"))
        .unwrap();
    file.write_all(b" world").unwrap();
    drop(file);
    assert_eq!(fs::read(fx.backing("a.txt")).unwrap(), b"hello world");

    fs::create_dir_all(fx.mounted("dir/sub")).unwrap();
    fs::write(fx.mounted("dir/sub/f"), b"inside").unwrap();
    fs::rename(fx.mounted("dir"), fx.mounted("moved")).unwrap();
    assert_eq!(fs::read(fx.mounted("moved/sub/f")).unwrap(), b"inside");
    assert_eq!(fs::read(fx.backing("moved/sub/f")).unwrap(), b"inside");
    assert!(!fx.backing("dir").exists());

    fs::rename(fx.mounted("a.txt"), fx.mounted("moved/b.txt")).unwrap();
    assert_eq!(sorted_names(fx.fs.path()), ["moved"]);
    assert_eq!(sorted_names(&fx.mounted("moved")), ["b.txt", "sub"]);

    fs::remove_file(fx.mounted("moved/b.txt")).unwrap();
    fs::remove_file(fx.mounted("moved/sub/f")).unwrap();
    fs::remove_dir(fx.mounted("moved/sub")).unwrap();
    assert_eq!(sorted_names(&fx.backing("moved")), Vec::<String>::new());
}

#[test]
fn passthrough_metadata_links_and_xattrs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let fx = Fixture::new();
    let file = fx.mounted("f");
    fs::write(&file, b"data").unwrap();

    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(
        fs::metadata(fx.backing("f")).unwrap().mode() & 0o7777,
        0o640
    );

    std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(fx.backing("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));

    File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(10)
        .unwrap();
    assert_eq!(fs::metadata(&file).unwrap().len(), 10);

    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(
        fs::metadata(fx.backing("f")).unwrap().modified().unwrap(),
        old
    );

    fs::hard_link(&file, fx.mounted("hard")).unwrap();
    let (first, second) = (
        fs::metadata(&file).unwrap(),
        fs::metadata(fx.mounted("hard")).unwrap(),
    );
    assert_eq!(first.ino(), second.ino());
    assert_eq!(second.nlink(), 2);

    std::os::unix::fs::symlink("f", fx.mounted("link")).unwrap();
    assert_eq!(
        fs::read_link(fx.mounted("link")).unwrap(),
        PathBuf::from("f")
    );

    set_xattr(&file, "user.color", b"blue").unwrap();
    assert_eq!(get_xattr(&file, "user.color").unwrap(), b"blue");
    assert_eq!(get_xattr(&fx.backing("f"), "user.color").unwrap(), b"blue");
    assert!(list_xattrs(&file).contains(&"user.color".to_string()));
    let missing = get_xattr(&file, "user.missing").unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENODATA));

    nix::unistd::mkfifo(
        &fx.mounted("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let fifo = fs::symlink_metadata(fx.backing("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
}

#[test]
fn passthrough_fallocate_lseek_fsync() {
    use std::os::fd::AsRawFd;

    let fx = Fixture::new();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(fx.mounted("sparse"))
        .unwrap();
    // SAFETY: the descriptor is open for the call.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 8192) };
    assert_eq!(ret, 0, "fallocate: {}", std::io::Error::last_os_error());
    assert_eq!(fs::metadata(fx.backing("sparse")).unwrap().len(), 8192);

    file.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"data", 512 * 1024).unwrap();
    let backing_file = File::open(fx.backing("sparse")).unwrap();
    for offset in [0, 16 * 1024, 600 * 1024] {
        // SAFETY: both descriptors are open for the calls.
        let (through_mount, direct) = unsafe {
            (
                libc::lseek(file.as_raw_fd(), offset, libc::SEEK_HOLE),
                libc::lseek(backing_file.as_raw_fd(), offset, libc::SEEK_HOLE),
            )
        };
        assert_eq!(through_mount, direct, "SEEK_HOLE from {offset}");
    }
    assert!(fx.fs.count("lseek") >= 3);

    let fsyncs = fx.fs.count("fsync");
    file.sync_all().unwrap();
    assert_eq!(fx.fs.count("fsync"), fsyncs + 1);
}

#[test]
fn passthrough_rename_flags() {
    let fx = Fixture::new();
    fs::write(fx.mounted("one"), b"1").unwrap();
    fs::write(fx.mounted("two"), b"2").unwrap();

    let err = rename2(
        &fx.mounted("one"),
        &fx.mounted("two"),
        libc::RENAME_NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));

    rename2(
        &fx.mounted("one"),
        &fx.mounted("two"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(fs::read(fx.mounted("one")).unwrap(), b"2");
    assert_eq!(fs::read(fx.mounted("two")).unwrap(), b"1");
    assert_eq!(fs::read(fx.backing("one")).unwrap(), b"2");
}

#[test]
fn errno_rule_fails_writes_not_reads() {
    let fx = Fixture::new();
    fs::write(fx.mounted("f"), b"before").unwrap();
    fx.fs.set_rules("write * errno=EIO\n");

    let mut file = OpenOptions::new()
        .write(true)
        .open(fx.mounted("f"))
        .unwrap();
    let err = file.write_all(b"after").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop(file);

    assert_eq!(fs::read(fx.mounted("f")).unwrap(), b"before");
    assert_eq!(fs::read(fx.backing("f")).unwrap(), b"before");
    assert!(fx.fs.count("write") >= 1);

    fx.fs.clear_rules();
    fs::write(fx.mounted("f"), b"after").unwrap();
    assert_eq!(fs::read(fx.backing("f")).unwrap(), b"after");
}

#[test]
fn errno_rule_applies_to_matching_paths_only() {
    let fx = Fixture::new();
    fs::create_dir(fx.mounted("stale")).unwrap();
    fs::write(fx.mounted("fine"), b"x").unwrap();
    fx.fs.set_rules("lookup,getattr stale* errno=ESTALE\n");

    let err = fs::metadata(fx.mounted("stale")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE));
    assert!(fs::metadata(fx.mounted("fine")).is_ok());
}

#[test]
fn full_rule_gives_enospc() {
    let fx = Fixture::new();
    fs::write(fx.mounted("existing"), b"kept").unwrap();
    fx.fs.set_rules("* * full\n");

    let err = File::create(fx.mounted("new")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert!(!fx.backing("new").exists());

    let mut file = OpenOptions::new()
        .write(true)
        .open(fx.mounted("existing"))
        .unwrap();
    let err = file.write_all(b"more").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    drop(file);

    let err = fs::create_dir(fx.mounted("dir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let err = set_xattr(&fx.mounted("existing"), "user.k", b"v").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let err = std::os::unix::fs::symlink("existing", fx.mounted("link")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    let err = fs::hard_link(fx.mounted("existing"), fx.mounted("hard")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new()
            .write(true)
            .open(fx.mounted("existing"))
            .unwrap();
        // SAFETY: the descriptor is open for the call.
        let ret = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, 4096) };
        assert_eq!(ret, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSPC)
        );
    }

    let stats = nix::sys::statvfs::statvfs(fx.fs.path()).unwrap();
    assert_eq!(stats.blocks_available(), 0);

    assert_eq!(fs::read(fx.mounted("existing")).unwrap(), b"kept");
    fs::remove_file(fx.mounted("existing")).unwrap();
    assert!(!fx.backing("existing").exists());
}

#[test]
fn hang_rule_holds_only_matching_path() {
    let fx = Fixture::new();
    fs::create_dir(fx.mounted("dir1")).unwrap();
    fs::create_dir(fx.mounted("other")).unwrap();
    fx.fs.set_rules("getattr dir* hang\n");

    let held_path = fx.mounted("dir1");
    let held = in_thread(move || fs::metadata(held_path).map(|meta| meta.is_dir()));
    assert!(
        held.recv_timeout(HELD_FOR).is_err(),
        "stat of dir1 answered while its getattr rule says hang"
    );

    let free_path = fx.mounted("other");
    let free = in_thread(move || fs::metadata(free_path).map(|meta| meta.is_dir()));
    let free = free
        .recv_timeout(PROMPT)
        .expect("stat of another path was blocked by the hang rule");
    assert!(free.unwrap());
    assert!(
        held.try_recv().is_err(),
        "stat of dir1 answered while its rule is still present"
    );

    fx.fs.clear_rules();
    let released = held
        .recv_timeout(PROMPT)
        .expect("stat of dir1 still blocked after the rule was removed");
    assert!(released.unwrap());
}

#[test]
fn hang_rule_released_on_unmount() {
    let fx = Fixture::new();
    fs::create_dir(fx.mounted("dir")).unwrap();
    fx.fs.set_rules("getattr dir hang\n");
    let held_path = fx.mounted("dir");
    let held = in_thread(move || fs::metadata(held_path).map(|_| ()));
    assert!(held.recv_timeout(HELD_FOR).is_err());

    let mountpoint = fx.fs.path().to_path_buf();
    drop(fx);
    let result = held
        .recv_timeout(PROMPT)
        .expect("held stat still blocked after the guard was dropped");
    assert!(result.is_err());
    assert!(!is_mounted(&mountpoint));
}

#[test]
fn delay_rule_adds_latency() {
    let fx = Fixture::new();
    fs::write(fx.mounted("slow"), b"x").unwrap();
    fx.fs.set_rules("getattr,lookup slow delay=50ms\n");

    let started = Instant::now();
    fs::metadata(fx.mounted("slow")).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(50),
        "stat took {elapsed:?}"
    );
}

#[test]
fn first_matching_rule_wins() {
    let fx = Fixture::new();
    fs::write(fx.mounted("a"), b"x").unwrap();
    fs::write(fx.mounted("b"), b"x").unwrap();
    fx.fs.set_rules("open a errno=EACCES\nopen * errno=EPERM\n");

    let err = File::open(fx.mounted("a")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let err = File::open(fx.mounted("b")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

#[test]
fn control_file_edits_apply() {
    let fx = Fixture::new();
    fs::write(fx.mounted("f"), b"x").unwrap();
    let control = fx.fs.control_file();

    // A malformed line is skipped and the valid line after it still applies.
    fs::write(&control, "read * explode\nopen f errno=EDQUOT\n").unwrap();
    let err = File::open(fx.mounted("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT));

    // A rewrite of the same size is seen too. On kernels with coarse file timestamps it
    // often keeps mtime and ctime, and only the re-read of a recently changed file finds it.
    fs::write(&control, "read * explode\nopen f errno=ENFILE\n").unwrap();
    let err = File::open(fx.mounted("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENFILE));

    fs::remove_file(&control).unwrap();
    assert!(File::open(fx.mounted("f")).is_ok());
}

#[test]
#[should_panic(expected = "malformed faultfs rules")]
fn set_rules_rejects_malformed_line() {
    let fx = Fixture::new();
    fx.fs.set_rules("write * errno=NOPE\n");
}

#[test]
fn counts_track_requests() {
    let fx = Fixture::new();
    let creates = fx.fs.count("create");
    let writes = fx.fs.count("write");
    fs::write(fx.mounted("f"), b"x").unwrap();
    assert_eq!(fx.fs.count("create"), creates + 1);
    assert!(fx.fs.count("write") > writes);
    assert_eq!(fx.fs.count("rmdir"), 0);

    let counts = fx.fs.counts();
    assert_eq!(counts["create"], fx.fs.count("create"));

    let deadline = Instant::now() + PROMPT;
    loop {
        let stats = fs::read_to_string(fx.fs.stats_file()).unwrap_or_default();
        if stats.lines().any(|line| line == "create 1") {
            assert!(stats.lines().any(|line| line == "rmdir 0"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats file never showed `create 1`: {stats}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn guard_unmounts_when_test_panics() {
    require_root();
    let backing = tempfile::tempdir().unwrap();
    let (sender, receiver) = mpsc::channel();
    let outcome = thread::spawn(move || {
        let fs = FaultFs::mount(backing.path());
        sender.send(fs.path().to_path_buf()).unwrap();
        panic!("simulated test failure");
    })
    .join();
    assert!(outcome.is_err());
    let mountpoint = receiver.recv().unwrap();
    assert!(!is_mounted(&mountpoint));
}

#[test]
fn direct_io_reads_reach_faultfs() {
    require_root();
    let backing = tempfile::tempdir().unwrap();
    let options = MountOptions {
        direct_io: true,
        ..MountOptions::default()
    };
    let fs = FaultFs::mount_with(backing.path(), options);
    fs::write(fs.path().join("f"), b"abc").unwrap();

    let mut file = File::open(fs.path().join("f")).unwrap();
    let reads = fs.count("read");
    let mut buffer = [0u8; 3];
    file.read_exact(&mut buffer).unwrap();
    assert_eq!(&buffer, b"abc");
    let mut again = [0u8; 3];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut again, 0).unwrap();
    assert!(fs.count("read") >= reads + 2);
}

/// A `faultfs mount` child process; killed and unmounted on drop if still running.
struct Daemon {
    child: Child,
    mountpoint: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mountpoint) {
            let _ = faultfs::unmount(&self.mountpoint);
        }
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (backing, mountpoint) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mountpoint).unwrap();
    let control = dir.path().join("rules");
    fs::write(&control, "bogus\nunlink keep* errno=EPERM\n").unwrap();
    let log = File::create(dir.path().join("log")).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .args(["mount", "--backing"])
        .arg(&backing)
        .arg("--control")
        .arg(&control)
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut daemon = Daemon {
        child,
        mountpoint: mountpoint.clone(),
    };
    wait_until("the mount appears", || is_mounted(&mountpoint));

    fs::write(mountpoint.join("keep.txt"), b"x").unwrap();
    let err = fs::remove_file(mountpoint.join("keep.txt")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(backing.join("keep.txt").exists());

    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    let stats = dir.path().join("rules.stats");
    wait_until("the stats file counts the unlink", || {
        fs::read_to_string(&stats).is_ok_and(|text| text.lines().any(|line| line == "unlink 1"))
    });

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until("faultfs exits", || {
        status = daemon.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "exit status {status:?}");
    assert!(!is_mounted(&mountpoint));

    let log = fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(
        log.contains("line 1 `bogus`"),
        "log does not name the malformed line:\n{log}"
    );
}

#[test]
fn binary_rejects_mount_point_inside_backing() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    fs::create_dir_all(backing.join("mnt")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .args(["mount", "--backing"])
        .arg(&backing)
        .arg("--control")
        .arg(dir.path().join("rules"))
        .arg(backing.join("mnt"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("overlaps the backing directory"),
        "{stderr}"
    );
}
