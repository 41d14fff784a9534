//! `dualfs verify` and `dualfs resync` on backing directories that differ.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{assert_no_differences, compare_trees, dualfs_binary, Mount};

fn dualfs(args: &[&str], local: &Path, remote: &Path) -> Output {
    Command::new(dualfs_binary())
        .args(args)
        .arg("--local")
        .arg(local)
        .arg("--remote")
        .arg(remote)
        .output()
        .expect("failed to run dualfs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds a local tree and a remote copy with one difference of each kind.
fn diverged_trees(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let local = root.join("local");
    let remote = root.join("remote");
    for tree in [&local, &remote] {
        fs::create_dir_all(tree.join("dir/sub")).unwrap();
        fs::write(tree.join("dir/same.txt"), b"same").unwrap();
        fs::write(tree.join("mode.txt"), b"mode").unwrap();
        fs::write(tree.join("content.txt"), b"aaaa").unwrap();
    }
    fs::write(local.join("missing.txt"), b"only local").unwrap();
    fs::write(local.join("dir/sub/deep.txt"), b"deep").unwrap();
    fs::write(remote.join("extra.txt"), b"only remote").unwrap();
    fs::set_permissions(local.join("mode.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(remote.join("content.txt"), b"bbbb").unwrap();
    fs::hard_link(local.join("dir/same.txt"), local.join("link.txt")).unwrap();
    fs::write(remote.join("link.txt"), b"same").unwrap();

    // Equal times everywhere except where a difference is planted, so only those are found.
    for entry in [
        "dir/sub",
        "dir",
        "mode.txt",
        "content.txt",
        "dir/same.txt",
        "",
    ] {
        let time = filetime(1_500_000_000);
        for tree in [&local, &remote] {
            set_mtime(&tree.join(entry), time);
        }
    }
    (local, remote)
}

fn filetime(seconds: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    }
}

fn set_mtime(path: &Path, time: libc::timespec) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [time, time];
    // SAFETY: valid path and two timespecs.
    let ret = unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(ret, 0, "utimensat {}", path.display());
}

#[test]
fn verify_lists_each_difference() {
    let root = tempfile::tempdir().unwrap();
    let (local, remote) = diverged_trees(root.path());

    let output = dualfs(&["verify"], &local, &remote);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "verify output:\n{stdout}");
    assert!(
        stdout.contains("/missing.txt: missing on the remote"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/dir/sub/deep.txt: missing on the remote"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/extra.txt: only on the remote"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/mode.txt: mode differs: local 600, remote 644"),
        "{stdout}"
    );
    assert!(stdout.contains("/link.txt"), "{stdout}");
    assert!(
        !stdout.contains("/content.txt"),
        "equal size and mtime without --checksum: {stdout}"
    );
    assert!(!stdout.contains("\n/dir/same.txt:"), "{stdout}");
    assert!(
        stdout.contains("/link.txt: mtime differs; not a hard link of /dir/same.txt"),
        "{stdout}"
    );

    let output = dualfs(&["verify", "--checksum"], &local, &remote);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("/content.txt: content differs"), "{stdout}");
}

#[test]
fn resync_repairs_remote() {
    let root = tempfile::tempdir().unwrap();
    let (local, remote) = diverged_trees(root.path());
    fs::create_dir(local.join(".dualfs")).unwrap();

    let output = dualfs(&["resync", "--checksum"], &local, &remote);
    assert!(
        output.status.success(),
        "resync failed:\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let output = dualfs(&["verify", "--checksum"], &local, &remote);
    assert!(
        output.status.success(),
        "verify after resync:\n{}",
        text(&output.stdout)
    );
    assert!(output.stdout.is_empty(), "verify printed differences");

    assert_no_differences(&compare_trees(&local, &remote), "remote after resync");
    assert!(
        !remote.join(".dualfs").exists(),
        "the state folder is never copied"
    );
}

#[test]
fn resync_rejected_while_mounted() {
    let mount = Mount::start();
    let output = dualfs(&["resync"], mount.local(), mount.remote());
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("in use by another dualfs process"),
        "{stderr}"
    );
    assert!(stderr.contains("user.dualfs.resync"), "{stderr}");
}

#[test]
fn second_daemon_on_same_local_rejected() {
    let mount = Mount::start();
    let other = tempfile::tempdir().unwrap();
    fs::create_dir(other.path().join("remote")).unwrap();
    fs::create_dir(other.path().join("mnt")).unwrap();
    let output = Command::new(dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(mount.local())
        .arg("--remote")
        .arg(other.path().join("remote"))
        .arg(other.path().join("mnt"))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("in use by another dualfs process"),
        "{stderr}"
    );
}
