//! The fuser adapter: each request is parsed, handed to one `DualFs` call, and the result or
//! errno is sent back. The mapping from errors to FUSE replies sits here and nowhere else.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno as FuseErrno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;

use std::sync::Arc;

use super::namespace::SetAttr;
use super::passthrough::{Backing, Decision, IoModes};
use super::{Caller, DualFs, Entry};
use crate::metrics::{Metrics, RequestTimer};

/// Largest write the kernel may send in one request (the kernel caps it at 1 MiB).
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: DualFs,
    metrics: Arc<Metrics>,
    io_modes: Arc<IoModes>,
    gate: Arc<Gate>,
}

/// Stops request handling for a handover. Once closed, a request that arrives is never
/// answered: its thread waits until the process exits, and the kernel sends the request again
/// to the next daemon (FUSE_NOTIFY_RESEND). Requests already running finish first.
#[derive(Default)]
pub struct Gate {
    closed: AtomicBool,
    running: AtomicUsize,
}

/// A request inside the gate, timed for the metrics.
struct Running<'a> {
    gate: &'a Gate,
    _timer: RequestTimer<'a>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.gate.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    fn enter(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.running.fetch_sub(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        }
    }

    /// Closes the gate and waits up to `timeout` for running requests to finish; returns
    /// how many are still running.
    pub fn close(&self, timeout: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running.load(Ordering::SeqCst);
            if running == 0 || Instant::now() > deadline {
                return running;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl FuseAdapter {
    pub fn new(
        fs: DualFs,
        metrics: Arc<Metrics>,
        io_modes: Arc<IoModes>,
        gate: Arc<Gate>,
    ) -> FuseAdapter {
        FuseAdapter {
            fs,
            metrics,
            io_modes,
            gate,
        }
    }

    /// Lets a request in through the gate and starts its timer.
    fn begin(&self, op: &'static str) -> Running<'_> {
        self.gate.enter();
        Running {
            gate: &self.gate,
            _timer: self.metrics.time(op),
        }
    }

    fn entry_ttl(&self) -> Duration {
        self.fs.config().entry_ttl
    }

    fn attr_ttl(&self) -> Duration {
        self.fs.config().attr_ttl
    }

    /// Converts an error for the reply and counts it.
    fn errno_of(&self, errno: Errno) -> FuseErrno {
        self.metrics.record_error(errno as i32);
        FuseErrno::from_i32(errno as i32)
    }

    fn reply_empty(&self, reply: ReplyEmpty, result: Result<(), Errno>) {
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    /// Replies to a getxattr or listxattr request with the size when 0 bytes are requested,
    /// the value when it fits, and ERANGE when it does not.
    fn reply_xattr(&self, reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
        match result {
            Ok(value) if size == 0 => reply.size(value.len() as u32),
            Ok(value) if value.len() <= size as usize => reply.data(&value),
            Ok(_) => reply.error(self.errno_of(Errno::ERANGE)),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    /// A resent creation whose name exists most likely ran before the crash: it is answered
    /// with the existing entry.
    fn created_before(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        result: Result<Entry, Errno>,
    ) -> Result<Entry, Errno> {
        match result {
            Err(Errno::EEXIST) if resent(req) => {
                self.fs.lookup(parent, name).map_err(|_| Errno::EEXIST)
            }
            other => other,
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, result: Result<Entry, Errno>) {
        match result {
            Ok(entry) => reply.entry_with_ttls(
                &self.entry_ttl(),
                &self.attr_ttl(),
                &entry.attr,
                Generation(0),
            ),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }
}

/// The bit the kernel sets in the id of a request it sends again after FUSE_NOTIFY_RESEND.
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// Whether the kernel sent this request again because a previous daemon had read it but died
/// before answering. Such a request may already have run.
fn resent(req: &Request) -> bool {
    req.unique().0 & FUSE_UNIQUE_RESEND != 0
}

/// Answers a resent removal that finds nothing to remove with success: it most likely ran
/// before the crash.
fn removed_before(req: &Request, result: Result<(), Errno>) -> Result<(), Errno> {
    match result {
        Err(Errno::ENOENT) if resent(req) => Ok(()),
        other => other,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        if self.io_modes.is_enabled() {
            if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
                wanted |= InitFlags::FUSE_PASSTHROUGH;
                // Backing files sit on a plain filesystem, so one level of stacking suffices.
                let _ = config.set_max_stack_depth(1);
            } else {
                self.io_modes
                    .disable("the kernel does not offer FUSE passthrough (Linux 6.9 or later)");
            }
        }
        let supported = wanted & config.capabilities();
        let _ = config.add_capabilities(supported);
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        tracing::info!(capabilities = ?supported, "FUSE session initialized");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _request = self.begin("lookup");
        self.reply_entry(reply, self.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _request = self.begin("getattr");
        match self.fs.getattr(ino.0, fh.map(|fh| fh.0)) {
            Ok(attr) => reply.attr(&self.attr_ttl(), &attr),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _request = self.begin("setattr");
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.fs.setattr(ino.0, fh.map(|fh| fh.0), change) {
            Ok(attr) => reply.attr(&self.attr_ttl(), &attr),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _request = self.begin("readlink");
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _request = self.begin("mknod");
        let result = self.fs.mknod(parent.0, name, mode, rdev, caller(req));
        let result = self.created_before(req, parent.0, name, result);
        self.reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _request = self.begin("mkdir");
        let result = self.fs.mkdir(parent.0, name, mode, caller(req));
        let result = self.created_before(req, parent.0, name, result);
        self.reply_entry(reply, result);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin("unlink");
        let result = self.fs.unlink(parent.0, name);
        self.reply_empty(reply, removed_before(req, result));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin("rmdir");
        let result = self.fs.rmdir(parent.0, name);
        self.reply_empty(reply, removed_before(req, result));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _request = self.begin("symlink");
        let result = self
            .fs
            .symlink(parent.0, link_name, target.as_os_str(), caller(req));
        let result = self.created_before(req, parent.0, link_name, result);
        self.reply_entry(reply, result);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("rename");
        let result = self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        // A resent rename whose source is gone and whose target exists ran before the crash.
        let result = match result {
            Err(Errno::ENOENT) if resent(req) && self.fs.lookup_exists(newparent.0, newname) => {
                Ok(())
            }
            other => other,
        };
        self.reply_empty(reply, result);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _request = self.begin("link");
        let result = self.fs.link(ino.0, newparent.0, newname);
        let result = self.created_before(req, newparent.0, newname, result);
        self.reply_entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.begin("open");
        let fh = match self.fs.open(ino.0, flags.0) {
            Ok(fh) => fh,
            Err(errno) => return reply.error(self.errno_of(errno)),
        };
        let Some(file) = self.fs.backing_file(fh) else {
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        };
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        let decision = self.io_modes.open(fh, ino.0, read_only, |inherited| {
            let id = match inherited {
                // SAFETY: the id is a backing file of this connection that an earlier daemon
                // registered and that was not closed; from now on its `BackingId` closes it.
                Some(raw) => {
                    return Ok(Backing {
                        id: Arc::new(unsafe { reply.wrap_backing(raw) }),
                        raw,
                    })
                }
                None => reply.open_backing(&file)?,
            };
            let raw = id.into_raw();
            // SAFETY: `raw` was just registered and released by `into_raw` above.
            let id = Arc::new(unsafe { reply.wrap_backing(raw) });
            Ok(Backing { id, raw })
        });
        let backing = match &decision {
            Decision::Passthrough(backing) => Some(backing.raw),
            Decision::Cached => None,
        };
        self.fs
            .set_handle_mode(fh, decision.mode().slot_mode(), backing);
        if backing.is_some() && !read_only {
            if let Err(errno) = self.fs.begin_passthrough_write(fh) {
                self.io_modes.release(fh);
                self.fs.release(fh);
                return reply.error(self.errno_of(errno));
            }
        }
        match decision {
            Decision::Passthrough(backing) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id)
            }
            Decision::Cached => reply.opened(FileHandle(fh), FopenFlags::empty()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _request = self.begin("read");
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _request = self.begin("write");
        match self.fs.write(fh.0, offset, data) {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("flush");
        // Writes reach the local file synchronously, so there is nothing left to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("release");
        self.io_modes.release(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("fsync");
        self.reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.begin("opendir");
        match self.fs.opendir(ino.0) {
            // The kernel caches the listing; any change made through the mount drops it.
            Ok((fh, keep)) => {
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if keep {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(fh), flags)
            }
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _request = self.begin("readdir");
        let listing = match self.fs.listing(ino.0, fh.0) {
            Ok(listing) => listing,
            Err(errno) => return reply.error(self.errno_of(errno)),
        };
        for (index, entry) in listing.entries.iter().enumerate().skip(offset as usize) {
            let next_offset = index as u64 + 1;
            if reply.add(INodeNo(entry.ino), next_offset, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _request = self.begin("readdirplus");
        let listing = match self.fs.listing(ino.0, fh.0) {
            Ok(listing) => listing,
            Err(errno) => return reply.error(self.errno_of(errno)),
        };
        for (index, listed) in listing.entries.iter().enumerate().skip(offset as usize) {
            let next_offset = index as u64 + 1;
            let is_dot = listed.name == "." || listed.name == "..";
            let entry = if is_dot {
                self.fs.getattr(listing.id, None).map(|attr| Entry {
                    id: listing.id,
                    attr,
                })
            } else {
                self.fs.lookup(listing.id, &listed.name)
            };
            // An entry removed since opendir is skipped rather than failing the listing.
            let Ok(mut entry) = entry else { continue };
            if is_dot {
                entry.attr.ino = INodeNo(listed.ino);
            }

            let full = reply.add(
                INodeNo(entry.id),
                next_offset,
                &listed.name,
                &self.entry_ttl(),
                &entry.attr,
                Generation(0),
            );
            if full {
                // The kernel did not receive this entry, so it holds no reference to drop.
                if !is_dot {
                    self.fs.forget(entry.id, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("releasedir");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("fsyncdir");
        match self.fs.fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _request = self.begin("statfs");
        match self.fs.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("setxattr");
        self.reply_empty(reply, self.fs.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _request = self.begin("getxattr");
        self.reply_xattr(reply, size, self.fs.getxattr(ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _request = self.begin("listxattr");
        self.reply_xattr(reply, size, self.fs.listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin("removexattr");
        self.reply_empty(reply, self.fs.removexattr(ino.0, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _request = self.begin("access");
        // Permission checks are the kernel's (default_permissions); only existence is ours.
        self.reply_empty(reply, self.fs.access(ino.0));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _request = self.begin("create");
        match self.fs.create(parent.0, name, mode, flags, caller(req)) {
            Ok((entry, fh)) => {
                // A new inode has no other opens, so its writer is page-cached.
                let decision = self.io_modes.open(fh, entry.id, false, |_| {
                    Err(std::io::Error::other("a created file is never passthrough"))
                });
                self.fs
                    .set_handle_mode(fh, decision.mode().slot_mode(), None);
                reply.created(
                    &self.entry_ttl(),
                    &entry.attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin("fallocate");
        self.reply_empty(reply, self.fs.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _request = self.begin("lseek");
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(offset) => reply.offset(offset),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Files on dualfs support no ioctl; ENOTTY is what isatty() and tools expect.
        reply.error(FuseErrno::from_i32(libc::ENOTTY));
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _request = self.begin("copy_file_range");
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(self.errno_of(errno)),
        }
    }
}
