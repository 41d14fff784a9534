//! The I/O mode of each open file: FUSE passthrough for reads, the page cache otherwise.
//!
//! With passthrough (Linux 6.9 and later) the kernel reads a file straight from the local
//! backing file, at native speed. Writes keep going through dualfs, which must see them to
//! mirror them. The kernel refuses to mix passthrough and page-cached opens of one inode
//! (ETXTBSY), so the mode of each open is decided here under one lock:
//!
//! - a read-only open gets passthrough unless the inode has page-cached opens;
//! - a writing open is page-cached unless the inode has passthrough opens: the kernel then
//!   accepts only passthrough opens (any other answer fails the open with EIO), so the writer
//!   is passthrough too, and dualfs records a whole-file change when it is opened, synced and
//!   released instead of seeing each write;
//! - all passthrough opens of an inode share one backing file, opened read-write, released
//!   with the last one.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

use super::handles::{Slot, SlotMode};

/// The I/O mode of one open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    Passthrough,
    Cached,
}

impl IoMode {
    pub fn slot_mode(self) -> SlotMode {
        match self {
            IoMode::Passthrough => SlotMode::Passthrough,
            IoMode::Cached => SlotMode::Cached,
        }
    }
}

/// A backing file registered with the kernel, and its id there.
#[derive(Clone)]
pub struct Backing {
    pub id: Arc<BackingId>,
    pub raw: u32,
}

#[derive(Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Backing>,
    /// A backing file registered by an earlier daemon of this connection, still held by the
    /// kernel for the passthrough opens it left.
    inherited_backing: Option<u32>,
}

pub struct IoModes {
    enabled: AtomicBool,
    inodes: Mutex<HashMap<u64, InodeIo>>,
    /// The inode and mode of each open handle, for release.
    handles: Mutex<HashMap<u64, (u64, IoMode)>>,
    /// The FUSE device, for closing inherited backing files.
    device: AtomicI32,
}

/// The decision for one open.
pub enum Decision {
    /// Reply with passthrough on this backing file.
    Passthrough(Backing),
    Cached,
}

impl Decision {
    pub fn mode(&self) -> IoMode {
        match self {
            Decision::Passthrough(_) => IoMode::Passthrough,
            Decision::Cached => IoMode::Cached,
        }
    }
}

nix::ioctl_write_ptr!(fuse_backing_close, 229, 2, u32);

impl IoModes {
    pub fn new(enabled: bool) -> IoModes {
        IoModes {
            enabled: AtomicBool::new(enabled),
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            device: AtomicI32::new(-1),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Stops using passthrough, after the kernel or our privileges refused it.
    pub fn disable(&self, reason: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::warn!(reason, "FUSE passthrough disabled; reads go through dualfs");
        }
    }

    /// Takes over the modes of the files an earlier daemon left open on this connection, so
    /// that new opens do not mix passthrough and page-cached I/O on one inode.
    pub fn recover(&self, device: RawFd, slots: &[(u64, Slot)]) {
        self.device.store(device, Ordering::Relaxed);
        let mut inodes = self.inodes.lock();
        let mut handles = self.handles.lock();
        for (fh, slot) in slots {
            let io = inodes.entry(slot.id).or_default();
            let mode = match slot.mode {
                SlotMode::Passthrough => {
                    io.passthrough += 1;
                    if io.inherited_backing.is_none() {
                        io.inherited_backing = slot.backing;
                    }
                    IoMode::Passthrough
                }
                // A create records no mode: its file is page-cached.
                SlotMode::Cached | SlotMode::Unset => {
                    io.cached += 1;
                    IoMode::Cached
                }
            };
            handles.insert(*fh, (slot.id, mode));
        }
    }

    /// Decides and registers the mode of a new open of inode `id`. For a passthrough read,
    /// `backing` is given the id of the inode's inherited backing file to wrap, or `None` to
    /// register the file as a new one; if that fails, passthrough is disabled and the open is
    /// page-cached.
    pub fn open(
        &self,
        fh: u64,
        id: u64,
        read_only: bool,
        backing: impl FnOnce(Option<u32>) -> std::io::Result<Backing>,
    ) -> Decision {
        let mut inodes = self.inodes.lock();
        let io = inodes.entry(id).or_default();

        // A writer is page-cached unless passthrough opens force it to passthrough too.
        let cached_writer = !read_only && io.passthrough == 0;
        let cached_reader = read_only && (!self.is_enabled() || io.cached > 0);
        let decision = if cached_writer || cached_reader {
            Decision::Cached
        } else if let Some(existing) = &io.backing {
            Decision::Passthrough(existing.clone())
        } else {
            match backing(io.inherited_backing) {
                Ok(registered) => {
                    io.inherited_backing = None;
                    io.backing = Some(registered.clone());
                    Decision::Passthrough(registered)
                }
                Err(err) => {
                    self.disable(&err.to_string());
                    Decision::Cached
                }
            }
        };

        let mode = decision.mode();
        match mode {
            IoMode::Passthrough => io.passthrough += 1,
            IoMode::Cached => io.cached += 1,
        }
        drop(inodes);
        self.handles.lock().insert(fh, (id, mode));
        decision
    }

    /// Unregisters a released handle; the inode's backing file is closed with its last
    /// passthrough open.
    pub fn release(&self, fh: u64) {
        let Some((id, mode)) = self.handles.lock().remove(&fh) else {
            return;
        };
        let mut inodes = self.inodes.lock();
        let Some(io) = inodes.get_mut(&id) else {
            return;
        };
        match mode {
            IoMode::Passthrough => {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    io.backing = None;
                    if let Some(raw) = io.inherited_backing.take() {
                        self.close_inherited(raw);
                    }
                }
            }
            IoMode::Cached => io.cached = io.cached.saturating_sub(1),
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&id);
        }
    }

    fn close_inherited(&self, raw: u32) {
        let device = self.device.load(Ordering::Relaxed);
        if device < 0 {
            return;
        }
        // SAFETY: the ioctl reads one u32 from the pointer, which outlives the call.
        if let Err(err) = unsafe { fuse_backing_close(device, &raw) } {
            tracing::warn!(%err, backing = raw, "cannot close an inherited passthrough backing file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_backing(_: Option<u32>) -> std::io::Result<Backing> {
        Err(std::io::Error::other("not in a FUSE session"))
    }

    #[test]
    fn writer_with_cached_readers_stays_cached() {
        let modes = IoModes::new(false);
        assert!(matches!(
            modes.open(1, 7, true, no_backing),
            Decision::Cached
        ));
        assert!(matches!(
            modes.open(2, 7, false, no_backing),
            Decision::Cached
        ));
        modes.release(1);
        modes.release(2);
        assert!(modes.inodes.lock().is_empty());
    }

    #[test]
    fn failed_backing_disables_passthrough() {
        let modes = IoModes::new(true);
        assert!(matches!(
            modes.open(1, 7, true, no_backing),
            Decision::Cached
        ));
        assert!(!modes.is_enabled());
    }

    #[test]
    fn reader_after_cached_writer_is_cached() {
        let modes = IoModes::new(true);
        assert!(matches!(
            modes.open(1, 7, false, no_backing),
            Decision::Cached
        ));
        // The backing callback must not even be tried while a cached open exists.
        let decision = modes.open(2, 7, true, |_| panic!("no passthrough while cached"));
        assert!(matches!(decision, Decision::Cached));
        assert!(modes.is_enabled());
    }
}
