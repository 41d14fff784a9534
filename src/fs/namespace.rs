//! Calls that change names or attributes: create, remove, rename, link, setattr.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;

use fuser::FileAttr;
use nix::errno::Errno;

use super::attr::to_timespec;
use super::creds::CallerIdentity;
use super::{Caller, DualFs, Entry, FsResult};
use crate::backend::{self, file_type, Side};
use crate::replication::{Op, OpKind, RangeSet};

/// The attribute changes of one setattr request.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<fuser::TimeOrNow>,
    pub mtime: Option<fuser::TimeOrNow>,
}

impl DualFs {
    /// Prepares the creation of `name` in `parent`: the parent must be in the local tree and
    /// the name must not already be visible (for example only in the remote tree).
    pub(super) fn prepare_create(&self, parent: u64, name: &OsStr) -> FsResult<std::path::PathBuf> {
        let path = self.new_child_path(parent, name)?;
        let parent_path = path.parent().unwrap_or(Path::new(""));
        self.ensure_local(parent_path)?;
        // The kernel's lookup of the new name usually left its result in the cache.
        if let Ok((Side::Remote, _)) = self.resolve(&path) {
            return Err(Errno::EEXIST);
        }
        Ok(path)
    }

    /// Looks up a just-created local entry and registers it.
    pub(super) fn created(&self, parent: u64, name: &OsStr, path: &Path) -> FsResult<Entry> {
        self.cache.invalidate(path);
        let st = self.local.lstat(path)?;
        Ok(self.register(parent, name, Side::Local, &st))
    }

    /// Registers a just-created local file from the attributes of its open descriptor.
    pub(super) fn created_file(
        &self,
        parent: u64,
        name: &OsStr,
        path: &Path,
        file: &std::fs::File,
    ) -> FsResult<Entry> {
        self.cache.invalidate(path);
        let st = crate::backend::fstat(std::os::fd::AsFd::as_fd(file))?;
        Ok(self.register(parent, name, Side::Local, &st))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> FsResult<Entry> {
        let path = self.prepare_create(parent, name)?;
        self.replicator
            .record(Op::new(path.clone(), OpKind::Mkdir), || {
                let _identity = CallerIdentity::assume(caller.uid, caller.gid);
                self.local.mkdir(&path, mode & 0o7777)
            })?;
        self.created(parent, name, &path)
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Entry> {
        let path = self.prepare_create(parent, name)?;
        let kind = if mode & libc::S_IFMT == libc::S_IFREG {
            OpKind::Data(RangeSet::everything())
        } else {
            OpKind::Mknod
        };
        self.replicator.record(Op::new(path.clone(), kind), || {
            let _identity = CallerIdentity::assume(caller.uid, caller.gid);
            self.local.mknod(&path, mode, rdev as u64)
        })?;
        self.created(parent, name, &path)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: Caller,
    ) -> FsResult<Entry> {
        let path = self.prepare_create(parent, name)?;
        self.replicator
            .record(Op::new(path.clone(), OpKind::Symlink), || {
                let _identity = CallerIdentity::assume(caller.uid, caller.gid);
                self.local.symlink(target, &path)
            })?;
        self.created(parent, name, &path)
    }

    pub fn link(&self, id: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Entry> {
        let source = self.node_path(id)?;
        self.ensure_local(&source)?;
        let path = self.prepare_create(new_parent, new_name)?;

        let op = Op::new(source.clone(), OpKind::Link { to: path.clone() });
        self.replicator
            .record(op, || self.local.link(&source, &path))?;
        self.cache.invalidate(&source);
        self.created(new_parent, new_name, &path)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        self.keep_if_open(&path)?;
        self.replicator
            .record(Op::new(path.clone(), OpKind::Unlink), || {
                match self.local.unlink(&path) {
                    Ok(()) => Ok(()),
                    // Only the remote holds this entry: removing it there is the whole change.
                    Err(Errno::ENOENT) => {
                        let st = self.remote_stat(&path).ok_or(Errno::ENOENT)?;
                        if file_type(&st) == libc::S_IFDIR {
                            return Err(Errno::EISDIR);
                        }
                        Ok(())
                    }
                    Err(errno) => Err(errno),
                }
            })?;

        self.inodes.lock().remove_name(parent, name);
        self.cache.invalidate(&path);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        if self.remote_has_visible_children(&path) {
            return Err(Errno::ENOTEMPTY);
        }
        self.replicator
            .record(Op::new(path.clone(), OpKind::Rmdir), || {
                match self.local.rmdir(&path) {
                    Ok(()) => Ok(()),
                    Err(Errno::ENOENT) => {
                        let st = self.remote_stat(&path).ok_or(Errno::ENOENT)?;
                        if file_type(&st) != libc::S_IFDIR {
                            return Err(Errno::ENOTDIR);
                        }
                        Ok(())
                    }
                    Err(errno) => Err(errno),
                }
            })?;

        self.inodes.lock().remove_name(parent, name);
        self.cache.clear();
        Ok(())
    }

    /// Whether the remote directory at `path` has entries that the merged listing shows.
    fn remote_has_visible_children(&self, path: &Path) -> bool {
        if self.replicator.hides_remote(path) {
            return false;
        }
        self.remote_entries(path).iter().any(|entry| {
            let child = path.join(&entry.name);
            !super::is_reserved(&child)
                && self.local.lstat(&child).is_err()
                && !self.replicator.hides_remote(&child)
        })
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.new_child_path(new_parent, new_name)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;

        self.ensure_local(&from)?;
        if exchange {
            self.ensure_local(&to)?;
        } else {
            self.ensure_local(to.parent().unwrap_or(Path::new("")))?;
        }
        if flags & libc::RENAME_NOREPLACE != 0
            && self.local.lstat(&to).is_err()
            && self.remote_stat(&to).is_some()
        {
            return Err(Errno::EEXIST);
        }

        if !exchange {
            self.keep_if_open(&to)?;
        }
        let is_dir = self
            .local
            .lstat(&from)
            .is_ok_and(|st| file_type(&st) == libc::S_IFDIR);
        let op = Op::new(
            from.clone(),
            OpKind::Rename {
                to: to.clone(),
                flags,
            },
        );
        self.replicator
            .record(op, || self.local.rename(&from, &to, flags))?;

        {
            let mut inodes = self.inodes.lock();
            if exchange {
                inodes.exchange(parent, name, new_parent, new_name);
            } else {
                inodes.rename(parent, name, new_parent, new_name);
            }
        }
        if is_dir || exchange {
            self.cache.clear();
        } else {
            self.cache.invalidate(&from);
            self.cache.invalidate(&to);
        }
        Ok(())
    }

    pub fn setattr(&self, id: u64, fh: Option<u64>, change: SetAttr) -> FsResult<FileAttr> {
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let path = self.node_path(id).ok();

        if let Some(handle) = handle.filter(|h| h.side == Side::Local) {
            let fd = handle.file.as_raw_fd();
            match path {
                Some(path) => self.record_setattr(path, &change, || set_attrs_fd(fd, &change))?,
                // The file has no name left: nothing to mirror.
                None => set_attrs_fd(fd, &change)?,
            }
            let st = backend::fstat(std::os::fd::AsFd::as_fd(&handle.file))?;
            return Ok(self.file_attr(id, &st));
        }

        let path = path.ok_or(Errno::ENOENT)?;
        self.ensure_local(&path)?;
        self.record_setattr(path.clone(), &change, || {
            self.set_attrs_path(&path, &change)
        })?;
        let st = self.local.lstat(&path)?;
        Ok(self.file_attr(id, &st))
    }

    fn set_attrs_path(&self, path: &Path, change: &SetAttr) -> FsResult<()> {
        if change.uid.is_some() || change.gid.is_some() {
            self.local.chown(
                path,
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(mode) = change.mode {
            let st = self.local.lstat(path)?;
            if file_type(&st) != libc::S_IFLNK {
                self.local.chmod(path, mode)?;
            }
        }
        if let Some(size) = change.size {
            self.local.truncate(path, size)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = [to_timespec(change.atime), to_timespec(change.mtime)];
            self.local.utimens(path, &times)?;
        }
        Ok(())
    }

    /// Makes an attribute change with `local` and records it for the remote: a size change
    /// is a data change from the new size on, the rest is an attribute copy.
    ///
    /// The range matters when the file grows again before the change is applied: the bytes
    /// the truncation cut must then be copied again (as the zeros or new data they are now),
    /// not left as they were on the remote.
    fn record_setattr(
        &self,
        path: std::path::PathBuf,
        change: &SetAttr,
        local: impl FnOnce() -> FsResult<()>,
    ) -> FsResult<()> {
        let kind = if let Some(size) = change.size {
            OpKind::Data(RangeSet::from_offset(size))
        } else {
            OpKind::Attr
        };
        self.cache.invalidate(&path);
        let result = self.replicator.record(Op::new(path.clone(), kind), local);
        self.cache.invalidate(&path);
        result
    }
}

/// Applies attribute changes through an open descriptor, which also works once the file's
/// last name is gone.
fn set_attrs_fd(fd: i32, change: &SetAttr) -> FsResult<()> {
    // SAFETY: each call acts on an open descriptor and the results are checked.
    unsafe {
        if change.uid.is_some() || change.gid.is_some() {
            check(libc::fchown(
                fd,
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
            ))?;
        }
        if let Some(mode) = change.mode {
            check(libc::fchmod(fd, mode & 0o7777))?;
        }
        if let Some(size) = change.size {
            check(libc::ftruncate(fd, size as libc::off_t))?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = [to_timespec(change.atime), to_timespec(change.mtime)];
            check(libc::futimens(fd, times.as_ptr()))?;
        }
    }
    Ok(())
}

fn check(ret: libc::c_int) -> FsResult<()> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}
