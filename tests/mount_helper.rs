//! The mount(8) helper: `mount -t fuse.dualfs`, an fstab line, and `umount`, with the real
//! util-linux commands. The helper is installed as /sbin/mount.fuse.dualfs (a symlink to the
//! built binary) and finds dualfs through DUALFS_BIN.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use common::{assert_no_differences, compare_trees, dualfs_binary, mount_fs_type};

const HELPER: &str = "/sbin/mount.fuse.dualfs";

/// Installs the helper once per test run; an existing helper that is not a symlink into a
/// build directory is left alone and the tests fail with a message.
fn install_helper() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let built = Path::new(dualfs_binary())
            .parent()
            .unwrap()
            .join("mount-fuse-dualfs");
        assert!(
            built.exists(),
            "{} is missing; build it with `cargo build --release -p mount-helper`",
            built.display()
        );
        match fs::read_link(HELPER) {
            Ok(_) => fs::remove_file(HELPER).unwrap(),
            Err(_) if Path::new(HELPER).exists() => {
                panic!("{HELPER} exists and is not a symlink; remove it to run these tests")
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&built, HELPER).unwrap();
    });
}

struct Dirs {
    _root: tempfile::TempDir,
    local: PathBuf,
    remote: PathBuf,
    mountpoint: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let root = tempfile::Builder::new()
            .prefix("dualfs-helper-")
            .tempdir()
            .unwrap();
        let base = fs::canonicalize(root.path()).unwrap();
        let dirs = Dirs {
            local: base.join("local"),
            remote: base.join("remote"),
            mountpoint: base.join("mnt"),
            _root: root,
        };
        for dir in [&dirs.local, &dirs.remote, &dirs.mountpoint] {
            fs::create_dir(dir).unwrap();
        }
        dirs
    }

    fn source(&self) -> String {
        format!(
            "local={},remote={}",
            self.local.display(),
            self.remote.display()
        )
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        if mount_fs_type(&self.mountpoint).is_some() {
            common::lazy_unmount(&self.mountpoint);
        }
    }
}

fn mount_command() -> Command {
    install_helper();
    let mut command = Command::new("mount");
    command.env("DUALFS_BIN", dualfs_binary());
    command
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}, stdout: {}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn umount(path: &Path) {
    let output = Command::new("umount").arg(path).output().unwrap();
    assert!(output.status.success(), "umount: {}", describe(&output));
    // The daemon drains its queue and exits after the unmount.
    for _ in 0..200 {
        if mount_fs_type(path).is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} is still mounted after umount", path.display());
}

#[test]
fn mount_type_option_mounts_and_umount_unmounts() {
    let dirs = Dirs::new();
    let output = mount_command()
        .args(["-t", "fuse.dualfs"])
        .arg(dirs.source())
        .arg(&dirs.mountpoint)
        .args(["-o", "rw,_netdev,nofail,x-systemd.requires=network.target,mode=sync,allow_other,metrics_addr=off"])
        .output()
        .unwrap();
    assert!(output.status.success(), "mount: {}", describe(&output));
    assert_eq!(
        mount_fs_type(&dirs.mountpoint).as_deref(),
        Some("fuse.dualfs"),
        "mount returned before the mount was live"
    );

    fs::write(
        dirs.mountpoint.join("through-mount.txt"),
        b"written via mount(8)",
    )
    .unwrap();
    umount(&dirs.mountpoint);
    assert_no_differences(&compare_trees(&dirs.local, &dirs.remote), "remote");
    assert_eq!(
        fs::read(dirs.remote.join("through-mount.txt")).unwrap(),
        b"written via mount(8)"
    );
}

#[test]
fn fstab_line_mounts() {
    let dirs = Dirs::new();
    let fstab = dirs.local.parent().unwrap().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{} {} fuse.dualfs defaults,_netdev,nofail,mode=async,metrics_addr=off 0 0\n",
            dirs.source(),
            dirs.mountpoint.display()
        ),
    )
    .unwrap();

    let output = mount_command()
        .arg("--fstab")
        .arg(&fstab)
        .arg(&dirs.mountpoint)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mount --fstab: {}",
        describe(&output)
    );
    assert_eq!(
        mount_fs_type(&dirs.mountpoint).as_deref(),
        Some("fuse.dualfs")
    );
    umount(&dirs.mountpoint);
}

#[test]
fn unknown_option_rejected_with_usage_code() {
    let dirs = Dirs::new();
    let output = mount_command()
        .args(["-t", "fuse.dualfs"])
        .arg(dirs.source())
        .arg(&dirs.mountpoint)
        .args(["-o", "compression=zstd"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        stderr.contains("unknown option \"compression=zstd\""),
        "{stderr}"
    );
    assert!(mount_fs_type(&dirs.mountpoint).is_none());
}

#[test]
fn missing_backing_fails_with_mount_failure_code() {
    let dirs = Dirs::new();
    let output = mount_command()
        .args(["-t", "fuse.dualfs"])
        .arg(format!(
            "local={}/absent,remote={}",
            dirs.local.display(),
            dirs.remote.display()
        ))
        .arg(&dirs.mountpoint)
        .args(["-o", "metrics_addr=off"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(32), "{}", describe(&output));
    assert!(
        stderr.contains("absent"),
        "the reason must name the path: {stderr}"
    );
    assert!(mount_fs_type(&dirs.mountpoint).is_none());
}

#[test]
fn unmount_command_waits_for_the_daemon() {
    let dirs = Dirs::new();
    let output = mount_command()
        .args(["-t", "fuse.dualfs"])
        .arg(dirs.source())
        .arg(&dirs.mountpoint)
        .args(["-o", "mode=async,metrics_addr=off"])
        .output()
        .unwrap();
    assert!(output.status.success(), "mount: {}", describe(&output));
    for i in 0..200 {
        fs::write(dirs.mountpoint.join(format!("f{i}")), vec![7u8; 8192]).unwrap();
    }

    let output = Command::new(dualfs_binary())
        .arg("unmount")
        .arg(&dirs.mountpoint)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dualfs unmount: {}",
        describe(&output)
    );
    assert!(mount_fs_type(&dirs.mountpoint).is_none());
    // The daemon drained its queue before it exited, so the remote is complete now.
    assert_no_differences(&compare_trees(&dirs.local, &dirs.remote), "remote");

    let output = Command::new(dualfs_binary())
        .arg("unmount")
        .arg(&dirs.mountpoint)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is not a dualfs mount point"), "{stderr}");
}
