//! The metadata cache: recent `lstat` results by path, bounded in size and age.
//!
//! Entries answer repeated lookups without a backing call. A TTL bounds staleness because the
//! central account may change the remote tree behind us; every change made through dualfs
//! invalidates the paths it touches. Absent paths are cached too, because tools such as git
//! probe many names that do not exist.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::backend::{Side, Stat};

/// A cached resolution of one path.
#[derive(Clone, Copy)]
pub enum Cached {
    /// Found in this tree with these attributes.
    Found(Side, Stat),
    /// Found in neither tree.
    Absent,
}

pub struct AttrCache {
    entries: Mutex<LruCache<PathBuf, (Cached, Instant)>>,
    /// How long an entry stays valid; zero disables the cache.
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hit and miss counts, for operators and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

impl AttrCache {
    pub fn new(capacity: usize, ttl: Duration) -> AttrCache {
        let capacity = NonZeroUsize::new(capacity.max(1)).expect("non-zero");
        AttrCache {
            entries: Mutex::new(LruCache::new(capacity)),
            ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, path: &Path) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock();
        let found = match entries.get(path) {
            Some((cached, at)) if at.elapsed() < self.ttl => Some(*cached),
            Some(_) => {
                entries.pop(path);
                None
            }
            None => None,
        };
        drop(entries);

        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, path: &Path, cached: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries
            .lock()
            .put(path.to_path_buf(), (cached, Instant::now()));
    }

    /// Drops the entry of a path and of its parent, whose times and link count change with it.
    pub fn invalidate(&self, path: &Path) {
        let mut entries = self.entries.lock();
        entries.pop(path);
        if let Some(parent) = path.parent() {
            entries.pop(parent);
        }
    }

    /// Drops everything, for changes that move or remove whole subtrees.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.lock().len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat() -> Stat {
        // SAFETY: an all-zero stat is a valid value of this plain C struct.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn hit_after_put_and_miss_after_invalidate() {
        let cache = AttrCache::new(8, Duration::from_secs(60));
        cache.put(Path::new("a/b"), Cached::Found(Side::Local, stat()));
        assert!(cache.get(Path::new("a/b")).is_some());
        cache.invalidate(Path::new("a/b"));
        assert!(cache.get(Path::new("a/b")).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 1));
    }

    #[test]
    fn parent_invalidated_with_child() {
        let cache = AttrCache::new(8, Duration::from_secs(60));
        cache.put(Path::new("a"), Cached::Absent);
        cache.invalidate(Path::new("a/b"));
        assert!(cache.get(Path::new("a")).is_none());
    }

    #[test]
    fn expired_entry_misses() {
        let cache = AttrCache::new(8, Duration::from_millis(1));
        cache.put(Path::new("a"), Cached::Absent);
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(Path::new("a")).is_none());
    }

    #[test]
    fn size_bound_evicts_oldest() {
        let cache = AttrCache::new(2, Duration::from_secs(60));
        cache.put(Path::new("a"), Cached::Absent);
        cache.put(Path::new("b"), Cached::Absent);
        cache.put(Path::new("c"), Cached::Absent);
        assert!(cache.get(Path::new("a")).is_none());
        assert_eq!(cache.stats().entries, 2);
    }
}
