//! Backend faults: a full local tree, and (through faultfs) remote errors, a full remote,
//! stale handles and a hung remote.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_no_differences, compare_trees, lazy_unmount, run, Mount};

/// A size-limited tmpfs mounted over a directory, unmounted on drop.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "dualfs-test-small",
            ])
            .arg(path));
        SmallFs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        lazy_unmount(&self.path);
    }
}

#[test]
fn local_enospc_reaches_dd_and_nothing_is_lost() {
    let mut mount = Mount::start();
    // The daemon must open the local tree on the small file system, so it starts again.
    mount.unmount();
    let _small = SmallFs::mount(mount.local(), "16m");
    mount.restart();

    fs::write(
        mount.path().join("before.txt"),
        b"written before the disk filled",
    )
    .unwrap();
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", mount.path().join("big.bin").display()))
        .args(["bs=1M", "count=64", "conv=fsync"])
        .output()
        .expect("failed to run dd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "dd must fail on a full tree: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "dd must report ENOSPC: {stderr}"
    );

    // Deleting frees space and is still recorded, and what was written stays.
    fs::remove_file(mount.path().join("big.bin")).unwrap();
    fs::write(
        mount.path().join("after.txt"),
        b"written after space returned",
    )
    .unwrap();
    assert_eq!(
        fs::read(mount.path().join("before.txt")).unwrap(),
        b"written before the disk filled"
    );

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
    assert!(!mount.remote().join("big.bin").exists());
}
