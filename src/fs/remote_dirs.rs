//! Name sets of remote directories, so that a lookup of a name the remote tree does not have
//! needs no remote call.
//!
//! Creating a file looks its new name up in both trees, and on a remote reached across
//! accounts every such lookup is a network round trip. One listing of the remote directory
//! serves the lookups of every new name in it for the cache TTL. A listing only ever rules a
//! name out: a name it contains is still looked up, so names that dualfs itself removes from
//! the remote need no invalidation. Names that another writer adds to the remote stay hidden
//! for at most the TTL, as with the metadata cache's absent entries.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

/// Directories with more entries than this are not kept: their lookups go to the remote.
pub const MAX_NAMES: usize = 4096;

/// How many directory listings are kept.
const CAPACITY: usize = 256;

/// The known names of one remote directory.
#[derive(Clone, Debug)]
pub enum Listing {
    /// Every name the directory held when it was listed (empty when it did not exist).
    Names(Arc<HashSet<OsString>>),
    /// The directory held more than `MAX_NAMES` entries.
    TooLarge,
}

pub struct RemoteListings {
    entries: Mutex<LruCache<PathBuf, (Listing, Instant)>>,
    ttl: Duration,
}

impl RemoteListings {
    /// Creates an empty cache whose listings stay valid for `ttl`; zero disables it.
    pub fn new(ttl: Duration) -> RemoteListings {
        RemoteListings {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(CAPACITY).expect("non-zero"),
            )),
            ttl,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Returns whether the remote directory `dir` may hold `name`: `Some(false)` when a fresh
    /// listing lacks it, `Some(true)` when it has it or is too large to keep, `None` when no
    /// fresh listing is known.
    pub fn may_hold(&self, dir: &Path, name: &OsStr) -> Option<bool> {
        let mut entries = self.entries.lock();
        match entries.get(dir) {
            Some((listing, at)) if at.elapsed() < self.ttl => Some(match listing {
                Listing::Names(names) => names.contains(name),
                Listing::TooLarge => true,
            }),
            Some(_) => {
                entries.pop(dir);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, dir: &Path, listing: Listing) {
        if self.is_enabled() {
            self.entries
                .lock()
                .put(dir.to_path_buf(), (listing, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Listing {
        Listing::Names(Arc::new(list.iter().map(OsString::from).collect()))
    }

    #[test]
    fn listing_rules_out_missing_names() {
        let listings = RemoteListings::new(Duration::from_secs(60));
        let dir = Path::new("d");
        assert_eq!(listings.may_hold(dir, OsStr::new("a")), None);
        listings.put(dir, names(&["a"]));
        assert_eq!(listings.may_hold(dir, OsStr::new("a")), Some(true));
        assert_eq!(listings.may_hold(dir, OsStr::new("b")), Some(false));
        assert_eq!(listings.may_hold(Path::new("e"), OsStr::new("b")), None);
    }

    #[test]
    fn large_directory_rules_nothing_out() {
        let listings = RemoteListings::new(Duration::from_secs(60));
        listings.put(Path::new("d"), Listing::TooLarge);
        assert_eq!(
            listings.may_hold(Path::new("d"), OsStr::new("b")),
            Some(true)
        );
    }

    #[test]
    fn expired_listing_is_dropped() {
        let listings = RemoteListings::new(Duration::from_millis(20));
        listings.put(Path::new("d"), names(&[]));
        assert_eq!(
            listings.may_hold(Path::new("d"), OsStr::new("b")),
            Some(false)
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(listings.may_hold(Path::new("d"), OsStr::new("b")), None);
    }

    #[test]
    fn zero_ttl_keeps_nothing() {
        let listings = RemoteListings::new(Duration::ZERO);
        listings.put(Path::new("d"), names(&[]));
        assert_eq!(listings.may_hold(Path::new("d"), OsStr::new("b")), None);
    }
}
