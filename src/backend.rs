//! One backing tree (the local or the remote directory), reached only through descriptors.
//!
//! Every call resolves the parent directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from the root descriptor and then acts on the final name with an `*at()` call that does not
//! follow symlinks, so no path given to dualfs can reach outside the backing root, even when
//! another writer swaps a directory for a symlink behind our back.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

pub type Result<T> = std::result::Result<T, Errno>;

/// A raw `struct stat`, as `fstatat` fills it.
pub type Stat = libc::stat;

/// The role of a backing tree: local or remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Local,
    Remote,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Local => "local",
            Side::Remote => "remote",
        }
    }
}

/// A backing directory tree opened once at start.
#[derive(Debug)]
pub struct Backend {
    side: Side,
    root: OwnedFd,
    root_path: PathBuf,
}

/// The directory that holds the final component of a path: the root itself or an opened
/// descendant.
enum ParentDir<'a> {
    Root(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl ParentDir<'_> {
    fn raw(&self) -> RawFd {
        match self {
            ParentDir::Root(fd) => fd.as_raw_fd(),
            ParentDir::Opened(fd) => fd.as_raw_fd(),
        }
    }
}

fn cvt(ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> Result<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

fn cstring(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Splits a relative path into its parent and final name; the root itself is `("", ".")`.
fn split(rel: &Path) -> (&Path, &OsStr) {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => (Path::new(""), OsStr::new(".")),
    }
}

impl Backend {
    /// Opens the backing root directory.
    pub fn open(side: Side, root_path: &Path) -> io::Result<Backend> {
        let c_path = CString::new(root_path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;

        // SAFETY: c_path is a valid NUL-terminated string and the return value is checked.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }

        // SAFETY: fd was just returned by open and nothing else owns it.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Backend {
            side,
            root,
            root_path: root_path.to_path_buf(),
        })
    }

    pub fn side(&self) -> Side {
        self.side
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Opens a directory below the root with `openat2`, refusing every symlink and `..` escape.
    fn open_beneath(&self, rel: &Path, flags: libc::c_int) -> Result<OwnedFd> {
        let c_path = cstring(rel.as_os_str())?;
        // SAFETY: open_how is a plain C struct for which all zeros is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

        // SAFETY: `how` lives across the call, its size is passed, and the result is checked.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret < 0 {
            return Err(Errno::last());
        }

        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
    }

    fn parent(&self, rel: &Path) -> Result<(ParentDir<'_>, CString)> {
        let (parent, name) = split(rel);
        let c_name = cstring(name)?;
        if parent.as_os_str().is_empty() {
            return Ok((ParentDir::Root(self.root.as_fd()), c_name));
        }
        let fd = self.open_beneath(parent, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((ParentDir::Opened(fd), c_name))
    }

    /// Returns the attributes of `rel` without following a final symlink.
    pub fn lstat(&self, rel: &Path) -> Result<Stat> {
        let (dir, name) = self.parent(rel)?;
        let mut st = std::mem::MaybeUninit::<Stat>::uninit();

        // SAFETY: the kernel fills `st` on success, which is the only case we read it.
        cvt(unsafe {
            libc::fstatat(
                dir.raw(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(unsafe { st.assume_init() })
    }

    /// Opens `rel` with `flags` (never following a final symlink); `mode` is used with O_CREAT.
    pub fn open_file(&self, rel: &Path, flags: libc::c_int, mode: u32) -> Result<File> {
        let (dir, name) = self.parent(rel)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;

        // SAFETY: name is NUL-terminated; the returned descriptor is checked and owned below.
        let fd =
            cvt(unsafe { libc::openat(dir.raw(), name.as_ptr(), flags, mode as libc::c_uint) })?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Opens a directory for listing.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.open_beneath(Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY);
        }
        self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    pub fn mkdir(&self, rel: &Path, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe { libc::mkdirat(dir.raw(), name.as_ptr(), mode) }).map(drop)
    }

    pub fn mknod(&self, rel: &Path, mode: u32, rdev: u64) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe { libc::mknodat(dir.raw(), name.as_ptr(), mode, rdev) }).map(drop)
    }

    pub fn symlink(&self, target: &OsStr, rel: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        let c_target = cstring(target)?;
        // SAFETY: plain syscall on a valid descriptor and strings.
        cvt(unsafe { libc::symlinkat(c_target.as_ptr(), dir.raw(), name.as_ptr()) }).map(drop)
    }

    pub fn readlink(&self, rel: &Path) -> Result<OsString> {
        let (dir, name) = self.parent(rel)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];

        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let len = cvt_size(unsafe {
            libc::readlinkat(dir.raw(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        buf.truncate(len);
        Ok(OsString::from_vec(buf))
    }

    pub fn unlink(&self, rel: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe { libc::unlinkat(dir.raw(), name.as_ptr(), 0) }).map(drop)
    }

    pub fn rmdir(&self, rel: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe { libc::unlinkat(dir.raw(), name.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Renames with `renameat2`, so RENAME_NOREPLACE and RENAME_EXCHANGE keep their meaning.
    pub fn rename(&self, from: &Path, to: &Path, flags: u32) -> Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        // SAFETY: plain syscall on valid descriptors and strings.
        cvt(unsafe {
            libc::renameat2(
                from_dir.raw(),
                from_name.as_ptr(),
                to_dir.raw(),
                to_name.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    pub fn link(&self, existing: &Path, new: &Path) -> Result<()> {
        let (old_dir, old_name) = self.parent(existing)?;
        let (new_dir, new_name) = self.parent(new)?;
        // SAFETY: plain syscall on valid descriptors and strings; flags 0 never follows symlinks.
        cvt(unsafe {
            libc::linkat(
                old_dir.raw(),
                old_name.as_ptr(),
                new_dir.raw(),
                new_name.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    /// Changes permission bits; symlinks have none on Linux, so they are left alone.
    pub fn chmod(&self, rel: &Path, mode: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe { libc::fchmodat(dir.raw(), name.as_ptr(), mode & 0o7777, 0) }).map(drop)
    }

    /// Changes ownership without following a final symlink; `u32::MAX` leaves an id unchanged.
    pub fn chown(&self, rel: &Path, uid: u32, gid: u32) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: plain syscall on a valid descriptor and string.
        cvt(unsafe {
            libc::fchownat(
                dir.raw(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Sets access and modification times (UTIME_NOW and UTIME_OMIT pass through).
    pub fn utimens(&self, rel: &Path, times: &[libc::timespec; 2]) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: `times` points at two timespecs, as utimensat requires.
        cvt(unsafe {
            libc::utimensat(
                dir.raw(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    pub fn truncate(&self, rel: &Path, size: u64) -> Result<()> {
        let file = self.open_file(rel, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
        // SAFETY: plain syscall on an open descriptor.
        cvt(unsafe { libc::ftruncate(file.as_raw_fd(), size as libc::off_t) }).map(drop)
    }

    pub fn statfs(&self) -> Result<libc::statvfs> {
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: the kernel fills `st` on success, the only case we read it.
        cvt(unsafe { libc::fstatvfs(self.root.as_raw_fd(), st.as_mut_ptr()) })?;
        Ok(unsafe { st.assume_init() })
    }

    /// Opens `rel` as an O_PATH descriptor and names it through /proc, because the xattr
    /// calls take a path and we must not resolve the backing path a second time.
    fn xattr_handle(&self, rel: &Path) -> Result<(OwnedFd, CString)> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: name is NUL-terminated; the descriptor is checked and owned below.
        let fd = cvt(unsafe {
            libc::openat(
                dir.raw(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        let st = fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            // Linux keeps no user.* attributes on symlinks; the caller maps this case.
            return Err(Errno::ENOTSUP);
        }
        let proc_path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
        Ok((fd, proc_path))
    }

    pub fn getxattr(&self, rel: &Path, name: &OsStr) -> Result<Vec<u8>> {
        let (_fd, proc_path) = self.xattr_handle(rel)?;
        let c_name = cstring(name)?;
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: the kernel writes at most buf.len() bytes into buf.
            let ret = unsafe {
                libc::getxattr(
                    proc_path.as_ptr(),
                    c_name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            match cvt_size(ret) {
                Ok(len) => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Err(Errno::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
                Err(err) => return Err(err),
            }
        }
    }

    pub fn setxattr(&self, rel: &Path, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let (_fd, proc_path) = self.xattr_handle(rel)?;
        let c_name = cstring(name)?;
        // SAFETY: value points at value.len() readable bytes.
        cvt(unsafe {
            libc::setxattr(
                proc_path.as_ptr(),
                c_name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    pub fn removexattr(&self, rel: &Path, name: &OsStr) -> Result<()> {
        let (_fd, proc_path) = self.xattr_handle(rel)?;
        let c_name = cstring(name)?;
        // SAFETY: plain syscall on valid strings.
        cvt(unsafe { libc::removexattr(proc_path.as_ptr(), c_name.as_ptr()) }).map(drop)
    }

    /// Returns the attribute names of `rel` as the kernel lists them (NUL-separated).
    pub fn listxattr(&self, rel: &Path) -> Result<Vec<u8>> {
        let (_fd, proc_path) = match self.xattr_handle(rel) {
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            other => other?,
        };
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: the kernel writes at most buf.len() bytes into buf.
            let ret =
                unsafe { libc::listxattr(proc_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            match cvt_size(ret) {
                Ok(len) => {
                    buf.truncate(len);
                    return Ok(buf);
                }
                Err(Errno::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
                Err(err) => return Err(err),
            }
        }
    }
}

/// Returns the attributes of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> Result<Stat> {
    let mut st = std::mem::MaybeUninit::<Stat>::uninit();
    // SAFETY: the kernel fills `st` on success, the only case we read it.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    Ok(unsafe { st.assume_init() })
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// The `d_type` byte (DT_REG, DT_DIR, ...), DT_UNKNOWN when the backing does not fill it.
    pub d_type: u8,
}

/// Reads every entry of an open directory except `.` and `..`.
pub fn read_dir(fd: OwnedFd) -> Result<Vec<DirEntry>> {
    read_dir_upto(fd, usize::MAX).map(|entries| entries.unwrap_or_default())
}

/// Lists a directory like [`read_dir`], but stops and returns `None` once it has more than
/// `limit` entries.
pub fn read_dir_upto(fd: OwnedFd, limit: usize) -> Result<Option<Vec<DirEntry>>> {
    // SAFETY: fdopendir takes ownership of the descriptor on success.
    let dir = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if dir.is_null() {
        return Err(Errno::last());
    }
    std::mem::forget(fd);

    let mut entries = Vec::new();
    let mut truncated = false;
    let result = loop {
        Errno::clear();
        // SAFETY: dir is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let errno = Errno::last_raw();
            break if errno == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(errno))
            };
        }

        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if entries.len() == limit {
            truncated = true;
            break Ok(());
        }
        entries.push(DirEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: ent.d_ino,
            d_type: ent.d_type,
        });
    };

    // SAFETY: dir came from fdopendir and is closed exactly once.
    unsafe { libc::closedir(dir) };
    result.map(|()| (!truncated).then_some(entries))
}

/// Returns the file type bits of a stat.
pub fn file_type(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// Returns the access and modification times of a stat, as `utimensat` takes them.
pub fn times_of(st: &Stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}
