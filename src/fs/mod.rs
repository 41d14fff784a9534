//! The unified view of the two trees, as a plain Rust API that the FUSE adapter calls.
//!
//! Changes go to the local tree first, whose result is the caller's result, and are then
//! queued for the remote tree. Reads come from the local tree, falling back to the remote one
//! for paths the local tree lacks.

pub mod attr;
pub mod cache;
mod creds;
mod dir;
pub mod fuse;
pub mod handles;
pub mod inode;
mod io;
mod namespace;
mod orphans;
pub mod passthrough;
mod remote_dirs;
pub mod xattr;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::FileAttr;
use nix::errno::Errno;
use parking_lot::Mutex;

use crate::backend::{file_type, times_of, Backend, Side, Stat};
use crate::replication::{Op, OpKind, RangeSet, Replicator};
use crate::STATE_DIR;
use cache::{AttrCache, Cached};
use handles::HandleTable;
use inode::{InodeTable, ROOT};

pub type FsResult<T> = Result<T, Errno>;

/// Maximum length of a directory entry name on Linux filesystems (NAME_MAX).
const NAME_MAX: usize = 255;

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache a name lookup.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// How long dualfs's own metadata cache keeps an entry.
    pub cache_ttl: Duration,
    /// Maximum number of paths in dualfs's own metadata cache.
    pub cache_size: usize,
    /// Whether opening a remote-only file copies it into the local tree first.
    pub hydrate: bool,
}

/// A name resolved to a node, as returned by lookup and the creating calls.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub id: u64,
    pub attr: FileAttr,
}

/// The identity of the process that made a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// When a directory was listed for the kernel, and its modification time (seconds,
/// nanoseconds) then.
type Listed = (std::time::Instant, (i64, i64));

/// How many directories remember when they were last listed.
const LISTED_DIRECTORIES: usize = 65_536;

pub struct DualFs {
    local: Arc<Backend>,
    remote: Arc<Backend>,
    inodes: Arc<Mutex<InodeTable>>,
    handles: HandleTable,
    cache: Arc<AttrCache>,
    /// Remote directory listings that rule out names without a remote lookup.
    remote_listings: Arc<remote_dirs::RemoteListings>,
    /// When each directory was last listed for the kernel, with its modification time then,
    /// so a later open within the entry TTL lets the kernel keep its cached listing.
    listed: Mutex<lru::LruCache<u64, Listed>>,
    replicator: Arc<Replicator>,
    config: FsConfig,
    /// Set when this daemon took over a live connection: the kernel may then name nodes that
    /// this daemon has not looked up yet, found by walking the trees once.
    rediscovery: Option<Mutex<bool>>,
    /// Handles that write through FUSE passthrough, which dualfs does not see: their file is
    /// recorded whole when they are opened, synced and released.
    passthrough_writers: Mutex<std::collections::HashSet<u64>>,
    /// Open files whose last name was removed, kept under a hidden link (see `orphans`).
    orphans: orphans::OrphanSet,
}

impl DualFs {
    pub fn new(
        local: Arc<Backend>,
        remote: Arc<Backend>,
        replicator: Arc<Replicator>,
        config: FsConfig,
        handles: HandleTable,
        inodes: Option<InodeTable>,
        resumed: bool,
    ) -> DualFs {
        let fs = DualFs {
            local,
            remote,
            inodes: Arc::new(Mutex::new(inodes.unwrap_or_default())),
            handles,
            cache: Arc::new(AttrCache::new(config.cache_size, config.cache_ttl)),
            remote_listings: Arc::new(remote_dirs::RemoteListings::new(config.cache_ttl)),
            listed: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LISTED_DIRECTORIES).expect("non-zero"),
            )),
            replicator,
            config,
            rediscovery: resumed.then(|| Mutex::new(false)),
            passthrough_writers: Mutex::new(std::collections::HashSet::new()),
            orphans: Mutex::new(std::collections::HashSet::new()),
        };
        fs.load_orphans(resumed);
        fs
    }

    /// Returns the shared node table, for handing it to the daemon that takes over.
    pub fn inode_table(&self) -> Arc<Mutex<InodeTable>> {
        self.inodes.clone()
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn cache_stats(&self) -> cache::CacheStats {
        self.cache.stats()
    }

    /// Returns a function that reads the cache figures later, after the filesystem has moved
    /// into the FUSE session.
    pub fn cache_stats_source(&self) -> impl Fn() -> cache::CacheStats + Send + Sync + 'static {
        let cache = self.cache.clone();
        move || cache.stats()
    }

    /// Returns the path of a node; a node whose every name was removed has none.
    fn node_path(&self, id: u64) -> FsResult<PathBuf> {
        if let Some(path) = self.inodes.lock().path(id) {
            return Ok(path);
        }
        // A file unlinked while open has no name to find by walking the trees.
        if self.orphans.lock().contains(&id) {
            return Err(Errno::ENOENT);
        }
        if self.rediscover() {
            if let Some(path) = self.inodes.lock().path(id) {
                return Ok(path);
            }
        }
        Err(Errno::ENOENT)
    }

    /// After a takeover, learns every name of both trees once, so the node ids the kernel
    /// kept from the previous daemon resolve again. Returns whether a walk ran (or another
    /// thread's walk finished) during this call.
    fn rediscover(&self) -> bool {
        let Some(done) = &self.rediscovery else {
            return false;
        };
        let mut done = done.lock();
        if *done {
            return false;
        }
        let started = std::time::Instant::now();
        let mut pending = vec![(ROOT, PathBuf::new())];
        let mut names = 0usize;
        while let Some((id, path)) = pending.pop() {
            let Ok(entries) = self.list(&path) else {
                continue;
            };
            for entry in entries {
                if entry.name == "." || entry.name == ".." {
                    continue;
                }
                self.inodes.lock().learn(id, &entry.name, entry.ino);
                names += 1;
                if entry.kind == fuser::FileType::Directory {
                    pending.push((entry.ino, path.join(&entry.name)));
                }
            }
        }
        *done = true;
        tracing::info!(names, elapsed = ?started.elapsed(), "learned the node ids of the previous daemon");
        true
    }

    /// Returns the path of `name` in directory `parent`, rejecting names no backing accepts.
    fn child_path(&self, parent: u64, name: &OsStr) -> FsResult<PathBuf> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." || name.is_empty() {
            return Err(Errno::EINVAL);
        }
        Ok(self.node_path(parent)?.join(name))
    }

    /// Like `child_path`, for a name about to be created: the reserved state folder's name at
    /// the root is refused.
    fn new_child_path(&self, parent: u64, name: &OsStr) -> FsResult<PathBuf> {
        let path = self.child_path(parent, name)?;
        if is_reserved(&path) {
            return Err(Errno::EPERM);
        }
        Ok(path)
    }

    /// Resolves `path` to the tree that contains it and its attributes, local first.
    fn resolve(&self, path: &Path) -> FsResult<(Side, Stat)> {
        if is_reserved(path) {
            return Err(Errno::ENOENT);
        }
        if let Some(cached) = self.cache.get(path) {
            return match cached {
                Cached::Found(side, st) => Ok((side, st)),
                Cached::Absent => Err(Errno::ENOENT),
            };
        }

        let resolved = self.resolve_uncached(path);
        match &resolved {
            Ok((side, st)) => self.cache.put(path, Cached::Found(*side, *st)),
            Err(Errno::ENOENT) => self.cache.put(path, Cached::Absent),
            Err(_) => {}
        }
        resolved
    }

    fn resolve_uncached(&self, path: &Path) -> FsResult<(Side, Stat)> {
        match self.local.lstat(path) {
            Ok(st) => Ok((Side::Local, st)),
            Err(Errno::ENOENT) => self
                .remote_stat(path)
                .map(|st| (Side::Remote, st))
                .ok_or(Errno::ENOENT),
            Err(errno) => Err(errno),
        }
    }

    /// Returns the remote entry at `path` unless a queued change removes it. Remote errors
    /// never reach the application, so any failure, a timeout or a down remote reads as
    /// "not there".
    fn remote_stat(&self, path: &Path) -> Option<Stat> {
        if self.replicator.hides_remote(path) || !self.remote_may_hold(path) {
            return None;
        }
        let path = path.to_path_buf();
        self.remote_call(move |remote| remote.lstat(&path))?.ok()
    }

    /// Returns false when a listing of the remote parent directory shows that the remote lacks
    /// `path`. Lists the parent first when no fresh listing is cached.
    fn remote_may_hold(&self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return true;
        };
        if !self.remote_listings.is_enabled() {
            return true;
        }
        if let Some(answer) = self.remote_listings.may_hold(dir, name) {
            return answer;
        }

        // The call stores the listing itself, so one that misses the deadline still serves
        // the next lookups in this directory once it completes.
        let listed_dir = dir.to_path_buf();
        let listings = self.remote_listings.clone();
        let list = move |remote: &crate::backend::Backend| {
            let listing = match remote.open_dir(&listed_dir) {
                Ok(fd) => match crate::backend::read_dir_upto(fd, remote_dirs::MAX_NAMES)? {
                    Some(entries) => remote_dirs::Listing::Names(Arc::new(
                        entries.into_iter().map(|entry| entry.name).collect(),
                    )),
                    None => remote_dirs::Listing::TooLarge,
                },
                Err(Errno::ENOENT | Errno::ENOTDIR) => remote_dirs::Listing::Names(Arc::default()),
                Err(errno) => return Err(errno),
            };
            listings.put(&listed_dir, listing);
            Ok(())
        };
        match self.remote_call(list) {
            Some(Ok(())) => {}
            // A remote that cannot list (permissions) may still serve a lookup.
            Some(Err(_)) => return true,
            // The remote is down, busy or slow, so a lookup would time out too.
            None => return false,
        }
        self.remote_listings.may_hold(dir, name).unwrap_or(true)
    }

    /// Runs a remote call on the bounded pool with the remote deadline; `None` when the
    /// remote is down, busy or too slow.
    fn remote_call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Backend) -> crate::backend::Result<T> + Send + 'static,
    ) -> Option<crate::backend::Result<T>> {
        self.replicator.remote_caller().call(call)
    }

    /// Runs a call on the tree that holds an entry: directly on the local tree, through the
    /// deadline-bound pool on the remote one (EIO when the remote cannot answer in time).
    fn on_side<T: Send + 'static>(
        &self,
        side: Side,
        call: impl FnOnce(&Backend) -> crate::backend::Result<T> + Send + 'static,
    ) -> FsResult<T> {
        match side {
            Side::Local => call(&self.local),
            Side::Remote => self.remote_call(call).unwrap_or(Err(Errno::EIO)),
        }
    }

    /// Registers a lookup of `name` in `parent` and returns the entry the kernel is given.
    fn register(&self, parent: u64, name: &OsStr, side: Side, st: &Stat) -> Entry {
        let id = attr::visible_ino(side, st.st_ino);
        self.inodes.lock().lookup(parent, name, id);
        Entry {
            id,
            attr: self.file_attr(id, st),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let path = self.child_path(parent, name)?;
        let (side, st) = self.resolve(&path)?;
        Ok(self.register(parent, name, side, &st))
    }

    /// Checks whether `name` exists in `parent`, without registering a kernel reference.
    pub fn lookup_exists(&self, parent: u64, name: &OsStr) -> bool {
        self.child_path(parent, name)
            .and_then(|path| self.resolve(&path))
            .is_ok()
    }

    pub fn forget(&self, id: u64, count: u64) {
        self.inodes.lock().forget(id, count);
    }

    pub fn getattr(&self, id: u64, fh: Option<u64>) -> FsResult<FileAttr> {
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        let path = self.node_path(id);
        // The kernel asks fstat of an unlinked file without a handle; any open one answers.
        let handle = handle.or_else(|| {
            path.is_err()
                .then(|| self.handles.any_file_of(id))
                .flatten()
        });
        if let Some(handle) = handle {
            let st = crate::backend::fstat(std::os::fd::AsFd::as_fd(&handle.file))?;
            return Ok(self.file_attr(id, &st));
        }
        let (_, st) = self.resolve(&path?)?;
        Ok(self.file_attr(id, &st))
    }

    /// Makes sure the local tree holds `path`, copying it from the remote tree when only the
    /// remote has it, so that a change can be applied locally and then mirrored. Only the
    /// parent's attributes are queued: the remote already has what is copied.
    ///
    /// NOTE: the copy itself reads the remote directly, outside the deadline-bound pool, so a
    /// remote that hangs in the middle of a copy stalls this request.
    fn ensure_local(&self, path: &Path) -> FsResult<()> {
        if let Some(Cached::Found(Side::Local, _)) = self.cache.get(path) {
            return Ok(());
        }
        match self.local.lstat(path) {
            Ok(_) => return Ok(()),
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno),
        }
        let st = self.remote_stat(path).ok_or(Errno::ENOENT)?;
        let parent = path.parent().unwrap_or(Path::new(""));
        self.ensure_local(parent)?;
        let parent_times = self.local.lstat(parent).ok();

        match file_type(&st) {
            libc::S_IFDIR => self.local.mkdir(path, st.st_mode & 0o7777)?,
            libc::S_IFREG => self.copy_remote_file(path, &st)?,
            libc::S_IFLNK => {
                let target = self.remote.readlink(path)?;
                self.local.symlink(&target, path)?;
            }
            _ => self.local.mknod(path, st.st_mode, st.st_rdev)?,
        }
        self.local.chown(path, st.st_uid, st.st_gid)?;
        if file_type(&st) != libc::S_IFLNK {
            self.local.chmod(path, st.st_mode & 0o7777)?;
        }
        self.local.utimens(path, &times_of(&st))?;
        if let Some(parent_st) = parent_times {
            let _ = self.local.utimens(parent, &times_of(&parent_st));
        }
        // The remote parent's times may differ (its entry was added behind our back); the
        // local tree decides, so they are copied over.
        self.replicator
            .submit(Op::new(parent, crate::replication::OpKind::Attr))?;

        tracing::debug!(path = %path.display(), "copied remote-only entry into the local tree");
        self.cache.invalidate(path);
        Ok(())
    }

    fn copy_remote_file(&self, path: &Path, st: &Stat) -> FsResult<()> {
        use std::os::unix::fs::FileExt;

        let source = self.remote.open_file(path, libc::O_RDONLY, 0)?;
        let target = self.local.open_file(
            path,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            st.st_mode & 0o7777,
        )?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = source.read_at(&mut buf, offset).map_err(io_errno)?;
            if n == 0 {
                break;
            }
            target.write_all_at(&buf[..n], offset).map_err(io_errno)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Records the I/O mode chosen for an open file, for a daemon that takes over.
    pub fn set_handle_mode(&self, fh: u64, mode: handles::SlotMode, backing: Option<u32>) {
        self.handles.set_mode(fh, mode, backing);
    }

    /// Returns a descriptor of an open local file for registering it as the inode's
    /// passthrough backing file: read-write where possible, because a later writer of the
    /// inode must write through the same backing file. Remote-side handles have none.
    pub fn backing_file(&self, fh: u64) -> Option<std::fs::File> {
        let handle = self.handle(fh).ok()?;
        if handle.side != Side::Local {
            return None;
        }
        let read_write = self
            .inodes
            .lock()
            .path(handle.id)
            .and_then(|path| self.local.open_file(&path, libc::O_RDWR, 0).ok());
        read_write.or_else(|| handle.file.try_clone().ok())
    }

    /// Records the whole file of a handle that is about to write through passthrough, before
    /// any write (so the journal covers them), and remembers to record it again later.
    pub fn begin_passthrough_write(&self, fh: u64) -> FsResult<()> {
        self.passthrough_writers.lock().insert(fh);
        self.record_passthrough_writes(fh)
    }

    /// Takes over the passthrough writers an earlier daemon left open.
    pub fn recover_passthrough_writers(&self, slots: &[(u64, handles::Slot)]) {
        let mut writers = self.passthrough_writers.lock();
        for (fh, slot) in slots {
            let writes = slot.flags & libc::O_ACCMODE != libc::O_RDONLY;
            if writes && slot.mode == handles::SlotMode::Passthrough {
                writers.insert(*fh);
            }
        }
    }

    /// Queues a whole-file copy for a passthrough writer's file; other handles need none.
    fn record_passthrough_writes(&self, fh: u64) -> FsResult<()> {
        if !self.passthrough_writers.lock().contains(&fh) {
            return Ok(());
        }
        let handle = self.handle(fh)?;
        let Some(path) = self.open_file_path(&handle) else {
            return Ok(());
        };
        self.cache.invalidate(&path);
        let op = Op::new(path, OpKind::Data(RangeSet::everything()));
        self.replicator.record(op, || Ok(()))
    }

    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        self.local.statfs()
    }

    pub fn access(&self, id: u64) -> FsResult<()> {
        let path = self.node_path(id)?;
        self.resolve(&path).map(drop)
    }

    pub fn readlink(&self, id: u64) -> FsResult<Vec<u8>> {
        let path = self.node_path(id)?;
        let (side, _) = self.resolve(&path)?;
        let target = self.on_side(side, move |backend| backend.readlink(&path))?;
        Ok(target.into_encoded_bytes())
    }
}

/// Returns the node id of the entry at `path` found in `side` with inode number `ino`.
fn node_id(path: &Path, side: Side, ino: u64) -> u64 {
    if path.as_os_str().is_empty() {
        ROOT
    } else {
        attr::visible_ino(side, ino)
    }
}

/// Whether `path` is the reserved state folder, which no request may reach.
pub fn is_reserved(path: &Path) -> bool {
    path.as_os_str().as_bytes() == STATE_DIR.as_bytes()
}

pub(crate) fn io_errno(err: std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}
