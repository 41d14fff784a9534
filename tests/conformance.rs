//! POSIX conformance: pjdfstest on a dualfs mount, then the remote compared with the local tree.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_no_differences, compare_trees, lazy_unmount, require_program, Mount};

/// A small tmpfs that pjdfstest uses as the second file system for its EXDEV cases; unmounted
/// on drop.
struct SecondaryFs {
    dir: tempfile::TempDir,
}

impl SecondaryFs {
    fn mount() -> SecondaryFs {
        let dir = tempfile::Builder::new()
            .prefix("dualfs-pjdfstest-second-")
            .tempdir()
            .expect("failed to create a directory for the secondary file system");
        common::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16m", "dualfs-test-second"])
                .arg(dir.path()),
        );
        SecondaryFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SecondaryFs {
    fn drop(&mut self) {
        lazy_unmount(self.dir.path());
    }
}

/// Skips on the mount: the 13 read-only remount tests that the native directory skips too, and
/// `link::link_count_max`, which glibc's pathconf cannot serve for any FUSE file system.
const MAX_SKIPPED: usize = 14;

/// Returns the number before `word` in a pjdfstest summary line such as
/// `Summary: 0 failed, 14 skipped, 384 passed, ...`.
fn count_in_summary(summary: &str, word: &str) -> usize {
    summary
        .split(',')
        .find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next() == Some(word))
                .then(|| words.next().and_then(|n| n.parse().ok()))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no \"{word}\" count in pjdfstest summary: {summary}"))
}

fn pjdfstest_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest/dualfs.toml")
}

#[test]
fn pjdfstest_reports_no_failures() {
    require_program(
        "pjdfstest",
        "pjdfstest (cargo install --locked pjdfstest@0.2.2)",
    );
    let secondary = SecondaryFs::mount();
    // pjdfstest switches to the nobody and daemon users, who need allow_other.
    let mut mount = Mount::start_with_args(&["--allow-other"]);

    let output = Command::new("pjdfstest")
        .arg("-c")
        .arg(pjdfstest_config())
        .arg("-p")
        .arg(mount.path())
        .arg("-s")
        .arg(secondary.path())
        .output()
        .expect("failed to start pjdfstest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failures: Vec<&str> = stdout.lines().filter(|l| l.contains("FAILED")).collect();
    let summary = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or("(no summary line)");

    assert!(
        failures.is_empty(),
        "pjdfstest failures on the dualfs mount ({summary}):\n{}\nstderr:\n{stderr}",
        failures.join("\n")
    );
    assert!(
        output.status.success(),
        "pjdfstest exited with {} ({summary}); stderr:\n{stderr}",
        output.status
    );
    assert!(
        summary.contains(" 0 failed"),
        "unexpected pjdfstest summary: {summary}"
    );
    let skipped = count_in_summary(summary, "skipped");
    assert!(
        skipped <= MAX_SKIPPED,
        "pjdfstest skipped {skipped} tests, more than the {MAX_SKIPPED} documented in TESTING.md: {summary}"
    );

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(
        &compare_trees(mount.local(), mount.remote()),
        "remote after pjdfstest",
    );
}

#[test]
fn fsx_full_featured_run_matches_remote() {
    require_program("fsx", "fsx (cargo install --locked fsx@0.3.2)");
    let operations: u64 = std::env::var("DUALFS_FSX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let mut mount = Mount::start();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fsx/full.toml");

    let output = Command::new("fsx")
        .arg("-N")
        .arg(operations.to_string())
        .args(["-S", "20261204"])
        .arg("-f")
        .arg(&config)
        .arg("-P")
        .arg(mount.local().parent().unwrap())
        .arg(mount.path().join("fsx.bin"))
        .output()
        .expect("failed to start fsx");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .rev()
        .take(30)
        .collect();
    assert!(
        output.status.success(),
        "fsx failed after up to {operations} operations ({}):\n{}",
        output.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(
        &compare_trees(mount.local(), mount.remote()),
        "remote after fsx",
    );
}

/// The stress-ng 0.15 filesystem stressors run on the mount, each with `--verify`.
const STRESSORS: &[&str] = &[
    "hdd",
    "dir",
    "dentry",
    "link",
    "symlink",
    "rename",
    "open",
    "fallocate",
    "fstat",
    "xattr",
    "lockf",
    "flock",
    "utime",
    "chmod",
    "chown",
    "filename",
    "iomix",
    "mknod",
    "fpunch",
    "getdent",
    "mmap",
];

#[test]
fn stress_ng_filesystem_stressors_pass() {
    require_program("stress-ng", "stress-ng");
    let seconds: u64 = std::env::var("DUALFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut mount = Mount::start_with_args(&["--allow-other"]);

    let mut failures = Vec::new();
    for stressor in STRESSORS {
        let output = Command::new("stress-ng")
            .arg(format!("--{stressor}"))
            .arg("2")
            .arg("--verify")
            .arg("--timeout")
            .arg(format!("{seconds}s"))
            .arg("--temp-path")
            .arg(mount.path())
            .output()
            .expect("failed to start stress-ng");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // stress-ng 0.15 exits 0 even when a stressor reports a failure, so its log counts.
        let failed_lines: Vec<&str> = log.lines().filter(|l| l.contains(" fail: ")).collect();
        if !output.status.success() || !failed_lines.is_empty() {
            failures.push(format!(
                "{stressor}: exit {}, {}",
                output.status,
                failed_lines.join(" | ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "stress-ng stressors failed on the mount:\n{}",
        failures.join("\n")
    );

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(
        &compare_trees(mount.local(), mount.remote()),
        "remote after stress-ng",
    );
}
