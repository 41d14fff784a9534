//! Extended attributes: `user.*` and the other namespaces pass through to the backing tree;
//! `user.dualfs.*` are virtual, read-only sync-state attributes answered by dualfs.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use nix::errno::Errno;

use super::{DualFs, FsResult};
use crate::backend::{file_type, Side};
use crate::replication::{Op, OpKind};

pub const PREFIX: &str = "user.dualfs.";

/// Names answered on every path.
pub const PATH_ATTRIBUTES: &[&str] = &[
    "user.dualfs.state",
    "user.dualfs.pending_ops",
    "user.dualfs.pending_bytes",
    "user.dualfs.last_sync",
    "user.dualfs.last_error",
];

/// Names answered on the mount root only.
pub const ROOT_ATTRIBUTES: &[&str] = &["user.dualfs.remote", "user.dualfs.queue"];

/// The name operators set to queue a fresh copy of a path to the remote.
pub const RESYNC: &str = "user.dualfs.resync";

fn is_virtual(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX.as_bytes())
}

fn rfc3339(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl DualFs {
    pub fn getxattr(&self, id: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let path = self.node_path(id)?;
        if is_virtual(name) {
            return self.sync_attribute(&path, name).map(String::into_bytes);
        }
        let (side, _) = self.resolve(&path)?;
        let owned = (path.clone(), name.to_os_string());
        let value = self.on_side(side, move |backend| backend.getxattr(&owned.0, &owned.1));
        match value {
            // Linux keeps no user attributes on symlinks.
            Err(Errno::ENOTSUP) if self.is_symlink(&path) => Err(Errno::ENODATA),
            other => other,
        }
    }

    fn is_symlink(&self, path: &Path) -> bool {
        self.resolve(path)
            .is_ok_and(|(_, st)| file_type(&st) == libc::S_IFLNK)
    }

    pub fn listxattr(&self, id: u64) -> FsResult<Vec<u8>> {
        let path = self.node_path(id)?;
        let (side, _) = self.resolve(&path)?;
        self.on_side(side, move |backend| backend.listxattr(&path))
    }

    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let path = self.node_path(id)?;
        if is_virtual(name) {
            return self.set_sync_attribute(&path, name);
        }
        self.ensure_local(&path)?;
        let op = Op::new(path.clone(), OpKind::Xattr(name.to_os_string()));
        self.replicator.record(op, || {
            match self.local.setxattr(&path, name, value, flags) {
                Err(Errno::ENOTSUP) if self.is_symlink(&path) => Err(Errno::EPERM),
                other => other,
            }
        })?;
        self.cache.invalidate(&path);
        Ok(())
    }

    pub fn removexattr(&self, id: u64, name: &OsStr) -> FsResult<()> {
        let path = self.node_path(id)?;
        if is_virtual(name) {
            return Err(Errno::EPERM);
        }
        self.ensure_local(&path)?;
        let op = Op::new(path.clone(), OpKind::Xattr(name.to_os_string()));
        self.replicator
            .record(op, || match self.local.removexattr(&path, name) {
                Err(Errno::ENOTSUP) if self.is_symlink(&path) => Err(Errno::ENODATA),
                other => other,
            })?;
        self.cache.invalidate(&path);
        Ok(())
    }

    /// Handles a write to a virtual attribute: only `user.dualfs.resync` is writable.
    fn set_sync_attribute(&self, path: &Path, name: &OsStr) -> FsResult<()> {
        if name != RESYNC {
            return Err(Errno::EPERM);
        }
        let (side, _) = self.resolve(path)?;
        if side != Side::Local {
            return Err(Errno::EINVAL);
        }
        tracing::info!(path = %path.display(), "resync requested through xattr");
        self.replicator.submit(Op::new(path, OpKind::Resync))
    }

    /// Computes the value of one `user.dualfs.*` attribute for `path`.
    pub fn sync_attribute(&self, path: &Path, name: &OsStr) -> FsResult<String> {
        let is_root = path.as_os_str().is_empty();
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        match name {
            "user.dualfs.state" if is_root => Ok(self.mount_state().to_string()),
            "user.dualfs.state" => self.path_state(path).map(str::to_string),
            "user.dualfs.pending_ops" => {
                let ops = if is_root {
                    self.replicator.summary().ops
                } else {
                    self.replicator.path_summary(path).ops
                };
                Ok(ops.to_string())
            }
            "user.dualfs.pending_bytes" => Ok(self.pending_bytes(path).to_string()),
            "user.dualfs.last_sync" => Ok(self
                .replicator
                .sync_record(path)
                .last_sync
                .map(rfc3339)
                .unwrap_or_default()),
            "user.dualfs.last_error" => {
                let queued = self.replicator.path_summary(path).last_error;
                let recorded = self.replicator.sync_record(path).last_error;
                Ok(queued.map(|e| e.message).or(recorded).unwrap_or_default())
            }
            "user.dualfs.remote" if is_root => Ok(self.remote_health()),
            "user.dualfs.queue" if is_root => {
                let summary = self.replicator.summary();
                Ok(format!(
                    "ops={} in_flight={} failing={} oldest_age_ms={}",
                    summary.ops,
                    summary.in_flight,
                    summary.failing,
                    summary.oldest_age.as_millis()
                ))
            }
            _ => Err(Errno::ENODATA),
        }
    }

    fn mount_state(&self) -> &'static str {
        let summary = self.replicator.summary();
        if summary.ops == 0 {
            "synced"
        } else if summary.failing > 0 {
            "error"
        } else if summary.in_flight > 0 {
            "syncing"
        } else {
            "pending"
        }
    }

    fn remote_health(&self) -> String {
        self.replicator.health().to_string()
    }

    fn path_state(&self, path: &Path) -> FsResult<&'static str> {
        let (side, _) = self.resolve(path)?;
        let summary = self.replicator.path_summary(path);
        if summary.ops > 0 {
            return Ok(if summary.last_error.is_some() {
                "error"
            } else if summary.in_flight > 0 {
                "syncing"
            } else {
                "pending"
            });
        }
        if side == Side::Remote {
            return Ok("remote-only");
        }
        let owned = path.to_path_buf();
        Ok(match self.remote_call(move |remote| remote.lstat(&owned)) {
            Some(Ok(_)) => "synced",
            Some(Err(_)) => "local-only",
            // The remote cannot tell now: nothing is queued, so the last confirmed state stands.
            None if self.replicator.sync_record(path).last_sync.is_some() => "synced",
            None => "local-only",
        })
    }

    fn pending_bytes(&self, path: &Path) -> u64 {
        let size = self.local.lstat(path).map_or(0, |st| st.st_size as u64);
        self.replicator
            .path_summary(path)
            .data_ranges
            .iter()
            .map(|ranges| ranges.bytes_within(size))
            .sum()
    }
}
