//! Calls on the backing tree. Every function returns the backing errno unchanged, so the
//! FUSE caller gets the backing filesystem's error.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use nix::errno::Errno;
use parking_lot::Mutex;

use super::{DirHandle, OpenFile, Shared};
use crate::nodes::ROOT_ID;

pub type Result<T> = std::result::Result<T, Errno>;

fn errno_of(err: io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Turns a libc return value into a result, reading errno on -1.
fn check(ret: libc::c_int) -> Result<libc::c_int> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> Result<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

pub fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn timespec_of(time: Option<TimeOrNow>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(time)) => {
            let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
                Ok(after) => (after.as_secs() as i64, after.subsec_nanos() as i64),
                Err(before) => {
                    let before = before.duration();
                    let mut secs = -(before.as_secs() as i64);
                    let mut nanos = before.subsec_nanos() as i64;
                    if nanos > 0 {
                        secs -= 1;
                        nanos = 1_000_000_000 - nanos;
                    }
                    (secs, nanos)
                }
            };
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}

/// One entry of a directory listing.
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: OsString,
}

/// Attribute changes of one setattr request.
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

/// The caller of a request that creates a node, who becomes its owner.
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Target of a metadata operation on a node: its path, or an open descriptor when the
/// request names a file handle or the node's name is gone.
enum Target {
    Path(PathBuf),
    File(Arc<OpenFile>),
}

impl Target {
    fn metadata(&self) -> Result<Metadata> {
        match self {
            Target::Path(path) => fs::symlink_metadata(path).map_err(errno_of),
            Target::File(open) => open.file.metadata().map_err(errno_of),
        }
    }

    fn chmod(&self, mode: u32) -> Result<()> {
        let mode = mode & 0o7777;
        match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                // SAFETY: fchmodat only reads the NUL-terminated path.
                check(unsafe {
                    libc::fchmodat(
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        mode,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            Target::File(open) => {
                // SAFETY: the descriptor is owned by `open` and stays open for the call.
                check(unsafe { libc::fchmod(open.file.as_raw_fd(), mode) })?;
            }
        }
        Ok(())
    }

    fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        // -1 leaves the id unchanged.
        let uid = uid.unwrap_or(u32::MAX);
        let gid = gid.unwrap_or(u32::MAX);
        match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                // SAFETY: lchown only reads the NUL-terminated path.
                check(unsafe { libc::lchown(path.as_ptr(), uid, gid) })?;
            }
            Target::File(open) => {
                // SAFETY: the descriptor stays open for the call.
                check(unsafe { libc::fchown(open.file.as_raw_fd(), uid, gid) })?;
            }
        }
        Ok(())
    }

    fn truncate(&self, size: u64) -> Result<()> {
        match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                // SAFETY: truncate only reads the NUL-terminated path.
                check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) })?;
            }
            Target::File(open) => open.file.set_len(size).map_err(errno_of)?,
        }
        Ok(())
    }

    fn set_times(&self, atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> Result<()> {
        let times = [timespec_of(atime), timespec_of(mtime)];
        match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                // SAFETY: utimensat reads the path and the two timespecs.
                check(unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            Target::File(open) => {
                // SAFETY: futimens reads the two timespecs; the descriptor stays open.
                check(unsafe { libc::futimens(open.file.as_raw_fd(), times.as_ptr()) })?;
            }
        }
        Ok(())
    }

    /// Reads an xattr value into `buffer`, or returns its size when `buffer` is empty.
    fn getxattr(&self, name: &OsStr, buffer: &mut [u8]) -> Result<usize> {
        let name = c_name(name)?;
        let (data, size) = if buffer.is_empty() {
            (std::ptr::null_mut(), 0)
        } else {
            (buffer.as_mut_ptr().cast(), buffer.len())
        };
        // SAFETY: the calls write at most `size` bytes to `data`, which `buffer` owns.
        let ret = match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), data, size) }
            }
            Target::File(open) => unsafe {
                libc::fgetxattr(open.file.as_raw_fd(), name.as_ptr(), data, size)
            },
        };
        check_size(ret)
    }

    fn listxattr(&self, buffer: &mut [u8]) -> Result<usize> {
        let (data, size) = if buffer.is_empty() {
            (std::ptr::null_mut(), 0)
        } else {
            (buffer.as_mut_ptr().cast(), buffer.len())
        };
        // SAFETY: the calls write at most `size` bytes to `data`, which `buffer` owns.
        let ret = match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                unsafe { libc::llistxattr(path.as_ptr(), data, size) }
            }
            Target::File(open) => unsafe { libc::flistxattr(open.file.as_raw_fd(), data, size) },
        };
        check_size(ret)
    }

    fn setxattr(&self, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let name = c_name(name)?;
        let data = value.as_ptr().cast();
        // SAFETY: the calls read `value.len()` bytes from `value` and the NUL-terminated
        // strings.
        let ret = match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), data, value.len(), flags) }
            }
            Target::File(open) => unsafe {
                libc::fsetxattr(
                    open.file.as_raw_fd(),
                    name.as_ptr(),
                    data,
                    value.len(),
                    flags,
                )
            },
        };
        check(ret).map(drop)
    }

    fn removexattr(&self, name: &OsStr) -> Result<()> {
        let name = c_name(name)?;
        // SAFETY: the calls only read the NUL-terminated strings.
        let ret = match self {
            Target::Path(path) => {
                let path = c_path(path)?;
                unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) }
            }
            Target::File(open) => unsafe {
                libc::fremovexattr(open.file.as_raw_fd(), name.as_ptr())
            },
        };
        check(ret).map(drop)
    }
}

/// Statistics of the backing filesystem, as statfs replies carry them.
pub struct FsStats {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub block_size: u32,
    pub name_max: u32,
    pub fragment_size: u32,
}

impl Shared {
    /// Returns the backing path of node `ino`, or ENOENT if its name was removed.
    fn backing_path(&self, ino: u64) -> Result<PathBuf> {
        let relative = self.nodes.lock().path(ino, true).ok_or(Errno::ENOENT)?;
        Ok(self.root.join(relative))
    }

    fn backing_child(&self, parent: u64, name: &OsStr) -> Result<PathBuf> {
        if name.as_bytes().contains(&b'/') || name.is_empty() {
            return Err(Errno::EINVAL);
        }
        Ok(self.backing_path(parent)?.join(name))
    }

    fn open_file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.files.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn target(&self, ino: u64, fh: Option<u64>) -> Result<Target> {
        if let Some(open) = fh.and_then(|fh| self.files.lock().get(&fh).cloned()) {
            return Ok(Target::File(open));
        }
        match self.backing_path(ino) {
            Ok(path) => Ok(Target::Path(path)),
            Err(errno) => {
                // A removed file that is still open keeps working through its descriptor.
                let files = self.files.lock();
                let open = files.values().find(|open| open.ino == ino).cloned();
                open.map(Target::File).ok_or(errno)
            }
        }
    }

    fn attr_of(&self, id: u64, meta: &Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(id),
            size: meta.size(),
            blocks: meta.blocks(),
            atime: system_time(meta.atime(), meta.atime_nsec()),
            mtime: system_time(meta.mtime(), meta.mtime_nsec()),
            ctime: system_time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(meta.mode()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            flags: 0,
        }
    }

    /// Records the node found at `name` in `parent` and returns its attributes and
    /// generation for an entry reply.
    fn entry_of(&self, parent: u64, name: &OsStr, meta: &Metadata) -> (FileAttr, u64) {
        let kind = kind_of(meta.mode());
        let (id, generation) = self.nodes.lock().remember(parent, name, meta.ino(), kind);
        (self.attr_of(id, meta), generation)
    }

    /// Makes the caller the owner of a node faultfs just created as root, as a kernel
    /// filesystem would. The group is kept when the parent directory is set-group-ID, since
    /// the new node then inherits the directory's group.
    fn give_to_caller(&self, path: &Path, parent: &Path, caller: Caller) {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let setgid_parent = fs::metadata(parent)
            .map(|meta| meta.mode() & libc::S_ISGID != 0)
            .unwrap_or(false);
        let gid = if setgid_parent {
            None
        } else {
            Some(caller.gid)
        };
        let target = Target::Path(path.to_path_buf());
        if let Err(errno) = target.chown(Some(caller.uid), gid) {
            tracing::warn!(path = %path.display(), ?errno, "cannot give a new node to its creator");
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(FileAttr, u64)> {
        let path = self.backing_child(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        Ok(self.entry_of(parent, name, &meta))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.nodes.lock().forget(ino, count);
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr> {
        let meta = self.target(ino, fh)?.metadata()?;
        Ok(self.attr_of(ino, &meta))
    }

    pub fn setattr(&self, ino: u64, fh: Option<u64>, change: AttrChange) -> Result<FileAttr> {
        let target = self.target(ino, fh)?;
        if let Some(mode) = change.mode {
            target.chmod(mode)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            target.chown(change.uid, change.gid)?;
        }
        if let Some(size) = change.size {
            target.truncate(size)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            target.set_times(change.atime, change.mtime)?;
        }
        Ok(self.attr_of(ino, &target.metadata()?))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let target = fs::read_link(self.backing_path(ino)?).map_err(errno_of)?;
        Ok(target.into_os_string().into_vec())
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<(FileAttr, u64)> {
        let parent_path = self.backing_path(parent)?;
        let path = self.backing_child(parent, name)?;
        let c = c_path(&path)?;
        // SAFETY: mknod only reads the NUL-terminated path.
        check(unsafe { libc::mknod(c.as_ptr(), mode, libc::dev_t::from(rdev)) })?;
        // The kernel already applied the caller's umask; faultfs's own umask must not apply.
        Target::Path(path.clone()).chmod(mode)?;
        self.give_to_caller(&path, &parent_path, caller);
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        Ok(self.entry_of(parent, name, &meta))
    }

    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<(FileAttr, u64)> {
        let parent_path = self.backing_path(parent)?;
        let path = self.backing_child(parent, name)?;
        fs::create_dir(&path).map_err(errno_of)?;
        // mkdir(2) keeps the set-group-ID bit that a directory inherits from its parent.
        let inherited = fs::metadata(&path).map_or(0, |meta| meta.mode() & libc::S_ISGID);
        Target::Path(path.clone()).chmod((mode & 0o7777) | inherited)?;
        self.give_to_caller(&path, &parent_path, caller);
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        Ok(self.entry_of(parent, name, &meta))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let path = self.backing_child(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        fs::remove_file(&path).map_err(errno_of)?;
        let last_link = meta.nlink() <= 1;
        self.nodes
            .lock()
            .removed(parent, name, meta.ino(), last_link);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let path = self.backing_child(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        fs::remove_dir(&path).map_err(errno_of)?;
        self.nodes.lock().removed(parent, name, meta.ino(), true);
        Ok(())
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<(FileAttr, u64)> {
        let parent_path = self.backing_path(parent)?;
        let path = self.backing_child(parent, name)?;
        std::os::unix::fs::symlink(target, &path).map_err(errno_of)?;
        self.give_to_caller(&path, &parent_path, caller);
        let meta = fs::symlink_metadata(&path).map_err(errno_of)?;
        Ok(self.entry_of(parent, name, &meta))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let from = self.backing_child(parent, name)?;
        let to = self.backing_child(new_parent, new_name)?;
        let moved = fs::symlink_metadata(&from).map_err(errno_of)?;
        let replaced = fs::symlink_metadata(&to).ok();

        let (c_from, c_to) = (c_path(&from)?, c_path(&to)?);
        // SAFETY: renameat2 only reads the two NUL-terminated paths.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c_from.as_ptr(),
                libc::AT_FDCWD,
                c_to.as_ptr(),
                flags,
            )
        })?;

        let mut nodes = self.nodes.lock();
        if flags & libc::RENAME_EXCHANGE != 0 {
            if let Some(other) = &replaced {
                nodes.moved(other.ino(), parent, name);
            }
        } else if let Some(other) = replaced.filter(|other| other.ino() != moved.ino()) {
            let last_link = other.is_dir() || other.nlink() <= 1;
            nodes.removed(new_parent, new_name, other.ino(), last_link);
        }
        nodes.moved(moved.ino(), new_parent, new_name);
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<(FileAttr, u64)> {
        let from = self.backing_path(ino)?;
        let to = self.backing_child(new_parent, new_name)?;
        fs::hard_link(&from, &to).map_err(errno_of)?;
        let meta = fs::symlink_metadata(&to).map_err(errno_of)?;
        Ok(self.entry_of(new_parent, new_name, &meta))
    }

    /// Opens the backing file of `ino` and returns the new file handle.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let path = self.backing_path(ino)?;
        let file = open_backing(&path, flags, None)?;
        Ok(self.add_open_file(ino, file))
    }

    fn add_open_file(&self, ino: u64, file: File) -> u64 {
        let fh = self.new_handle();
        self.files
            .lock()
            .insert(fh, Arc::new(OpenFile { file, ino }));
        fh
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(FileAttr, u64, u64)> {
        let parent_path = self.backing_path(parent)?;
        let path = self.backing_child(parent, name)?;
        let file = open_backing(&path, flags | libc::O_CREAT, Some(mode))?;
        // The kernel already applied the caller's umask; faultfs's own umask must not apply.
        // SAFETY: the descriptor is owned by `file` and open.
        check(unsafe { libc::fchmod(file.as_raw_fd(), mode & 0o7777) })?;
        self.give_to_caller(&path, &parent_path, caller);
        let meta = file.metadata().map_err(errno_of)?;
        let (attr, generation) = self.entry_of(parent, name, &meta);
        let fh = self.add_open_file(attr.ino.0, file);
        Ok((attr, generation, fh))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let open = self.open_file(fh)?;
        let mut buffer = vec![0; size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match open
                .file
                .read_at(&mut buffer[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if filled == 0 => return Err(errno_of(err)),
                Err(_) => break,
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let open = self.open_file(fh)?;
        let mut written = 0;
        while written < data.len() {
            match open
                .file
                .write_at(&data[written..], offset + written as u64)
            {
                Ok(0) => break,
                Ok(count) => written += count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if written == 0 => return Err(errno_of(err)),
                // A short write reports what reached the file; the caller retries the rest.
                Err(_) => break,
            }
        }
        Ok(written as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let open = self.open_file(fh)?;
        let result = if datasync {
            open.file.sync_data()
        } else {
            open.file.sync_all()
        };
        result.map_err(errno_of)
    }

    pub fn release(&self, fh: u64) {
        self.files.lock().remove(&fh);
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let open = self.open_file(fh)?;
        // SAFETY: the descriptor stays open for the call.
        check(unsafe {
            libc::fallocate(
                open.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        })
        .map(drop)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let open = self.open_file(fh)?;
        // SAFETY: the descriptor stays open for the call. faultfs reads and writes with
        // explicit offsets, so moving the descriptor's own offset affects nothing else.
        let position = unsafe { libc::lseek(open.file.as_raw_fd(), offset, whence) };
        if position < 0 {
            return Err(Errno::last());
        }
        Ok(position)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let path = self.backing_path(ino)?;
        if !fs::symlink_metadata(&path).map_err(errno_of)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.new_handle();
        let handle = DirHandle {
            ino,
            entries: Vec::new(),
        };
        self.dirs.lock().insert(fh, Arc::new(Mutex::new(handle)));
        Ok(fh)
    }

    /// Returns the directory's entries from `offset` on. The listing is read afresh when the
    /// kernel starts at offset 0, and kept for the following requests of the same pass.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        let handle = self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let mut handle = handle.lock();
        if offset == 0 {
            handle.entries = self.list_dir(handle.ino)?;
        }
        let entries = handle
            .entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(index, entry)| {
                let entry = DirEntry {
                    ino: entry.ino,
                    kind: entry.kind,
                    name: entry.name.clone(),
                };
                (index as u64 + 1, entry)
            })
            .collect();
        Ok(entries)
    }

    fn list_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let path = self.backing_path(ino)?;
        let parent = if ino == ROOT_ID {
            ROOT_ID
        } else {
            let parent_path = path.parent().unwrap_or(&self.root);
            let parent_meta = fs::symlink_metadata(parent_path).map_err(errno_of)?;
            self.nodes.lock().id_of_ino(parent_meta.ino())
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(&path).map_err(errno_of)? {
            let entry = entry.map_err(errno_of)?;
            let kind = match entry.file_type() {
                Ok(kind) => kind_of_file_type(kind),
                // Removed since the listing was read.
                Err(_) => continue,
            };
            entries.push(DirEntry {
                ino: self.nodes.lock().id_of_ino(entry.ino()),
                kind,
                name: entry.file_name(),
            });
        }
        Ok(entries)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    pub fn statfs(&self) -> Result<FsStats> {
        let stats = nix::sys::statvfs::statvfs(&self.root)?;
        Ok(FsStats {
            blocks: stats.blocks(),
            blocks_free: stats.blocks_free(),
            blocks_available: stats.blocks_available(),
            files: stats.files(),
            files_free: stats.files_free(),
            block_size: stats.block_size() as u32,
            name_max: stats.name_max() as u32,
            fragment_size: stats.fragment_size() as u32,
        })
    }

    /// Returns the value of xattr `name`, or only its length when `size` is 0. ERANGE when
    /// the value is longer than `size`.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Result<XattrReply> {
        let target = self.target(ino, None)?;
        if size == 0 {
            return Ok(XattrReply::Size(target.getxattr(name, &mut [])? as u32));
        }
        let mut buffer = vec![0; size as usize];
        let length = target.getxattr(name, &mut buffer)?;
        buffer.truncate(length);
        Ok(XattrReply::Data(buffer))
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply> {
        let target = self.target(ino, None)?;
        if size == 0 {
            return Ok(XattrReply::Size(target.listxattr(&mut [])? as u32));
        }
        let mut buffer = vec![0; size as usize];
        let length = target.listxattr(&mut buffer)?;
        buffer.truncate(length);
        Ok(XattrReply::Data(buffer))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.target(ino, None)?.setxattr(name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        self.target(ino, None)?.removexattr(name)
    }

    /// Checks `mask` (F_OK, R_OK, W_OK, X_OK) for faultfs's own user on the backing path.
    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        let path = c_path(&self.backing_path(ino)?)?;
        // SAFETY: faccessat only reads the NUL-terminated path.
        check(unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                path.as_ptr(),
                mask,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }
}

/// Result of a getxattr or listxattr request.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

fn kind_of_file_type(kind: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        FileType::Directory
    } else if kind.is_symlink() {
        FileType::Symlink
    } else if kind.is_fifo() {
        FileType::NamedPipe
    } else if kind.is_char_device() {
        FileType::CharDevice
    } else if kind.is_block_device() {
        FileType::BlockDevice
    } else if kind.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

/// Opens a backing file with the kernel's open flags. O_APPEND is dropped because the kernel
/// sends every write with its offset already at the end of the file, and pwrite(2) on an
/// O_APPEND descriptor would ignore that offset. O_DIRECT is dropped because the backing may
/// reject the kernel's buffer alignment.
fn open_backing(path: &Path, flags: i32, mode: Option<u32>) -> Result<File> {
    let flags = (flags & !(libc::O_APPEND | libc::O_DIRECT | libc::O_NOCTTY)) | libc::O_CLOEXEC;
    let c = c_path(path)?;
    let mode = mode.unwrap_or(0) & 0o7777;
    // SAFETY: open only reads the NUL-terminated path; the descriptor it returns is owned by
    // the File below and by nothing else.
    let fd = check(unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) })?;
    Ok(unsafe { File::from_raw_fd(fd) })
}
