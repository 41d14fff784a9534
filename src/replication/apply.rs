//! Applying one queued operation to the remote tree, reading the current local state.
//!
//! Each function makes the remote path match the local one as it is now. When the local path
//! is gone, the operation is skipped: a later queued operation (unlink, rename) accounts for
//! the change. When the remote lacks what an operation builds on (the source of a rename or a
//! link), the affected local subtree is copied instead, so the remote converges either way.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::time::Instant;

use nix::errno::Errno;
use parking_lot::Mutex;

use super::op::{Op, OpKind, RangeSet};
use crate::backend::{self, file_type, read_dir, times_of, Backend, Stat};

/// Copy buffer size for file data: large enough to keep an NFS connection busy.
const COPY_CHUNK: usize = 1 << 20;

/// A failed remote step, with the errno and what was being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub errno: Errno,
    pub step: &'static str,
    pub path: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} failed: {}", self.step, self.path, self.errno)
    }
}

type Result<T> = std::result::Result<T, ApplyError>;

/// The two trees and the replication settings that shape how operations apply.
pub struct Applier<'a> {
    pub local: &'a Backend,
    pub remote: &'a Backend,
    /// Whether file ownership is copied to the remote (an EFS access point forbids chown).
    pub mirror_owner: bool,
    /// Set to now after each chunk of a long copy, so a copy that progresses is not taken
    /// for a hung call.
    pub heartbeat: Option<&'a Mutex<Option<Instant>>>,
    /// Locks shared by all workers that serialize copying one directory's times.
    pub time_locks: &'a TimeLocks,
}

/// Striped locks by directory path: a small fixed set of mutexes, one chosen by hash.
pub struct TimeLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for TimeLocks {
    fn default() -> Self {
        TimeLocks {
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl TimeLocks {
    fn lock(&self, path: &Path) -> parking_lot::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut hasher);
        let index = hasher.finish() as usize % self.stripes.len();
        self.stripes[index].lock()
    }
}

trait Context<T> {
    fn at(self, step: &'static str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for backend::Result<T> {
    fn at(self, step: &'static str, path: &Path) -> Result<T> {
        self.map_err(|errno| ApplyError {
            errno,
            step,
            path: display(path),
        })
    }
}

fn display(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "/".to_string()
    } else {
        path.display().to_string()
    }
}

/// Treats "the local path is gone" as nothing to do.
fn local_gone(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP)
}

impl Applier<'_> {
    pub fn apply(&self, op: &Op) -> Result<()> {
        match &op.kind {
            OpKind::Mkdir => self.mkdir(&op.path),
            OpKind::Mknod => self.mknod(&op.path),
            OpKind::Symlink => self.symlink(&op.path),
            OpKind::Data(ranges) => self.data(&op.path, ranges),
            OpKind::Attr => self.attr(&op.path),
            OpKind::Xattr(name) => self.xattr(&op.path, name),
            OpKind::Unlink => self.unlink(&op.path),
            OpKind::Rmdir => self.rmdir(&op.path),
            OpKind::Rename { to, flags } => self.rename(&op.path, to, *flags),
            OpKind::Link { to } => self.link(&op.path, to),
            OpKind::Fsync => self.fsync(&op.path),
            OpKind::Resync => self.copy_tree(&op.path),
        }
    }

    /// Returns the local attributes, or `None` when the local path no longer exists.
    fn local_stat(&self, path: &Path) -> Result<Option<Stat>> {
        match self.local.lstat(path) {
            Ok(st) => Ok(Some(st)),
            Err(errno) if local_gone(errno) => Ok(None),
            Err(errno) => Err(errno).at("local stat", path),
        }
    }

    fn mkdir(&self, path: &Path) -> Result<()> {
        let Some(st) = self.local_stat(path)? else {
            return Ok(());
        };
        if file_type(&st) != libc::S_IFDIR {
            return Ok(());
        }
        self.ensure_dir(path, &st)?;
        self.copy_attrs(path, &st)?;
        self.copy_parent_times(path)
    }

    fn ensure_dir(&self, path: &Path, st: &Stat) -> Result<()> {
        match self.remote.mkdir(path, st.st_mode & 0o7777) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                let remote = self.remote.lstat(path).at("remote stat", path)?;
                if file_type(&remote) == libc::S_IFDIR {
                    return Ok(());
                }
                self.remove_any(path)?;
                self.remote
                    .mkdir(path, st.st_mode & 0o7777)
                    .at("remote mkdir", path)
            }
            Err(errno) => Err(errno).at("remote mkdir", path),
        }
    }

    fn mknod(&self, path: &Path) -> Result<()> {
        let Some(st) = self.local_stat(path)? else {
            return Ok(());
        };
        let kind = file_type(&st);
        if !matches!(
            kind,
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
        ) {
            return Ok(());
        }
        self.replace_with(
            path,
            |remote| remote.mknod(path, st.st_mode, st.st_rdev),
            "remote mknod",
        )?;
        self.copy_attrs(path, &st)?;
        self.copy_parent_times(path)
    }

    fn symlink(&self, path: &Path) -> Result<()> {
        let target = match self.local.readlink(path) {
            Ok(target) => target,
            Err(errno) if local_gone(errno) || errno == Errno::EINVAL => return Ok(()),
            Err(errno) => return Err(errno).at("local readlink", path),
        };
        let Some(st) = self.local_stat(path)? else {
            return Ok(());
        };

        if let Ok(existing) = self.remote.readlink(path) {
            if existing == target {
                self.copy_attrs(path, &st)?;
                return self.copy_parent_times(path);
            }
        }
        self.replace_with(
            path,
            |remote| remote.symlink(&target, path),
            "remote symlink",
        )?;
        self.copy_attrs(path, &st)?;
        self.copy_parent_times(path)
    }

    /// Runs `create`, and when the remote path is taken, removes what is there and retries.
    fn replace_with(
        &self,
        path: &Path,
        create: impl Fn(&Backend) -> backend::Result<()>,
        step: &'static str,
    ) -> Result<()> {
        match create(self.remote) {
            Err(Errno::EEXIST) => {
                self.remove_any(path)?;
                create(self.remote).at(step, path)
            }
            other => other.at(step, path),
        }
    }

    fn data(&self, path: &Path, ranges: &RangeSet) -> Result<()> {
        let local = match self
            .local
            .open_file(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        {
            Ok(file) => file,
            Err(errno) if local_gone(errno) => return Ok(()),
            Err(errno) => return Err(errno).at("local open", path),
        };
        let st = backend::fstat(local.as_fd()).at("local stat", path)?;
        if file_type(&st) != libc::S_IFREG {
            return Ok(());
        }

        let (remote, created) = self.open_remote_file(path, &st)?;
        let ranges = if created {
            RangeSet::everything()
        } else {
            ranges.clone()
        };
        for &(start, end) in ranges.ranges() {
            let beat = || {
                if let Some(heartbeat) = self.heartbeat {
                    *heartbeat.lock() = Some(Instant::now());
                }
            };
            copy_range(
                &local,
                &remote,
                start,
                end.min(st.st_size as u64),
                path,
                &beat,
            )?;
        }

        // SAFETY: plain syscall on an open descriptor.
        let ret = unsafe { libc::ftruncate(remote.as_raw_fd(), st.st_size) };
        if ret < 0 {
            return Err(Errno::last()).at("remote truncate", path);
        }
        drop(remote);

        self.copy_attrs(path, &st)?;
        if created {
            self.copy_parent_times(path)?;
        }
        Ok(())
    }

    /// Opens the remote file for writing, creating it (or replacing a non-file) as needed.
    /// Also returns whether it was created, because a created file must be copied whole.
    fn open_remote_file(&self, path: &Path, st: &Stat) -> Result<(File, bool)> {
        let mode = st.st_mode & 0o7777 | 0o200;
        match self.remote.lstat(path) {
            // A remote hard link that the local file no longer shares must not be written
            // through, or the other names would change too.
            Ok(remote_st)
                if file_type(&remote_st) == libc::S_IFREG
                    && remote_st.st_nlink > 1
                    && st.st_nlink == 1 =>
            {
                self.remove_any(path)?;
                self.create_remote_file(path, mode)
            }
            Ok(remote_st) if file_type(&remote_st) == libc::S_IFREG => {
                let file = self
                    .remote
                    .open_file(path, libc::O_WRONLY, 0)
                    .at("remote open", path)?;
                Ok((file, false))
            }
            Ok(_) => {
                self.remove_any(path)?;
                self.create_remote_file(path, mode)
            }
            Err(Errno::ENOENT) => self.create_remote_file(path, mode),
            Err(errno) => Err(errno).at("remote stat", path),
        }
    }

    fn create_remote_file(&self, path: &Path, mode: u32) -> Result<(File, bool)> {
        let file = self
            .remote
            .open_file(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, mode)
            .at("remote create", path)?;
        Ok((file, true))
    }

    fn attr(&self, path: &Path) -> Result<()> {
        let Some(st) = self.local_stat(path)? else {
            return Ok(());
        };
        match self.copy_attrs(path, &st) {
            // The remote entry is created by an earlier operation that is still to be
            // reconciled (for example a rename whose source was missing): copy it whole.
            Err(err) if err.errno == Errno::ENOENT => self.copy_tree(path),
            other => other,
        }
    }

    /// Copies mode, owner and times of a local entry to the remote one.
    fn copy_attrs(&self, path: &Path, st: &Stat) -> Result<()> {
        let is_symlink = file_type(st) == libc::S_IFLNK;
        if self.mirror_owner {
            self.remote
                .chown(path, st.st_uid, st.st_gid)
                .at("remote chown", path)?;
        }
        // chown clears set-id bits, so the mode comes after it.
        if !is_symlink {
            self.remote
                .chmod(path, st.st_mode & 0o7777)
                .at("remote chmod", path)?;
        }
        if file_type(st) == libc::S_IFDIR {
            return self.copy_dir_times(path);
        }
        self.remote
            .utimens(path, &times_of(st))
            .at("remote utimens", path)
    }

    /// Copies the times of the parent directory, which every entry change on the remote
    /// resets.
    fn copy_parent_times(&self, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        self.copy_dir_times(parent)
    }

    /// Copies the current local times of a directory under its stripe lock. Workers changing
    /// entries of one directory in parallel each copy its times; without the lock, one could
    /// read the times before another's change and write them after, leaving them stale.
    fn copy_dir_times(&self, dir: &Path) -> Result<()> {
        let _guard = self.time_locks.lock(dir);
        let Some(st) = self.local_stat(dir)? else {
            return Ok(());
        };
        match self.remote.utimens(dir, &times_of(&st)) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno).at("remote utimens", dir),
        }
    }

    fn xattr(&self, path: &Path, name: &OsStr) -> Result<()> {
        let value = match self.local.getxattr(path, name) {
            Ok(value) => Some(value),
            Err(Errno::ENODATA) => None,
            Err(errno) if local_gone(errno) || errno == Errno::ENOTSUP => return Ok(()),
            Err(errno) => return Err(errno).at("local getxattr", path),
        };

        let result = match &value {
            Some(value) => self.remote.setxattr(path, name, value, 0),
            None => match self.remote.removexattr(path, name) {
                Err(Errno::ENODATA) => Ok(()),
                other => other,
            },
        };
        match result {
            // The remote backing has no user xattrs (NFSv4.1 on EFS), so its answer is final.
            Err(Errno::ENOTSUP) => {
                tracing::debug!(path = %path.display(), "remote backing does not support xattrs");
                Ok(())
            }
            other => other.at("remote setxattr", path),
        }
    }

    fn unlink(&self, path: &Path) -> Result<()> {
        match self.remote.unlink(path) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => self.remove_any(path)?,
            Err(errno) => return Err(errno).at("remote unlink", path),
        }
        self.restore_if_local(path)?;
        self.copy_parent_times(path)
    }

    fn rmdir(&self, path: &Path) -> Result<()> {
        match self.remote.rmdir(path) {
            Ok(()) | Err(Errno::ENOENT) => {}
            // The local directory was empty when it was removed, and local decides.
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR) => self.remove_any(path)?,
            Err(errno) => return Err(errno).at("remote rmdir", path),
        }
        self.restore_if_local(path)?;
        self.copy_parent_times(path)
    }

    /// Copies `path` back after a removal when the local tree holds it again: it was
    /// recreated since, or the removal is replayed from the journal although the local one
    /// failed. Either way the remote ends equal to the local tree.
    fn restore_if_local(&self, path: &Path) -> Result<()> {
        if self.local_stat(path)?.is_some() {
            self.copy_tree(path)?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path, flags: u32) -> Result<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let remote_flags = if exchange { flags } else { 0 };

        // The local tree holds the source again: it was recreated since, or this rename is
        // replayed from the journal although the local one failed. The remote rename still
        // runs, then both names are copied from the local tree, so either case converges.
        if !exchange && self.local_stat(from)?.is_some() {
            match self.remote.rename(from, to, 0) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EISDIR | Errno::ENOTDIR) => {
                    self.remove_any(to)?;
                }
                Err(errno) => return Err(errno).at("remote rename", from),
            }
            self.copy_tree(to)?;
            self.copy_tree(from)?;
            self.copy_parent_times(from)?;
            return self.copy_parent_times(to);
        }

        match self.remote.rename(from, to, remote_flags) {
            Ok(()) => {}
            Err(Errno::ENOENT) if exchange => {
                self.copy_tree(from)?;
                self.copy_tree(to)?;
            }
            Err(Errno::ENOENT) => {
                self.copy_tree(to)?;
            }
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EISDIR | Errno::ENOTDIR) => {
                self.remove_any(to)?;
                match self.remote.rename(from, to, 0) {
                    Ok(()) => {}
                    Err(Errno::ENOENT) => self.copy_tree(to)?,
                    Err(errno) => return Err(errno).at("remote rename", from),
                }
            }
            Err(errno) => return Err(errno).at("remote rename", from),
        }

        self.copy_parent_times(from)?;
        self.copy_parent_times(to)
    }

    fn link(&self, existing: &Path, new: &Path) -> Result<()> {
        // Link on the remote only while both local names are one file; otherwise (a later
        // change, or a replayed link whose local call failed) copy what the new name holds.
        let same_local = match (self.local_stat(existing)?, self.local_stat(new)?) {
            (Some(a), Some(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
            _ => false,
        };
        if !same_local {
            return self.copy_tree(new);
        }

        match self.remote.link(existing, new) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let same = match (self.remote.lstat(existing), self.remote.lstat(new)) {
                    (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
                    _ => false,
                };
                if !same {
                    self.remove_any(new)?;
                    self.remote.link(existing, new).at("remote link", new)?;
                }
            }
            Err(Errno::ENOENT) => return self.copy_tree(new),
            Err(errno) => return Err(errno).at("remote link", new),
        }
        self.copy_parent_times(new)
    }

    fn fsync(&self, path: &Path) -> Result<()> {
        let file = match self
            .remote
            .open_file(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        {
            Ok(file) => file,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => return Err(errno).at("remote open", path),
        };
        file.sync_all()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .at("remote fsync", path)
    }

    /// Removes whatever the remote contains at `path`, recursively for a directory.
    pub fn remove_any(&self, path: &Path) -> Result<()> {
        let st = match self.remote.lstat(path) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => return Err(errno).at("remote stat", path),
        };
        if file_type(&st) != libc::S_IFDIR {
            return match self.remote.unlink(path) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(errno).at("remote unlink", path),
            };
        }

        let fd = self.remote.open_dir(path).at("remote opendir", path)?;
        for entry in read_dir(fd).at("remote readdir", path)? {
            self.remove_any(&path.join(&entry.name))?;
        }
        match self.remote.rmdir(path) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno).at("remote rmdir", path),
        }
    }

    /// Makes the remote subtree at `path` equal to the local one: copies every local entry
    /// and removes remote entries the local tree does not have.
    pub fn copy_tree(&self, path: &Path) -> Result<()> {
        let Some(st) = self.local_stat(path)? else {
            self.remove_any(path)?;
            return self.copy_parent_times(path);
        };
        match file_type(&st) {
            libc::S_IFDIR => {
                self.ensure_dir(path, &st)?;
                let fd = self.local.open_dir(path).at("local opendir", path)?;
                let entries = read_dir(fd).at("local readdir", path)?;
                let is_root = path.as_os_str().is_empty();
                let mut names = std::collections::HashSet::with_capacity(entries.len());
                for entry in entries {
                    if is_root && entry.name.as_bytes() == crate::STATE_DIR.as_bytes() {
                        continue;
                    }
                    self.copy_tree(&path.join(&entry.name))?;
                    names.insert(entry.name);
                }

                let fd = self.remote.open_dir(path).at("remote opendir", path)?;
                for entry in read_dir(fd).at("remote readdir", path)? {
                    if !names.contains(&entry.name) {
                        self.remove_any(&path.join(&entry.name))?;
                    }
                }
                self.copy_attrs(path, &st)?;
                self.copy_parent_times(path)
            }
            libc::S_IFREG => self.data(path, &RangeSet::everything()),
            libc::S_IFLNK => self.symlink(path),
            _ => self.mknod(path),
        }
    }
}

/// Copies `[start, end)` from `src` to `dst`, punching holes where the source has them so
/// sparse files stay sparse on the remote.
fn copy_range(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    path: &Path,
    beat: &dyn Fn(),
) -> Result<()> {
    let mut offset = start;
    let mut buf = vec![0u8; COPY_CHUNK.min(end.saturating_sub(start) as usize).max(1)];
    while offset < end {
        let data_start = seek(src, offset, libc::SEEK_DATA);
        let data_start = match data_start {
            Ok(pos) => pos.min(end),
            // No data after offset: the rest of the range is a hole.
            Err(Errno::ENXIO) => end,
            Err(errno) => return Err(errno).at("local seek", path),
        };
        if data_start > offset {
            punch_hole(dst, offset, data_start - offset).at("remote punch hole", path)?;
            offset = data_start;
            continue;
        }

        let hole_start = seek(src, offset, libc::SEEK_HOLE)
            .at("local seek", path)?
            .min(end);
        while offset < hole_start {
            let want = ((hole_start - offset) as usize).min(buf.len());
            let read = src
                .read_at(&mut buf[..want], offset)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .at("local read", path)?;
            if read == 0 {
                return Ok(());
            }
            dst.write_all_at(&buf[..read], offset)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .at("remote write", path)?;
            offset += read as u64;
            beat();
        }
    }
    Ok(())
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> backend::Result<u64> {
    // SAFETY: lseek on an open descriptor; the result is checked.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as u64)
    }
}

/// Deallocates a range of the remote file; a backing without hole punching gets zeros.
fn punch_hole(file: &File, offset: u64, len: u64) -> backend::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an open descriptor; the result is checked.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::EOPNOTSUPP | Errno::ENOSYS => write_zeros(file, offset, len),
        errno => Err(errno),
    }
}

fn write_zeros(file: &File, offset: u64, len: u64) -> backend::Result<()> {
    let zeros = vec![0u8; COPY_CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        done += n as u64;
    }
    Ok(())
}
