//! Directory listings: the union of both trees, local winning on a name clash, without
//! entries whose removal is still queued for the remote and without the state folder.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;

use fuser::FileType;
use nix::errno::Errno;

use super::attr::{file_type_of_dirent, file_type_of_mode, visible_ino};
use super::handles::{DirListing, ListedEntry};
use super::node_id;
use super::{is_reserved, DualFs, FsResult};
use crate::backend::{read_dir, DirEntry, Side};

impl DualFs {
    /// Opens a directory. Returns the handle and whether the kernel may keep the listing it
    /// cached from an earlier open: true while that listing is younger than the entry TTL and
    /// the directory's modification time is unchanged. The listing is then only taken if the
    /// kernel reads the directory after all.
    pub fn opendir(&self, id: u64) -> FsResult<(u64, bool)> {
        let path = self.node_path(id)?;
        let (_, st) = self.resolve(&path)?;
        let mtime = (st.st_mtime, st.st_mtime_nsec);
        let ttl = self.config.entry_ttl;
        let fresh = !ttl.is_zero()
            && self
                .listed
                .lock()
                .get(&id)
                .is_some_and(|(at, listed_mtime)| at.elapsed() < ttl && *listed_mtime == mtime);
        if fresh {
            return Ok((self.handles.reserve_dir(), true));
        }

        let entries = self.list(&path)?;
        self.listed
            .lock()
            .put(id, (std::time::Instant::now(), mtime));
        Ok((self.handles.insert_dir(DirListing { id, entries }), false))
    }

    /// Flushes a directory's local entries and the journal records of the changes in it.
    /// A remote-only directory has nothing local to flush.
    pub fn fsyncdir(&self, id: u64) -> FsResult<()> {
        let path = self.node_path(id)?;
        if let Ok(fd) = self.local.open_dir(&path) {
            nix::unistd::fsync(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        }
        self.replicator.sync_journal();
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    /// Returns the listing taken at opendir, with `.` and `..` first.
    pub fn listing(&self, id: u64, fh: u64) -> FsResult<std::sync::Arc<DirListing>> {
        if let Some(listing) = self.handles.dir(fh) {
            return Ok(listing);
        }
        if self.rediscovery.is_none() && !self.handles.is_reserved_dir(fh) {
            return Err(Errno::EBADF);
        }
        // A directory opened before this daemon took over: list it again. Offsets stay
        // valid because listings come in the same order while the directory is unchanged.
        let path = self.node_path(id)?;
        let entries = self.list(&path)?;
        Ok(self.handles.restore_dir(fh, DirListing { id, entries }))
    }

    pub(super) fn list(&self, path: &Path) -> FsResult<Vec<ListedEntry>> {
        let (dir_side, dir_st) = self.resolve(path)?;
        if dir_st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }

        let mut entries = vec![ListedEntry {
            name: OsString::from("."),
            ino: node_id(path, dir_side, dir_st.st_ino),
            kind: FileType::Directory,
        }];
        let parent = path.parent().unwrap_or(Path::new(""));
        let parent_ino = match self.resolve(parent) {
            Ok((side, st)) => node_id(parent, side, st.st_ino),
            Err(_) => entries[0].ino,
        };
        entries.push(ListedEntry {
            name: OsString::from(".."),
            ino: parent_ino,
            kind: FileType::Directory,
        });

        // A local directory that cannot be read is an error, never an empty listing: showing
        // it empty would invite deletions of entries that only looked missing.
        let local = if dir_side == Side::Local {
            read_dir(self.local.open_dir(path)?)?
        } else {
            Vec::new()
        };
        let mut names: HashSet<OsString> = HashSet::with_capacity(local.len());
        for entry in local {
            if is_reserved(&path.join(&entry.name)) {
                continue;
            }
            names.insert(entry.name.clone());
            entries.push(self.listed(path, Side::Local, entry));
        }

        for entry in self.remote_entries(path) {
            if names.contains(&entry.name) {
                continue;
            }
            let child = path.join(&entry.name);
            if is_reserved(&child) || self.replicator.hides_remote(&child) {
                continue;
            }
            entries.push(self.listed(path, Side::Remote, entry));
        }
        Ok(entries)
    }

    /// Lists the remote directory; remote errors, timeouts and a down remote read as an
    /// empty remote side.
    pub(super) fn remote_entries(&self, path: &Path) -> Vec<DirEntry> {
        if self.replicator.hides_remote(path) {
            return Vec::new();
        }
        let owned = path.to_path_buf();
        let listed = self.remote_call(move |remote| remote.open_dir(&owned).and_then(read_dir));
        match listed.unwrap_or(Ok(Vec::new())) {
            Ok(entries) => entries,
            Err(Errno::ENOENT | Errno::ENOTDIR) => Vec::new(),
            Err(errno) => {
                tracing::warn!(path = %path.display(), %errno, "remote directory listing failed; showing local entries only");
                Vec::new()
            }
        }
    }

    fn listed(&self, dir: &Path, side: Side, entry: DirEntry) -> ListedEntry {
        let kind = file_type_of_dirent(entry.d_type).unwrap_or_else(|| {
            let child = dir.join(&entry.name);
            self.on_side(side, move |backend| backend.lstat(&child))
                .map_or(FileType::RegularFile, |st| file_type_of_mode(st.st_mode))
        });
        ListedEntry {
            ino: visible_ino(side, entry.ino),
            name: entry.name,
            kind,
        }
    }
}
