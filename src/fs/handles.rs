//! Open file and directory handles, by the number given to the kernel.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fuser::FileType;
use parking_lot::RwLock;

use crate::backend::Side;

/// An open file: a descriptor in the tree that served the open.
pub struct FileHandle {
    pub file: File,
    /// The node the file was opened through, whose current path names it for replication.
    pub id: u64,
    pub side: Side,
}

/// One entry of a merged directory listing.
#[derive(Clone, Debug)]
pub struct ListedEntry {
    pub name: std::ffi::OsString,
    /// The inode number `stat` shows for this entry.
    pub ino: u64,
    pub kind: FileType,
}

/// A directory listing taken at opendir, so offsets stay valid while the stream is read.
pub struct DirListing {
    pub id: u64,
    pub entries: Vec<ListedEntry>,
}

#[derive(Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirListing>>>,
}

impl HandleTable {
    fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert_file(&self, handle: FileHandle) -> u64 {
        let fh = self.allocate();
        self.files.write().insert(fh, Arc::new(handle));
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.read().get(&fh).cloned()
    }

    /// Returns any open handle of node `id`, for attributes of a file whose last name was
    /// removed while it was open.
    pub fn any_file_of(&self, id: u64) -> Option<Arc<FileHandle>> {
        self.files.read().values().find(|h| h.id == id).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.write().remove(&fh)
    }

    pub fn insert_dir(&self, listing: DirListing) -> u64 {
        let fh = self.allocate();
        self.dirs.write().insert(fh, Arc::new(listing));
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirListing>> {
        self.dirs.read().get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.write().remove(&fh);
    }
}
