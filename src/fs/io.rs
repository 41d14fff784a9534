//! Calls on open files: open, create, read, write, fsync, fallocate, lseek, copy_file_range.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use nix::errno::Errno;

use super::creds::CallerIdentity;
use super::handles::FileHandle;
use super::{io_errno, Caller, DualFs, Entry, FsResult};
use crate::backend::{self, file_type, Side};
use crate::replication::{Mode, Op, OpKind, RangeSet};

/// Open flags that dualfs handles itself rather than passing to the backing file: appends
/// arrive with the offset the kernel chose, O_DIRECT would require aligned buffers, and
/// creation flags apply only to create.
const STRIPPED_FLAGS: libc::c_int =
    libc::O_APPEND | libc::O_DIRECT | libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;

fn wants_write(flags: libc::c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl DualFs {
    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        if let Some(handle) = self.handles.file(fh) {
            return Ok(handle);
        }
        let slot = self.handles.slot(fh).ok_or(Errno::EBADF)?;
        // A file opened before this daemon took over: open it again by its path, or by its
        // hidden link once its last name was removed.
        let (path, side) = match self.node_path(slot.id) {
            Ok(path) => (path, slot.side),
            Err(_) if self.orphans.lock().contains(&slot.id) => {
                (super::orphans::orphan_path(slot.id), Side::Local)
            }
            Err(_) => return Err(Errno::ESTALE),
        };
        let flags = slot.flags & !(STRIPPED_FLAGS | libc::O_TRUNC);
        let file = self.on_side(side, move |backend| backend.open_file(&path, flags, 0))?;
        Ok(self.handles.restore_file(
            fh,
            FileHandle {
                file,
                id: slot.id,
                side,
            },
        ))
    }

    /// Returns the current path of an open file, or `None` once its last name was removed,
    /// in which case its changes have nothing left to reach on the remote.
    pub(super) fn open_file_path(&self, handle: &FileHandle) -> Option<PathBuf> {
        let path = self.inodes.lock().path(handle.id)?;
        let st = backend::fstat(handle.file.as_fd()).ok()?;
        (st.st_nlink > 0).then_some(path)
    }

    /// Makes a data change through an open file with `local` and records it for the remote,
    /// unless the file has no name left.
    fn record_data<T>(
        &self,
        handle: &FileHandle,
        ranges: RangeSet,
        local: impl FnOnce() -> FsResult<T>,
    ) -> FsResult<T> {
        let Some(path) = self.open_file_path(handle) else {
            return local();
        };
        self.cache.invalidate(&path);
        let result = self
            .replicator
            .record(Op::new(path.clone(), OpKind::Data(ranges)), local);
        self.cache.invalidate(&path);
        result
    }

    pub fn open(&self, id: u64, flags: libc::c_int) -> FsResult<u64> {
        let path = self.node_path(id)?;
        let (mut side, st) = self.resolve(&path)?;
        if file_type(&st) == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        if side == Side::Remote && (wants_write(flags) || self.config.hydrate) {
            self.ensure_local(&path)?;
            side = Side::Local;
        }

        let open_flags = flags & !STRIPPED_FLAGS;
        let open = || {
            let path = path.clone();
            self.on_side(side, move |backend| backend.open_file(&path, open_flags, 0))
        };
        let file = if flags & libc::O_TRUNC != 0 {
            self.cache.invalidate(&path);
            // Everything: the whole old content is gone, whatever size the file has later.
            let op = Op::new(path.clone(), OpKind::Data(RangeSet::everything()));
            self.replicator.record(op, open)?
        } else {
            open()?
        };
        Ok(self
            .handles
            .insert_file(FileHandle { file, id, side }, flags))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: libc::c_int,
        caller: Caller,
    ) -> FsResult<(Entry, u64)> {
        let path = self.prepare_create(parent, name)?;
        let open_flags = (flags & !STRIPPED_FLAGS) | libc::O_CREAT | (flags & libc::O_EXCL);
        // Everything: the path may still hold an older file on the remote.
        let op = Op::new(path.clone(), OpKind::Data(RangeSet::everything()));
        let file = self.replicator.record(op, || {
            let _identity = CallerIdentity::assume(caller.uid, caller.gid);
            self.local.open_file(&path, open_flags, mode & 0o7777)
        })?;

        let entry = self.created_file(parent, name, &path, &file)?;
        let fh = self.handles.insert_file(
            FileHandle {
                file,
                id: entry.id,
                side: Side::Local,
            },
            flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
        );
        Ok((entry, fh))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        if handle.side == Side::Remote {
            return self.on_side(Side::Remote, move |_| {
                read_exact_or_eof(&handle.file, offset, size)
            });
        }
        read_exact_or_eof(&handle.file, offset, size)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        if handle.side != Side::Local {
            return Err(Errno::EBADF);
        }
        let ranges = RangeSet::single(offset, data.len() as u64);
        self.record_data(&handle, ranges, || {
            handle.file.write_all_at(data, offset).map_err(io_errno)
        })?;
        Ok(data.len() as u32)
    }

    pub fn release(&self, fh: u64) {
        if let Err(errno) = self.record_passthrough_writes(fh) {
            tracing::warn!(%errno, fh, "cannot record the writes of a closed passthrough writer");
        }
        self.passthrough_writers.lock().remove(&fh);
        let id = self.handles.slot(fh).map(|slot| slot.id);
        self.handles.remove_file(fh);
        if let Some(id) = id {
            self.release_orphan(id);
        }
    }

    /// Flushes the local file; in sync mode also waits for its remote copy, up to the
    /// remote timeout, and flushes that too.
    pub fn fsync(&self, fh: u64, datasync: bool) -> FsResult<()> {
        let handle = self.handle(fh)?;
        self.record_passthrough_writes(fh)?;
        let result = if datasync {
            handle.file.sync_data()
        } else {
            handle.file.sync_all()
        };
        result.map_err(io_errno)?;
        // What the application made durable locally must also stay known to the journal.
        self.replicator.sync_journal();

        if self.replicator.mode() == Mode::Sync && handle.side == Side::Local {
            if let Some(path) = self.open_file_path(&handle) {
                self.replicator
                    .submit_and_wait(Op::new(path, OpKind::Fsync))?;
            }
        }
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let handle = self.handle(fh)?;
        if handle.side != Side::Local {
            return Err(Errno::EBADF);
        }
        self.record_data(&handle, RangeSet::single(offset, length), || {
            // SAFETY: fallocate on an open descriptor; the result is checked.
            let ret = unsafe {
                libc::fallocate(
                    handle.file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            };
            if ret < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        })
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> FsResult<i64> {
        let handle = self.handle(fh)?;
        // SAFETY: lseek on an open descriptor; only its offset changes, which dualfs never
        // uses because all I/O is positional.
        let ret = unsafe { libc::lseek(handle.file.as_raw_fd(), offset, whence) };
        if ret < 0 {
            return Err(Errno::last());
        }
        Ok(ret)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let source = self.handle(fh_in)?;
        let target = self.handle(fh_out)?;
        if target.side != Side::Local {
            return Err(Errno::EBADF);
        }
        let len = len.min(u32::MAX as u64 & !0xfff);

        let copy = || match kernel_copy(&source.file, offset_in, &target.file, offset_out, len) {
            Ok(n) => Ok(n),
            Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                buffered_copy(&source.file, offset_in, &target.file, offset_out, len)
            }
            Err(errno) => Err(errno),
        };
        let copied = self.record_data(&target, RangeSet::single(offset_out, len), copy)?;
        Ok(copied as u32)
    }
}

/// Reads `size` bytes at `offset`, fewer only at the end of the file, as FUSE expects.
fn read_exact_or_eof(file: &File, offset: u64, size: u32) -> FsResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read_at(&mut buf[filled..], offset + filled as u64)
            .map_err(io_errno)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

fn kernel_copy(src: &File, off_in: u64, dst: &File, off_out: u64, len: u64) -> FsResult<u64> {
    let mut off_in = off_in as libc::loff_t;
    let mut off_out = off_out as libc::loff_t;
    // SAFETY: both descriptors are open and the offsets point at live locals.
    let ret = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len as usize,
            0,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as u64)
    }
}

fn buffered_copy(src: &File, off_in: u64, dst: &File, off_out: u64, len: u64) -> FsResult<u64> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = src
            .read_at(&mut buf[..want], off_in + done)
            .map_err(io_errno)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], off_out + done)
            .map_err(io_errno)?;
        done += n as u64;
    }
    Ok(done)
}
