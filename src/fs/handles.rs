//! Open file and directory handles, by the number given to the kernel.
//!
//! Each open file also has a 32-byte slot in a record file (a memfd that the supervisor keeps
//! open across daemon restarts): the node, the open flags, the tree and the I/O mode. A daemon
//! that takes over a live connection reads the slots back, so the handles the kernel still
//! uses keep working: the file is reopened by its path on first use, and the passthrough
//! state of every inode is known again. The number of a file handle is its slot index plus 1.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fuser::FileType;
use parking_lot::{Mutex, RwLock};

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

/// Directory handles are numbered apart from file handles, which are slot numbers.
const DIR_HANDLE: u64 = 1 << 62;

const SLOT_SIZE: u64 = 32;
const SLOT_MAGIC: u32 = 0x4446_4831;
const NO_BACKING: u32 = u32::MAX;

/// The I/O mode of an open file as recorded in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotMode {
    Unset = 0,
    Cached = 1,
    Passthrough = 2,
}

/// The record of one open file, as the kernel may still hold it after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: u64,
    pub flags: i32,
    pub side: Side,
    pub mode: SlotMode,
    /// The passthrough backing file registered with the kernel for this open, if any.
    pub backing: Option<u32>,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT_SIZE as usize] {
        let mut bytes = [0u8; SLOT_SIZE as usize];
        bytes[0..4].copy_from_slice(&SLOT_MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.flags.to_le_bytes());
        bytes[8] = u8::from(self.side == Side::Remote);
        bytes[9] = self.mode as u8;
        bytes[12..16].copy_from_slice(&self.backing.unwrap_or(NO_BACKING).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.id.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Slot> {
        let word = |range: std::ops::Range<usize>| bytes[range].try_into().ok();
        if u32::from_le_bytes(word(0..4)?) != SLOT_MAGIC {
            return None;
        }
        let backing = u32::from_le_bytes(word(12..16)?);
        Some(Slot {
            flags: i32::from_le_bytes(word(4..8)?),
            side: if bytes[8] == 1 {
                Side::Remote
            } else {
                Side::Local
            },
            mode: match bytes[9] {
                1 => SlotMode::Cached,
                2 => SlotMode::Passthrough,
                _ => SlotMode::Unset,
            },
            backing: (backing != NO_BACKING).then_some(backing),
            id: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
        })
    }
}

#[derive(Default)]
struct SlotAllocator {
    free: Vec<u64>,
    next: u64,
    /// The slots of live opens, mirrored in `record` when there is one.
    live: HashMap<u64, Slot>,
    record: Option<File>,
}

impl SlotAllocator {
    fn write(&mut self, index: u64, bytes: &[u8]) {
        if let Some(record) = &self.record {
            if let Err(err) = record.write_all_at(bytes, index * SLOT_SIZE) {
                tracing::warn!(%err, "cannot write the open-file record; a restart may lose this handle");
            }
        }
    }
}

#[derive(Default)]
pub struct HandleTable {
    next_dir: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirListing>>>,
    slots: Mutex<SlotAllocator>,
}

impl HandleTable {
    /// Creates a table that records its open files in `record`, and returns with it the
    /// handles an earlier daemon left open there (the kernel still uses them).
    pub fn with_record(record: File) -> std::io::Result<(HandleTable, Vec<(u64, Slot)>)> {
        // Read by position: the file offset is shared with every daemon of the connection.
        let mut bytes = vec![0u8; record.metadata()?.len() as usize];
        record.read_exact_at(&mut bytes, 0)?;
        let mut live = HashMap::new();
        let mut free = Vec::new();
        let count = bytes.len() as u64 / SLOT_SIZE;
        for index in 0..count {
            let start = (index * SLOT_SIZE) as usize;
            match Slot::decode(&bytes[start..start + SLOT_SIZE as usize]) {
                Some(slot) => {
                    live.insert(index, slot);
                }
                None => free.push(index),
            }
        }
        free.reverse();
        let recovered = live
            .iter()
            .map(|(index, slot)| (index + 1, *slot))
            .collect();
        let table = HandleTable {
            slots: Mutex::new(SlotAllocator {
                free,
                next: count,
                live,
                record: Some(record),
            }),
            ..HandleTable::default()
        };
        Ok((table, recovered))
    }

    pub fn insert_file(&self, handle: FileHandle, flags: i32) -> u64 {
        let slot = Slot {
            id: handle.id,
            flags,
            side: handle.side,
            mode: SlotMode::Unset,
            backing: None,
        };
        let mut slots = self.slots.lock();
        let index = slots.free.pop().unwrap_or_else(|| {
            slots.next += 1;
            slots.next - 1
        });
        slots.write(index, &slot.encode());
        slots.live.insert(index, slot);
        drop(slots);
        self.files.write().insert(index + 1, Arc::new(handle));
        index + 1
    }

    /// Puts back the descriptor of a handle left open by an earlier daemon.
    pub fn restore_file(&self, fh: u64, handle: FileHandle) -> Arc<FileHandle> {
        let handle = Arc::new(handle);
        self.files
            .write()
            .entry(fh)
            .or_insert_with(|| handle.clone())
            .clone()
    }

    /// Records the I/O mode chosen for an open file.
    pub fn set_mode(&self, fh: u64, mode: SlotMode, backing: Option<u32>) {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.live.get_mut(&(fh - 1)) else {
            return;
        };
        slot.mode = mode;
        slot.backing = backing;
        let bytes = slot.encode();
        slots.write(fh - 1, &bytes);
    }

    /// The record of an open file, also for one left open by an earlier daemon.
    pub fn slot(&self, fh: u64) -> Option<Slot> {
        self.slots.lock().live.get(&fh.checked_sub(1)?).copied()
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.read().get(&fh).cloned()
    }

    /// Checks whether node `id` has an open file handle, also one left by an earlier daemon.
    pub fn is_open(&self, id: u64) -> bool {
        self.slots.lock().live.values().any(|slot| slot.id == id)
    }

    /// Returns any open handle of node `id`, for attributes of a file whose last name was
    /// removed while it was open.
    pub fn any_file_of(&self, id: u64) -> Option<Arc<FileHandle>> {
        self.files.read().values().find(|h| h.id == id).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        if let Some(index) = fh.checked_sub(1) {
            let mut slots = self.slots.lock();
            if slots.live.remove(&index).is_some() {
                slots.write(index, &[0u8; SLOT_SIZE as usize]);
                slots.free.push(index);
            }
        }
        self.files.write().remove(&fh)
    }

    pub fn insert_dir(&self, listing: DirListing) -> u64 {
        let fh = DIR_HANDLE | (self.next_dir.fetch_add(1, Ordering::Relaxed) + 1);
        self.dirs.write().insert(fh, Arc::new(listing));
        fh
    }

    /// Allocates a directory handle whose listing is taken only when it is first read.
    pub fn reserve_dir(&self) -> u64 {
        DIR_HANDLE | (self.next_dir.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Returns whether `fh` is a directory handle this table handed out.
    pub fn is_reserved_dir(&self, fh: u64) -> bool {
        fh & DIR_HANDLE != 0 && fh & !DIR_HANDLE <= self.next_dir.load(Ordering::Relaxed)
    }

    /// Puts back the listing of a directory handle left open by an earlier daemon.
    pub fn restore_dir(&self, fh: u64, listing: DirListing) -> Arc<DirListing> {
        let listing = Arc::new(listing);
        self.dirs
            .write()
            .entry(fh)
            .or_insert_with(|| listing.clone())
            .clone()
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirListing>> {
        self.dirs.read().get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.write().remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64) -> FileHandle {
        FileHandle {
            file: tempfile::tempfile().unwrap(),
            id,
            side: Side::Local,
        }
    }

    #[test]
    fn open_files_survive_in_the_record() {
        let record = tempfile::tempfile().unwrap();
        let (table, recovered) = HandleTable::with_record(record.try_clone().unwrap()).unwrap();
        assert!(recovered.is_empty());
        let first = table.insert_file(handle(7), libc::O_RDWR);
        let second = table.insert_file(handle(8), libc::O_RDONLY);
        table.set_mode(second, SlotMode::Passthrough, Some(3));
        let third = table.insert_file(handle(9), libc::O_WRONLY);
        table.remove_file(first);

        let (table, mut recovered) = HandleTable::with_record(record).unwrap();
        recovered.sort_by_key(|(fh, _)| *fh);
        assert_eq!(recovered.len(), 2);
        assert_eq!(recovered[0].0, second);
        assert_eq!(recovered[0].1.mode, SlotMode::Passthrough);
        assert_eq!(recovered[0].1.backing, Some(3));
        assert_eq!(recovered[1], (third, table.slot(third).unwrap()));
        assert_eq!(recovered[1].1.flags, libc::O_WRONLY);
        // The freed slot is reused; the recovered ones are not handed out again.
        assert_eq!(table.insert_file(handle(10), 0), first);
        assert_eq!(table.insert_file(handle(11), 0), third + 1);
    }
}
