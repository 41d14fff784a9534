//! Behaviour of the unified view: remote fallback, merged listings, the hidden state folder,
//! holes, xattrs, rename flags, inode numbers and the sync-state attributes.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{assert_no_differences, compare_trees, get_xattr, run, run_stdout, Mount};

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of value.len() bytes.
    let ret = unsafe {
        libc::setxattr(
            c_path(path).as_ptr(),
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

fn remove_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let name = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let ret = unsafe { libc::removexattr(c_path(path).as_ptr(), name.as_ptr()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn rename2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    // SAFETY: valid NUL-terminated paths; AT_FDCWD resolves them from the working directory.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_path(from).as_ptr(),
            libc::AT_FDCWD,
            c_path(to).as_ptr(),
            flags,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn seek(file: &File, offset: i64, whence: i32) -> std::io::Result<i64> {
    // SAFETY: lseek on an open descriptor.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn state(path: &Path) -> String {
    String::from_utf8(get_xattr(path, "user.dualfs.state").expect("state attribute"))
        .expect("UTF-8 state")
}

#[test]
fn remote_only_entries_served_and_listed() {
    let mut mount = Mount::start();
    fs::create_dir(mount.remote().join("archive")).unwrap();
    fs::write(mount.remote().join("archive/old.txt"), b"from the remote").unwrap();
    fs::write(mount.local().join("fresh.txt"), b"only local").unwrap();

    let through_mount = mount.path().join("archive/old.txt");
    assert_eq!(fs::read(&through_mount).unwrap(), b"from the remote");
    let names: Vec<String> = fs::read_dir(mount.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"archive".to_string()), "listing: {names:?}");
    assert!(
        names.contains(&"fresh.txt".to_string()),
        "listing: {names:?}"
    );
    assert_eq!(state(&through_mount), "remote-only");
    assert_eq!(state(&mount.path().join("fresh.txt")), "local-only");

    // Writing to a remote-only file copies it into the local tree first.
    let mut file = OpenOptions::new()
        .append(true)
        .open(&through_mount)
        .unwrap();
    file.write_all(b", appended").unwrap();
    drop(file);
    assert_eq!(
        fs::read(mount.local().join("archive/old.txt")).unwrap(),
        b"from the remote, appended"
    );

    // The local-only file was never written through the mount; queue a copy for it.
    run(Command::new("setfattr")
        .args(["-n", "user.dualfs.resync", "-v", "1"])
        .arg(mount.path().join("fresh.txt")));
    mount.wait_synced();
    assert_eq!(state(&mount.path().join("fresh.txt")), "synced");
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
}

#[test]
fn remote_only_entry_deleted_stays_deleted() {
    let mut mount = Mount::start();
    fs::write(mount.remote().join("stale.txt"), b"old").unwrap();
    let path = mount.path().join("stale.txt");
    assert!(path.exists());

    fs::remove_file(&path).unwrap();
    assert!(!path.exists(), "a deleted remote entry must not come back");
    let listed = fs::read_dir(mount.path())
        .unwrap()
        .any(|e| e.unwrap().file_name() == "stale.txt");
    assert!(!listed, "a deleted remote entry must not be listed");

    mount.wait_synced();
    assert!(!mount.remote().join("stale.txt").exists());
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
}

#[test]
fn state_folder_hidden_and_unreachable() {
    let mut mount = Mount::start();
    assert!(mount.local().join(".dualfs").is_dir());

    let listed = fs::read_dir(mount.path())
        .unwrap()
        .any(|e| e.unwrap().file_name() == ".dualfs");
    assert!(!listed, ".dualfs must not be listed");
    let err = fs::metadata(mount.path().join(".dualfs")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = fs::create_dir(mount.path().join(".dualfs")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = fs::write(mount.path().join(".dualfs"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    // The name is reserved at the root only.
    fs::create_dir(mount.path().join("sub")).unwrap();
    fs::write(mount.path().join("sub/.dualfs"), b"fine").unwrap();

    mount.wait_synced();
    mount.unmount();
    assert!(!mount.remote().join(".dualfs").exists());
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
}

#[test]
fn sparse_file_keeps_holes_on_remote() {
    let mut mount = Mount::start();
    let path = mount.path().join("sparse.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.write_all_at(&[7u8; 65536], 0).unwrap();
    file.write_all_at(&[9u8; 4096], 16 << 20).unwrap();

    // Punch a hole in the middle of the first block of data.
    // SAFETY: fallocate on an open descriptor.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            16384,
            32768,
        )
    };
    assert_eq!(ret, 0, "punch hole: {}", std::io::Error::last_os_error());

    assert_eq!(seek(&file, 0, libc::SEEK_HOLE).unwrap(), 16384);
    assert_eq!(seek(&file, 16384, libc::SEEK_DATA).unwrap(), 49152);
    assert_eq!(seek(&file, 65536, libc::SEEK_DATA).unwrap(), 16 << 20);
    let mut hole = vec![1u8; 32768];
    file.read_exact_at(&mut hole, 16384).unwrap();
    assert!(
        hole.iter().all(|&b| b == 0),
        "punched range must read as zeros"
    );
    drop(file);

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");

    let remote = File::open(mount.remote().join("sparse.bin")).unwrap();
    assert_eq!(seek(&remote, 0, libc::SEEK_HOLE).unwrap(), 16384);
    assert_eq!(seek(&remote, 65536, libc::SEEK_DATA).unwrap(), 16 << 20);
    let allocated = remote.metadata().unwrap().blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "the remote copy of a 16 MiB sparse file allocates {allocated} bytes"
    );
}

#[test]
fn xattrs_mirrored_to_remote() {
    let mut mount = Mount::start();
    let file = mount.path().join("tagged.txt");
    let dir = mount.path().join("tagged-dir");
    fs::write(&file, b"content").unwrap();
    fs::create_dir(&dir).unwrap();

    set_xattr(&file, "user.owner", b"team-a").unwrap();
    set_xattr(&file, "user.temporary", b"1").unwrap();
    set_xattr(&dir, "user.project", b"ledger").unwrap();
    remove_xattr(&file, "user.temporary").unwrap();
    assert_eq!(get_xattr(&file, "user.owner").unwrap(), b"team-a");
    let err = get_xattr(&file, "user.temporary").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA));

    mount.wait_synced();
    mount.unmount();
    let remote_file = mount.remote().join("tagged.txt");
    assert_eq!(get_xattr(&remote_file, "user.owner").unwrap(), b"team-a");
    let err = get_xattr(&remote_file, "user.temporary").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA));
    assert_eq!(
        get_xattr(&mount.remote().join("tagged-dir"), "user.project").unwrap(),
        b"ledger"
    );
}

#[test]
fn virtual_attributes_read_only_and_unlisted() {
    let mount = Mount::start();
    let file = mount.path().join("f");
    fs::write(&file, b"x").unwrap();

    let err = set_xattr(&file, "user.dualfs.state", b"synced").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = remove_xattr(&file, "user.dualfs.state").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));

    let listed = run_stdout(Command::new("getfattr").arg("-d").arg(&file));
    assert!(
        !listed.contains("user.dualfs"),
        "listxattr must not list the virtual attributes: {listed}"
    );
    let err = get_xattr(&file, "user.dualfs.remote").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENODATA),
        "user.dualfs.remote exists on the mount root only"
    );
}

#[test]
fn rename_noreplace_and_exchange() {
    let mut mount = Mount::start();
    let a = mount.path().join("a");
    let b = mount.path().join("b");
    fs::write(&a, b"first").unwrap();
    fs::write(&b, b"second").unwrap();

    let err = rename2(&a, &b, libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    rename2(&a, &b, libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"second");
    assert_eq!(fs::read(&b).unwrap(), b"first");

    fs::create_dir(mount.path().join("d")).unwrap();
    fs::write(mount.path().join("d/inner"), b"moved with its directory").unwrap();
    rename2(&mount.path().join("d"), &mount.path().join("e"), 0).unwrap();
    rename2(&a, &mount.path().join("e/a"), libc::RENAME_NOREPLACE).unwrap();

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
    assert_eq!(
        fs::read(mount.remote().join("e/inner")).unwrap(),
        b"moved with its directory"
    );
}

#[test]
fn copy_file_range_fifo_and_truncate() {
    let mut mount = Mount::start();
    let source = mount.path().join("source");
    let target = mount.path().join("target");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&source, &data).unwrap();

    let input = File::open(&source).unwrap();
    let output = File::create(&target).unwrap();
    let mut copied = 0usize;
    while copied < data.len() {
        // SAFETY: both descriptors are open; null offsets use and advance the file offsets.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                std::ptr::null_mut(),
                output.as_raw_fd(),
                std::ptr::null_mut(),
                data.len() - copied,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        copied += n as usize;
    }
    drop(output);
    drop(input);
    assert_eq!(fs::read(&target).unwrap(), data);

    run(Command::new("mkfifo").arg(mount.path().join("pipe")));
    OpenOptions::new()
        .write(true)
        .open(&source)
        .unwrap()
        .set_len(1000)
        .unwrap();

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
    let pipe = fs::symlink_metadata(mount.remote().join("pipe")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()));
}

#[test]
fn readdir_inodes_match_stat() {
    let mount = Mount::start();
    fs::create_dir(mount.path().join("dir")).unwrap();
    fs::write(mount.path().join("dir/file"), b"x").unwrap();
    fs::hard_link(mount.path().join("dir/file"), mount.path().join("link")).unwrap();
    std::os::unix::fs::symlink("dir/file", mount.path().join("sym")).unwrap();

    for entry in fs::read_dir(mount.path()).unwrap() {
        let entry = entry.unwrap();
        let listed = std::os::unix::fs::DirEntryExt::ino(&entry);
        let stat = fs::symlink_metadata(entry.path()).unwrap().ino();
        assert_eq!(listed, stat, "inode of {:?} differs", entry.file_name());
    }
    let file = fs::metadata(mount.path().join("dir/file")).unwrap();
    let link = fs::metadata(mount.path().join("link")).unwrap();
    assert_eq!(file.ino(), link.ino(), "hard links must share an inode");
    assert_eq!(link.nlink(), 2);

    // The numbers stay the same while mounted.
    let again = fs::metadata(mount.path().join("dir/file")).unwrap();
    assert_eq!(file.ino(), again.ino());
}

#[test]
fn status_command_reports_state() {
    let mut mount = Mount::start();
    let file = mount.path().join("report.csv");
    fs::File::create(&file)
        .unwrap()
        .write_all(b"a,b\n1,2\n")
        .unwrap();
    mount.wait_synced();

    let text = run_stdout(
        Command::new(common::dualfs_binary())
            .arg("status")
            .arg(mount.path()),
    );
    assert!(text.contains("state:"), "status output: {text}");
    assert!(text.contains("synced"), "status output: {text}");
    assert!(text.contains("remote:"), "status output: {text}");

    let json = run_stdout(
        Command::new(common::dualfs_binary())
            .args(["status", "--json"])
            .arg(&file),
    );
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["state"], "synced", "status --json: {json}");
    assert_eq!(value["pending_ops"], 0, "status --json: {json}");
    assert!(
        value["last_sync"].as_str().is_some_and(|s| s.contains('T')),
        "last_sync must be an RFC 3339 time: {json}"
    );

    let outside = Command::new(common::dualfs_binary())
        .arg("status")
        .arg(mount.local())
        .output()
        .unwrap();
    assert!(!outside.status.success());
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(
        stderr.contains("not on a dualfs mount"),
        "status outside a mount: {stderr}"
    );

    // Special files carry no user.* attributes, so status names the type and what to do.
    let fifo = mount.path().join("pipe");
    run(Command::new("mkfifo").arg(&fifo));
    let special = Command::new(common::dualfs_binary())
        .arg("status")
        .arg(&fifo)
        .output()
        .unwrap();
    assert!(!special.status.success());
    let stderr = String::from_utf8_lossy(&special.stderr);
    assert!(
        stderr.contains("is a FIFO") && stderr.contains("on its directory"),
        "status of a FIFO: {stderr}"
    );

    let queue = String::from_utf8(get_xattr(mount.path(), "user.dualfs.queue").unwrap()).unwrap();
    assert!(queue.starts_with("ops=0 "), "queue attribute: {queue}");
    let remote = get_xattr(mount.path(), "user.dualfs.remote").unwrap();
    assert_eq!(remote, b"up");
}

#[test]
fn hydrate_copies_remote_file_on_open() {
    let mut mount = Mount::start_with_args(&["--hydrate"]);
    fs::create_dir(mount.remote().join("cold")).unwrap();
    fs::write(mount.remote().join("cold/data.bin"), b"remote bytes").unwrap();

    assert_eq!(
        fs::read(mount.path().join("cold/data.bin")).unwrap(),
        b"remote bytes"
    );
    assert_eq!(
        fs::read(mount.local().join("cold/data.bin")).unwrap(),
        b"remote bytes",
        "--hydrate must copy the file into the local tree on open"
    );
    assert_eq!(state(&mount.path().join("cold/data.bin")), "synced");

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
}

#[test]
fn fstat_of_unlinked_open_file() {
    let mount = Mount::start();
    let path = mount.path().join("scratch");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    fs::remove_file(&path).unwrap();

    // The kernel asks for the attributes of an unlinked file without its handle.
    let metadata = file.metadata().unwrap();
    assert_eq!(metadata.nlink(), 0, "an unlinked file has no links");
    file.write_all_at(b"still usable", 0).unwrap();
    let mut buf = [0u8; 12];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still usable");
    assert_eq!(file.metadata().unwrap().len(), 12);
}

#[test]
fn ioctl_answers_not_a_terminal() {
    let mount = Mount::start();
    let path = mount.path().join("plain.txt");
    fs::write(&path, b"x").unwrap();
    let file = File::open(&path).unwrap();

    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`; the result is checked.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    assert_eq!(ret, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    assert!(
        !mount.log_tail().contains("Not Implemented"),
        "ioctl must not log a warning:\n{}",
        mount.log_tail()
    );
}

/// A file open for reading uses FUSE passthrough, and the kernel then accepts only
/// passthrough opens of that inode: a writer opened meanwhile must still work (and not fail
/// with EIO), and what it writes must reach the remote.
#[test]
fn writer_opened_while_a_reader_is_open() {
    let mut mount = Mount::start();
    let path = mount.path().join("watched.log");
    fs::write(&path, b"first line\n").unwrap();
    let reader = File::open(&path).unwrap();

    let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
    writer.write_all(b"second line\n").unwrap();
    writer.sync_all().unwrap();
    let mut seen = vec![0u8; 23];
    reader.read_exact_at(&mut seen, 0).unwrap();
    assert_eq!(seen, b"first line\nsecond line\n");
    drop((reader, writer));

    mount.wait_synced();
    assert_eq!(
        fs::read(mount.remote().join("watched.log")).unwrap(),
        b"first line\nsecond line\n"
    );
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
}

/// The journal names every changed path, so the state folder and its files are private to
/// the daemon's user whatever the umask.
#[test]
fn state_folder_is_private() {
    let mut mount = Mount::start();
    fs::write(mount.path().join("file"), b"x").unwrap();
    mount.wait_synced();
    let state = mount.local().join(".dualfs");
    let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("journal")), 0o700);
    assert_eq!(mode(&state.join("lock")), 0o600);
    for segment in fs::read_dir(state.join("journal")).unwrap() {
        let path = segment.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// Reads how many requests of `op` the daemon has served, from its metrics.
fn operations(mount: &Mount, op: &str) -> u64 {
    let (_, body) = common::http_get(&mount.metrics_addr(), "/metrics");
    body.lines()
        .find(|line| line.starts_with(&format!("dualfs_operations_total{{op=\"{op}\"}}")))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |count| count.parse().unwrap())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// With a long entry TTL the kernel keeps a directory's listing between opens, and every
/// change made through the mount or to the local directory still shows in the next listing.
#[test]
fn cached_listing_follows_changes() {
    let mut mount = Mount::start_with_args(&["--entry-ttl", "60s", "--attr-ttl", "1s"]);
    let dir = mount.path().join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), b"a").unwrap();
    assert_eq!(names_in(&dir), ["a"]);

    let listed = operations(&mount, "readdirplus") + operations(&mount, "readdir");
    assert_eq!(names_in(&dir), ["a"]);
    assert_eq!(
        operations(&mount, "readdirplus") + operations(&mount, "readdir"),
        listed,
        "the second listing must come from the kernel's cache"
    );

    fs::write(dir.join("b"), b"b").unwrap();
    assert_eq!(names_in(&dir), ["a", "b"]);
    fs::remove_file(dir.join("a")).unwrap();
    assert_eq!(names_in(&dir), ["b"]);
    fs::rename(dir.join("b"), mount.path().join("moved")).unwrap();
    assert!(names_in(&dir).is_empty());

    // A writer that bypasses the mount changes the local directory's modification time,
    // which the next open notices once the kernel's attributes expire.
    fs::write(mount.local().join("dir/outside"), b"o").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(names_in(&dir), ["outside"]);
    mount.unmount();
}
