//! `dualfs mount` must reject invalid directory arguments before it mounts:
//! it exits non-zero, names the offending path on stderr, and leaves nothing
//! mounted.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{canonical, dualfs_binary, lazy_unmount, mounts_under, wait_timeout};

/// Maximum time for `dualfs mount` to reject its arguments and exit.
const REJECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary directory with empty `local`, `remote` and `mnt` directories.
struct Layout {
    root: tempfile::TempDir,
    root_path: PathBuf,
}

impl Layout {
    fn new() -> Layout {
        let root = tempfile::Builder::new()
            .prefix("dualfs-args-")
            .tempdir()
            .expect("failed to create a temporary directory");
        let root_path = canonical(root.path());
        for dir in ["local", "remote", "mnt"] {
            fs::create_dir(root_path.join(dir)).expect("failed to create a test directory");
        }
        Layout { root, root_path }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root_path.join(relative)
    }
}

/// Runs `dualfs mount` with the given directories and asserts that it
/// rejects them. It must exit non-zero within [`REJECT_TIMEOUT`] and leave
/// nothing mounted under the layout. Its stderr must contain one of
/// `offending`, which lists the path at fault in each accepted spelling.
fn assert_rejected(
    layout: &Layout,
    local: &Path,
    remote: &Path,
    mountpoint: &Path,
    offending: &[&Path],
) {
    let stderr_path = layout.root.path().join("stderr.txt");
    let stderr_file = File::create(&stderr_path).expect("failed to create the stderr file");
    let mut child = Command::new(dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(local)
        .arg("--remote")
        .arg(remote)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {}: {e}", dualfs_binary()));
    let command_line = format!(
        "dualfs mount --local {} --remote {} {}",
        local.display(),
        remote.display(),
        mountpoint.display()
    );

    let status = wait_timeout(&mut child, REJECT_TIMEOUT);
    let status = match status {
        Some(status) => status,
        None => {
            // Still running, so it probably mounted: stop it by its pid and
            // remove whatever it mounted before failing.
            // SAFETY: kill has no memory-safety preconditions, and the child
            // has not been reaped, so its pid is still its own.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_timeout(&mut child, REJECT_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for (mount_point, _) in mounts_under(&layout.root_path) {
                lazy_unmount(&mount_point);
            }
            panic!("`{command_line}` was still running after {REJECT_TIMEOUT:?} instead of rejecting its arguments");
        }
    };
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let leftover_mounts = mounts_under(&layout.root_path);
    for (mount_point, _) in &leftover_mounts {
        lazy_unmount(mount_point);
    }

    assert!(
        !status.success(),
        "`{command_line}` exited with {status} but should have failed; stderr:\n{stderr}"
    );
    assert!(
        leftover_mounts.is_empty(),
        "`{command_line}` failed but left mounts behind: {leftover_mounts:?}"
    );
    assert!(
        !stderr.contains("panicked at"),
        "`{command_line}` panicked instead of printing an error message; stderr:\n{stderr}"
    );
    let names_path = offending
        .iter()
        .any(|path| stderr.contains(&path.display().to_string()));
    assert!(
        names_path,
        "stderr of `{command_line}` does not name the offending path (one of {offending:?}); stderr:\n{stderr}"
    );
}

#[test]
fn missing_local_dir_rejected() {
    let layout = Layout::new();
    let missing = layout.path("does-not-exist");
    assert_rejected(
        &layout,
        &missing,
        &layout.path("remote"),
        &layout.path("mnt"),
        &[&missing],
    );
}

#[test]
fn missing_remote_dir_rejected() {
    let layout = Layout::new();
    let missing = layout.path("does-not-exist");
    assert_rejected(
        &layout,
        &layout.path("local"),
        &missing,
        &layout.path("mnt"),
        &[&missing],
    );
}

#[test]
fn same_dir_twice_rejected() {
    let layout = Layout::new();
    let local = layout.path("local");
    assert_rejected(&layout, &local, &local, &layout.path("mnt"), &[&local]);
}

#[test]
fn same_dir_through_symlink_rejected() {
    let layout = Layout::new();
    let local = layout.path("local");
    let alias = layout.path("alias-of-local");
    std::os::unix::fs::symlink(&local, &alias).expect("failed to create the symlink");
    assert_rejected(
        &layout,
        &local,
        &alias,
        &layout.path("mnt"),
        &[&local, &alias],
    );
}

#[test]
fn remote_inside_local_rejected() {
    let layout = Layout::new();
    let nested = layout.path("local/nested-remote");
    fs::create_dir(&nested).expect("failed to create the nested directory");
    assert_rejected(
        &layout,
        &layout.path("local"),
        &nested,
        &layout.path("mnt"),
        &[&nested],
    );
}

#[test]
fn local_inside_remote_rejected() {
    let layout = Layout::new();
    let nested = layout.path("remote/nested-local");
    fs::create_dir(&nested).expect("failed to create the nested directory");
    assert_rejected(
        &layout,
        &nested,
        &layout.path("remote"),
        &layout.path("mnt"),
        &[&nested],
    );
}

#[test]
fn mountpoint_inside_local_rejected() {
    let layout = Layout::new();
    let nested = layout.path("local/nested-mnt");
    fs::create_dir(&nested).expect("failed to create the nested directory");
    assert_rejected(
        &layout,
        &layout.path("local"),
        &layout.path("remote"),
        &nested,
        &[&nested],
    );
}

#[test]
fn mountpoint_inside_remote_rejected() {
    let layout = Layout::new();
    let nested = layout.path("remote/nested-mnt");
    fs::create_dir(&nested).expect("failed to create the nested directory");
    assert_rejected(
        &layout,
        &layout.path("local"),
        &layout.path("remote"),
        &nested,
        &[&nested],
    );
}

#[test]
fn mountpoint_same_as_local_rejected() {
    let layout = Layout::new();
    let local = layout.path("local");
    assert_rejected(&layout, &local, &layout.path("remote"), &local, &[&local]);
}

#[test]
fn nonempty_mountpoint_rejected() {
    let layout = Layout::new();
    let mountpoint = layout.path("mnt");
    fs::write(mountpoint.join("existing.txt"), b"already here\n")
        .expect("failed to write into the mount point");
    assert_rejected(
        &layout,
        &layout.path("local"),
        &layout.path("remote"),
        &mountpoint,
        &[&mountpoint],
    );
}

/// Runs `dualfs mount` over the layout's directories with `options` and waits for it to exit.
fn mount_with_options(layout: &Layout, options: &[&str]) -> std::process::Output {
    Command::new(dualfs_binary())
        .arg("mount")
        .arg("--local")
        .arg(layout.path("local"))
        .arg("--remote")
        .arg(layout.path("remote"))
        .args(options)
        .arg(layout.path("mnt"))
        .output()
        .unwrap()
}

/// Option values that cannot work are rejected by the command line itself, before the
/// journal or anything else is created in the local tree, with the value named.
#[test]
fn bad_option_values_rejected_early() {
    let cases: &[(&[&str], &str)] = &[
        (&["--entry-ttl", "-1s"], "durations cannot be negative"),
        (&["--attr-ttl=-5ms"], "durations cannot be negative"),
        (&["--remote-timeout", "0s"], "longer than zero"),
        (
            &["--metrics-addr", "nonsense"],
            "invalid address \"nonsense\"",
        ),
        (
            &["--journal-sync", "sometimes"],
            "possible values: always, background",
        ),
    ];
    for (args, expected) in cases {
        let layout = Layout::new();
        let output = mount_with_options(&layout, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !layout.path("local/.dualfs").exists(),
            "{args:?} created the state folder before failing"
        );
        assert!(mounts_under(&layout.root_path).is_empty());
    }
}

/// A metrics port that another program uses fails the start with the address named, leaves
/// nothing mounted, and never opens the journal (whose owner file would then read as a daemon
/// that died without closing it).
#[test]
fn taken_metrics_port_rejected_early() {
    let layout = Layout::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let output = mount_with_options(&layout, &["--metrics-addr", &addr]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let leftover = mounts_under(&layout.root_path);
    for (mount_point, _) in &leftover {
        lazy_unmount(mount_point);
    }
    assert!(!output.status.success(), "the start succeeded: {stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(leftover.is_empty(), "left mounted: {leftover:?}");
    assert!(
        !layout.path("local/.dualfs/journal").exists(),
        "the journal was opened before the port was checked"
    );
}
