//! Files that are open but have no name left.
//!
//! When the last name of an open file is removed (unlink, or a rename over it), the local file
//! first gets a hidden hard link, `.dualfs/orphans/<node id>`, that lives until the last handle
//! is released. A daemon that takes the connection over after a crash or an upgrade can then
//! open the file again by that name, because the kernel still has handles to it. The link is not
//! visible to applications: the attributes report one link fewer, and the state folder is
//! neither listed nor replicated.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::{attr, DualFs, FsResult};
use crate::backend::{file_type, Side, Stat};
use crate::STATE_DIR;

const ORPHANS_DIR: &str = "orphans";

/// Returns the local path of the hidden link of node `id`.
pub fn orphan_path(id: u64) -> PathBuf {
    Path::new(STATE_DIR).join(ORPHANS_DIR).join(id.to_string())
}

impl DualFs {
    /// Gives the file at `path` its hidden link before its last name goes, if it is open.
    pub(super) fn keep_if_open(&self, path: &Path) -> FsResult<()> {
        let Ok(st) = self.local.lstat(path) else {
            return Ok(());
        };
        if file_type(&st) != libc::S_IFREG {
            return Ok(());
        }
        let id = attr::visible_ino(Side::Local, st.st_ino);
        if !self.handles.is_open(id) || self.orphans.lock().contains(&id) {
            return Ok(());
        }

        match self
            .local
            .mkdir(&Path::new(STATE_DIR).join(ORPHANS_DIR), 0o700)
        {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno),
        }
        let hidden = orphan_path(id);
        match self.local.link(path, &hidden) {
            Ok(()) => {}
            // A link left by a daemon that died before the file's last release.
            Err(Errno::EEXIST) => {
                self.local.unlink(&hidden)?;
                self.local.link(path, &hidden)?;
            }
            Err(errno) => return Err(errno),
        }
        self.orphans.lock().insert(id);
        Ok(())
    }

    /// Removes the hidden link of node `id` once no handle of it is left.
    pub(super) fn release_orphan(&self, id: u64) {
        if self.handles.is_open(id) || !self.orphans.lock().remove(&id) {
            return;
        }
        if let Err(errno) = self.local.unlink(&orphan_path(id)) {
            tracing::warn!(%errno, id, "cannot remove the hidden link of a closed unlinked file");
        }
    }

    /// Reports the links of a file as applications expect, without its hidden link.
    pub(super) fn file_attr(&self, id: u64, st: &Stat) -> fuser::FileAttr {
        let mut attr = attr::to_file_attr(id, st);
        if attr.nlink > 0 && self.orphans.lock().contains(&id) {
            attr.nlink -= 1;
        }
        attr
    }

    /// Loads the hidden links an earlier daemon of this connection left; on a fresh mount,
    /// where no handle can be open, removes them.
    pub(super) fn load_orphans(&self, resumed: bool) {
        let dir = Path::new(STATE_DIR).join(ORPHANS_DIR);
        let Ok(entries) = self.local.open_dir(&dir).and_then(crate::backend::read_dir) else {
            return;
        };
        let mut orphans = self.orphans.lock();
        for entry in entries {
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            let Some(id) = entry
                .name
                .to_str()
                .and_then(|name| name.parse::<u64>().ok())
            else {
                continue;
            };
            if resumed {
                orphans.insert(id);
            } else if let Err(errno) = self.local.unlink(&dir.join(&entry.name)) {
                tracing::warn!(%errno, id, "cannot remove a stale hidden link");
            }
        }
    }
}

/// The set of node ids that have a hidden link.
pub type OrphanSet = parking_lot::Mutex<HashSet<u64>>;
