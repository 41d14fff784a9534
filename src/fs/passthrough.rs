//! The I/O mode of each open file: FUSE passthrough for reads, the page cache otherwise.
//!
//! With passthrough (Linux 6.9 and later) the kernel reads a file straight from the local
//! backing file, at native speed. Writes keep going through dualfs, which must see them to
//! mirror them. The kernel refuses to mix passthrough and page-cached opens of one inode
//! (ETXTBSY), so the mode of each open is decided here under one lock:
//!
//! - a read-only open gets passthrough unless the inode has page-cached opens;
//! - a writing open is page-cached unless the inode has passthrough opens, in which case it is
//!   direct I/O, which mixes with both;
//! - all passthrough opens of an inode share one backing file, released with the last one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

/// The I/O mode of one open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    Passthrough,
    Cached,
    DirectIo,
}

#[derive(Default)]
struct InodeIo {
    cached: u32,
    passthrough: u32,
    backing: Option<Arc<BackingId>>,
}

pub struct IoModes {
    enabled: AtomicBool,
    inodes: Mutex<HashMap<u64, InodeIo>>,
    /// The inode and mode of each open handle, for release.
    handles: Mutex<HashMap<u64, (u64, IoMode)>>,
}

/// The decision for one open.
pub enum Decision {
    /// Reply with passthrough on this backing file.
    Passthrough(Arc<BackingId>),
    Cached,
    DirectIo,
}

impl IoModes {
    pub fn new(enabled: bool) -> IoModes {
        IoModes {
            enabled: AtomicBool::new(enabled),
            inodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
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

    /// Decides and registers the mode of a new open of inode `id`. For a passthrough read of
    /// an inode without a backing file yet, `open_backing` registers one with the kernel; if
    /// it fails, passthrough is disabled and the open is page-cached.
    pub fn open(
        &self,
        fh: u64,
        id: u64,
        read_only: bool,
        open_backing: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Decision {
        let mut inodes = self.inodes.lock();
        let io = inodes.entry(id).or_default();

        let decision = if !read_only {
            if io.passthrough > 0 {
                Decision::DirectIo
            } else {
                Decision::Cached
            }
        } else if !self.is_enabled() || io.cached > 0 {
            Decision::Cached
        } else if let Some(backing) = &io.backing {
            Decision::Passthrough(backing.clone())
        } else {
            match open_backing() {
                Ok(backing) => {
                    let backing = Arc::new(backing);
                    io.backing = Some(backing.clone());
                    Decision::Passthrough(backing)
                }
                Err(err) => {
                    self.disable(&err.to_string());
                    Decision::Cached
                }
            }
        };

        let mode = match &decision {
            Decision::Passthrough(_) => {
                io.passthrough += 1;
                IoMode::Passthrough
            }
            Decision::Cached => {
                io.cached += 1;
                IoMode::Cached
            }
            Decision::DirectIo => IoMode::DirectIo,
        };
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
                }
            }
            IoMode::Cached => io.cached = io.cached.saturating_sub(1),
            IoMode::DirectIo => {}
        }
        if io.cached == 0 && io.passthrough == 0 {
            inodes.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_backing() -> std::io::Result<BackingId> {
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
        let decision = modes.open(2, 7, true, || panic!("no passthrough while cached"));
        assert!(matches!(decision, Decision::Cached));
        assert!(modes.is_enabled());
    }
}
