//! `/sbin/mount.fuse.dualfs`: the program mount(8) runs for `-t fuse.dualfs` and for
//! `fuse.dualfs` lines in /etc/fstab, as `mount.fuse.dualfs SOURCE MOUNTPOINT -o OPTIONS`.
//!
//! It finds the `dualfs` binary and runs it with the same arguments. dualfs translates the
//! options and starts its daemon in the background. It exits 0 once the mount is live, or with
//! mount's failure code 32 and the reason on stderr.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Install locations searched for `dualfs` after the helper's own directory, when DUALFS_BIN
/// is not set. mount(8) resets PATH, so PATH cannot be used.
const SEARCH: &[&str] = &[
    "/usr/local/bin/dualfs",
    "/usr/bin/dualfs",
    "/usr/local/sbin/dualfs",
    "/usr/sbin/dualfs",
    "/sbin/dualfs",
];

fn find_dualfs() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DUALFS_BIN") {
        return Some(PathBuf::from(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dualfs")));
    beside
        .into_iter()
        .chain(SEARCH.iter().map(PathBuf::from))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn main() -> ExitCode {
    let Some(dualfs) = find_dualfs() else {
        eprintln!(
            "mount.fuse.dualfs: the dualfs binary was not found beside this helper or in {}; \
             install it there or set DUALFS_BIN",
            SEARCH.join(", ")
        );
        return ExitCode::from(1);
    };
    let err = Command::new(&dualfs)
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("mount.fuse.dualfs: cannot run {}: {err}", dualfs.display());
    ExitCode::from(1)
}
