//! The changes that the remote tree still lacks.
//!
//! Most operations are state transfers: applying one makes the remote path match what the local
//! tree holds at apply time, so applying it twice, or after a later change, is harmless. Only
//! the namespace changes (unlink, rmdir, rename, link) carry intent that the local tree cannot
//! show afterwards.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A set of byte ranges, merged as they arrive and bounded in count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted, non-overlapping, non-adjacent half-open ranges.
    ranges: Vec<(u64, u64)>,
}

/// Beyond this many separate ranges, the set collapses to the span that covers them, trading
/// a little extra copying for bounded memory per queued file.
const MAX_RANGES: usize = 64;

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// A set that covers a whole file of any size.
    pub fn everything() -> RangeSet {
        RangeSet {
            ranges: vec![(0, u64::MAX)],
        }
    }

    /// Returns a set from `start` to the end of the file, whatever its size.
    pub fn from_offset(start: u64) -> RangeSet {
        RangeSet {
            ranges: vec![(start, u64::MAX)],
        }
    }

    pub fn single(start: u64, len: u64) -> RangeSet {
        let mut set = RangeSet::new();
        set.insert(start, len);
        set
    }

    pub fn insert(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        let mut merged = (start, end);
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e < merged.0 || s > merged.1 {
                kept.push((s, e));
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
            }
        }
        kept.push(merged);
        kept.sort_unstable();
        if kept.len() > MAX_RANGES {
            let span = (kept[0].0, kept[kept.len() - 1].1);
            kept = vec![span];
        }
        self.ranges = kept;
    }

    pub fn merge(&mut self, other: &RangeSet) {
        for &(s, e) in &other.ranges {
            self.insert(s, e - s);
        }
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes covered by ranges with a known end; a whole-file copy counts 0.
    pub fn known_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|&&(_, e)| e != u64::MAX)
            .map(|&(s, e)| e - s)
            .sum()
    }

    /// Bytes covered, with an open-ended range counted up to `file_size`.
    pub fn bytes_within(&self, file_size: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(s, e)| e.min(file_size).saturating_sub(s))
            .sum()
    }
}

/// The kind of change to make to one remote path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Create the directory if missing, then copy its attributes.
    Mkdir,
    /// Create the special file (FIFO, socket or device node) as the local one is.
    Mknod,
    /// Create the symlink with the local target.
    Symlink,
    /// Copy these byte ranges and the size, creating the file if missing, then the attributes.
    Data(RangeSet),
    /// Copy mode, owner and times.
    Attr,
    /// Copy one extended attribute, or remove it if the local path no longer has it.
    Xattr(OsString),
    Unlink,
    Rmdir,
    /// Rename `path` to `to` with renameat2 flags.
    Rename {
        to: PathBuf,
        flags: u32,
    },
    /// Make `to` a hard link of `path`.
    Link {
        to: PathBuf,
    },
    /// Flush the remote copy of the file to stable storage.
    Fsync,
    /// Copy the whole local subtree, as an operator's repair request.
    Resync,
}

/// One queued change: a relative path in both trees and what to do to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub path: PathBuf,
    pub kind: OpKind,
}

impl Op {
    pub fn new(path: impl Into<PathBuf>, kind: OpKind) -> Op {
        Op {
            path: path.into(),
            kind,
        }
    }

    /// The second path this operation touches, if any.
    pub fn second_path(&self) -> Option<&Path> {
        match &self.kind {
            OpKind::Rename { to, .. } | OpKind::Link { to } => Some(to),
            _ => None,
        }
    }

    /// Whether applying this operation removes `path` from the remote tree, so that a remote
    /// entry at that path must no longer be shown.
    pub fn removes(&self, path: &Path) -> bool {
        match &self.kind {
            OpKind::Unlink | OpKind::Rmdir => self.path == path,
            OpKind::Rename { flags, .. } => self.path == path && flags & libc::RENAME_EXCHANGE == 0,
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            OpKind::Mkdir => "mkdir",
            OpKind::Mknod => "mknod",
            OpKind::Symlink => "symlink",
            OpKind::Data(_) => "data",
            OpKind::Attr => "attr",
            OpKind::Xattr(_) => "xattr",
            OpKind::Unlink => "unlink",
            OpKind::Rmdir => "rmdir",
            OpKind::Rename { .. } => "rename",
            OpKind::Link { .. } => "link",
            OpKind::Fsync => "fsync",
            OpKind::Resync => "resync",
        }
    }
}

/// Whether one of the two paths is the other or one of its ancestors; operations on such
/// paths must reach the remote in the order they happened.
pub fn paths_overlap(a: &Path, b: &Path) -> bool {
    is_within(a, b) || is_within(b, a)
}

/// Whether `path` is `ancestor` or lies below it (the empty path is the root).
pub fn is_within(path: &Path, ancestor: &Path) -> bool {
    let p = path.as_os_str().as_encoded_bytes();
    let a = ancestor.as_os_str().as_encoded_bytes();
    if a.is_empty() {
        return true;
    }
    p.len() >= a.len() && p.starts_with(a) && (p.len() == a.len() || p[a.len()] == b'/')
}

/// Rewrites `path` from below `from` to below `to`, if it lies there.
pub fn rebase(path: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    if !is_within(path, from) {
        return None;
    }
    let rest = path.strip_prefix(from).ok()?;
    if rest.as_os_str().is_empty() {
        Some(to.to_path_buf())
    } else {
        Some(to.join(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_overlapping_and_adjacent() {
        let mut set = RangeSet::single(0, 10);
        set.insert(10, 5);
        set.insert(30, 5);
        set.insert(12, 20);
        assert_eq!(set.ranges(), &[(0, 35)]);
    }

    #[test]
    fn ranges_collapse_beyond_bound() {
        let mut set = RangeSet::new();
        for i in 0..(MAX_RANGES as u64 + 1) {
            set.insert(i * 100, 1);
        }
        assert_eq!(set.ranges(), &[(0, MAX_RANGES as u64 * 100 + 1)]);
    }

    #[test]
    fn ranges_count_bytes_within_size() {
        let set = RangeSet::everything();
        assert_eq!(set.bytes_within(42), 42);
    }

    #[test]
    fn overlap_is_component_wise() {
        assert!(paths_overlap(Path::new("a"), Path::new("a/b")));
        assert!(paths_overlap(Path::new(""), Path::new("x")));
        assert!(!paths_overlap(Path::new("a"), Path::new("ab")));
        assert!(!paths_overlap(Path::new("a/b"), Path::new("a/c")));
    }

    #[test]
    fn rebase_moves_descendants() {
        let moved = rebase(Path::new("a/b/c"), Path::new("a/b"), Path::new("x"));
        assert_eq!(moved, Some(PathBuf::from("x/c")));
        assert_eq!(
            rebase(Path::new("a/bc"), Path::new("a/b"), Path::new("x")),
            None
        );
    }
}
