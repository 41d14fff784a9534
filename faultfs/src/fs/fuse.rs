//! The fuser adapter: each request is counted and passed through the fault gate, then the
//! backing call runs on the FUSE thread or, for delayed and hung requests, on a thread of
//! its own.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;

use super::backing::{AttrChange, Caller, XattrReply};
use super::{dispatch, ErrorReply, Shared, Verdict};
use crate::rules::Op;

/// Largest write the kernel may send in one request (the kernel caps it at 1 MiB).
const MAX_WRITE: u32 = 1 << 20;

/// The fuser `Filesystem` of faultfs.
pub struct FaultFilesystem {
    shared: Arc<Shared>,
}

impl FaultFilesystem {
    pub fn new(shared: Arc<Shared>) -> FaultFilesystem {
        FaultFilesystem { shared }
    }

    fn ttl(&self) -> Duration {
        self.shared.options.ttl
    }

    fn open_flags(&self) -> FopenFlags {
        if self.shared.options.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    /// Gates a request on node `ino` and runs `work` if it passes.
    fn on_node<R: ErrorReply>(
        &self,
        op: Op,
        ino: INodeNo,
        reply: R,
        work: impl FnOnce(&Shared, R) + Send + 'static,
    ) {
        let path = self.shared.rule_path(ino.0);
        self.run(op, path, None, reply, work);
    }

    /// Gates a request on `name` in directory `parent` and runs `work` if it passes.
    fn on_child<R: ErrorReply>(
        &self,
        op: Op,
        parent: INodeNo,
        name: &OsStr,
        reply: R,
        work: impl FnOnce(&Shared, R) + Send + 'static,
    ) {
        let path = self.shared.rule_child_path(parent.0, name);
        self.run(op, path, None, reply, work);
    }

    /// Gates a request that involves one or two paths; a rule matching either applies.
    fn run<R: ErrorReply>(
        &self,
        op: Op,
        path: Option<String>,
        second_path: Option<String>,
        reply: R,
        work: impl FnOnce(&Shared, R) + Send + 'static,
    ) {
        let paths: Vec<&str> = path
            .iter()
            .chain(second_path.iter())
            .map(String::as_str)
            .collect();
        let verdict = self.shared.gate(op, &paths);
        dispatch(&self.shared, verdict, op, path, reply, work);
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn reply_entry(reply: ReplyEntry, ttl: Duration, result: Result<(FileAttr, u64), Errno>) {
    match result {
        Ok((attr, generation)) => reply.entry_with_ttls(&ttl, &ttl, &attr, Generation(generation)),
        Err(errno) => reply.fail(errno),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.fail(errno),
    }
}

fn reply_xattr(reply: ReplyXattr, result: Result<XattrReply, Errno>) {
    match result {
        Ok(XattrReply::Size(size)) => reply.size(size),
        Ok(XattrReply::Data(data)) => reply.data(&data),
        Err(errno) => reply.fail(errno),
    }
}

impl Filesystem for FaultFilesystem {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Parallel directory operations let a held lookup leave its siblings alone.
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.shared.shut_down();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ttl = self.ttl();
        let owned = name.to_os_string();
        self.on_child(Op::Lookup, parent, name, reply, move |fs, reply| {
            reply_entry(reply, ttl, fs.lookup(parent.0, &owned));
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl();
        self.on_node(Op::Getattr, ino, reply, move |fs, reply| {
            match fs.getattr(ino.0, fh.map(|fh| fh.0)) {
                Ok(attr) => reply.attr(&ttl, &attr),
                Err(errno) => reply.fail(errno),
            }
        });
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
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ttl = self.ttl();
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        self.on_node(Op::Setattr, ino, reply, move |fs, reply| {
            match fs.setattr(ino.0, fh.map(|fh| fh.0), change) {
                Ok(attr) => reply.attr(&ttl, &attr),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.on_node(Op::Readlink, ino, reply, move |fs, reply| {
            match fs.readlink(ino.0) {
                Ok(target) => reply.data(&target),
                Err(errno) => reply.fail(errno),
            }
        });
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
        let (ttl, caller, owned) = (self.ttl(), caller(req), name.to_os_string());
        self.on_child(Op::Mknod, parent, name, reply, move |fs, reply| {
            reply_entry(reply, ttl, fs.mknod(parent.0, &owned, mode, rdev, caller));
        });
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
        let (ttl, caller, owned) = (self.ttl(), caller(req), name.to_os_string());
        self.on_child(Op::Mkdir, parent, name, reply, move |fs, reply| {
            reply_entry(reply, ttl, fs.mkdir(parent.0, &owned, mode, caller));
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let owned = name.to_os_string();
        self.on_child(Op::Unlink, parent, name, reply, move |fs, reply| {
            reply_empty(reply, fs.unlink(parent.0, &owned));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let owned = name.to_os_string();
        self.on_child(Op::Rmdir, parent, name, reply, move |fs, reply| {
            reply_empty(reply, fs.rmdir(parent.0, &owned));
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (ttl, caller, owned) = (self.ttl(), caller(req), link_name.to_os_string());
        let target = target.to_path_buf();
        self.on_child(Op::Symlink, parent, link_name, reply, move |fs, reply| {
            reply_entry(reply, ttl, fs.symlink(parent.0, &owned, &target, caller));
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from = self.shared.rule_child_path(parent.0, name);
        let to = self.shared.rule_child_path(newparent.0, newname);
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.run(Op::Rename, from, to, reply, move |fs, reply| {
            let result = fs.rename(parent.0, &name, newparent.0, &newname, flags.bits());
            reply_empty(reply, result);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let ttl = self.ttl();
        let existing = self.shared.rule_path(ino.0);
        let new = self.shared.rule_child_path(newparent.0, newname);
        let newname = newname.to_os_string();
        self.run(Op::Link, existing, new, reply, move |fs, reply| {
            reply_entry(reply, ttl, fs.link(ino.0, newparent.0, &newname));
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let open_flags = self.open_flags();
        self.on_node(Op::Open, ino, reply, move |fs, reply| {
            match fs.open(ino.0, flags.0) {
                Ok(fh) => reply.opened(FileHandle(fh), open_flags),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.on_node(Op::Read, ino, reply, move |fs, reply| {
            match fs.read(fh.0, offset, size) {
                Ok(data) => reply.data(&data),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.on_node(Op::Write, ino, reply, move |fs, reply| {
            match fs.write(fh.0, offset, &data) {
                Ok(written) => reply.written(written),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the backing file synchronously, so a flush only needs to pass the gate.
        self.on_node(Op::Flush, ino, reply, |_, reply| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel drops the handle whatever the reply contains, so the backing file is
        // closed even when a rule fails the request.
        self.shared.release(fh.0);
        self.on_node(Op::Release, ino, reply, |_, reply| reply.ok());
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.on_node(Op::Fsync, ino, reply, move |fs, reply| {
            reply_empty(reply, fs.fsync(fh.0, datasync));
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.on_node(Op::Opendir, ino, reply, move |fs, reply| {
            match fs.opendir(ino.0) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.on_node(Op::Readdir, ino, reply, move |fs, mut reply| {
            let entries = match fs.readdir(fh.0, offset) {
                Ok(entries) => entries,
                Err(errno) => return reply.fail(errno),
            };
            for (next_offset, entry) in entries {
                if reply.add(INodeNo(entry.ino), next_offset, entry.kind, &entry.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // As with release, the kernel drops the handle whatever the reply contains.
        self.shared.releasedir(fh.0);
        self.on_node(Op::Releasedir, ino, reply, |_, reply| reply.ok());
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.on_node(Op::Fsyncdir, ino, reply, |_, reply| reply.ok());
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let path = self.shared.rule_path(ino.0);
        let paths: Vec<&str> = path.iter().map(String::as_str).collect();
        let verdict = self.shared.gate(Op::Statfs, &paths);
        let full = matches!(verdict, Verdict::Full);
        dispatch(
            &self.shared,
            verdict,
            Op::Statfs,
            path,
            reply,
            move |fs, reply| match fs.statfs() {
                Ok(mut stats) => {
                    if full {
                        stats.blocks_free = 0;
                        stats.blocks_available = 0;
                        stats.files_free = 0;
                    }
                    reply.statfs(
                        stats.blocks,
                        stats.blocks_free,
                        stats.blocks_available,
                        stats.files,
                        stats.files_free,
                        stats.block_size,
                        stats.name_max,
                        stats.fragment_size,
                    );
                }
                Err(errno) => reply.fail(errno),
            },
        );
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
        let (name, value) = (name.to_os_string(), value.to_vec());
        self.on_node(Op::Setxattr, ino, reply, move |fs, reply| {
            reply_empty(reply, fs.setxattr(ino.0, &name, &value, flags));
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_os_string();
        self.on_node(Op::Getxattr, ino, reply, move |fs, reply| {
            reply_xattr(reply, fs.getxattr(ino.0, &name, size));
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.on_node(Op::Listxattr, ino, reply, move |fs, reply| {
            reply_xattr(reply, fs.listxattr(ino.0, size));
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.on_node(Op::Removexattr, ino, reply, move |fs, reply| {
            reply_empty(reply, fs.removexattr(ino.0, &name));
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.on_node(Op::Access, ino, reply, move |fs, reply| {
            reply_empty(reply, fs.access(ino.0, mask.bits()));
        });
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
        let (ttl, caller, owned) = (self.ttl(), caller(req), name.to_os_string());
        let open_flags = self.open_flags();
        self.on_child(Op::Create, parent, name, reply, move |fs, reply| {
            match fs.create(parent.0, &owned, mode, flags, caller) {
                Ok((attr, generation, fh)) => reply.created(
                    &ttl,
                    &attr,
                    Generation(generation),
                    FileHandle(fh),
                    open_flags,
                ),
                Err(errno) => reply.fail(errno),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.on_node(Op::Fallocate, ino, reply, move |fs, reply| {
            reply_empty(reply, fs.fallocate(fh.0, offset, length, mode));
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.on_node(Op::Lseek, ino, reply, move |fs, reply| {
            match fs.lseek(fh.0, offset, whence) {
                Ok(position) => reply.offset(position),
                Err(errno) => reply.fail(errno),
            }
        });
    }
}
