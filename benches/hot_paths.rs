//! Micro benchmarks of the hot internal paths: the metadata cache, the journal's group
//! commit, and path resolution in the inode table and a backing tree.
//!
//! Run with `cargo bench --bench hot_paths`; criterion prints times per iteration.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use dualfs::backend::{Backend, Side};
use dualfs::fs::cache::{AttrCache, Cached};
use dualfs::fs::inode::{InodeTable, ROOT};
use dualfs::replication::journal::{Journal, JournalSync};
use dualfs::replication::{Op, OpKind, RangeSet};

fn metadata_cache(c: &mut Criterion) {
    let cache = AttrCache::new(100_000, Duration::from_secs(60));
    let paths: Vec<PathBuf> = (0..10_000)
        .map(|i| PathBuf::from(format!("dir{}/file{i}", i % 100)))
        .collect();
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let stat: dualfs::backend::Stat = unsafe { std::mem::zeroed() };
    for path in &paths {
        cache.put(path, Cached::Found(Side::Local, stat));
    }

    let mut i = 0;
    c.bench_function("cache hit", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            cache.get(&paths[i])
        })
    });
    let missing = PathBuf::from("not/cached");
    c.bench_function("cache miss", |b| b.iter(|| cache.get(&missing)));
}

fn journal_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), JournalSync::Always).unwrap();
    let op = Op::new("dir/file.txt", OpKind::Data(RangeSet::single(0, 4096)));
    let mut seq = 1;

    // The default: a change waits only for its record to be written; fdatasync follows.
    let background_dir = tempfile::tempdir().unwrap();
    let (background, _) = Journal::open(background_dir.path(), JournalSync::Background).unwrap();
    let mut background_seq = 1;
    c.bench_function("journal append and wait, background sync", |b| {
        b.iter(|| {
            background_seq += 1;
            let batch = background.append(background_seq, &op).unwrap();
            background.wait(batch).unwrap();
            background.done(background_seq);
        })
    });
    background.close();

    c.bench_function("journal append and wait, 1 writer", |b| {
        b.iter(|| {
            seq += 1;
            let batch = journal.append(seq, &op).unwrap();
            journal.wait(batch).unwrap();
            journal.done(seq);
        })
    });

    // Four writers share each fdatasync; the figure is per batch of four appends.
    let shared = journal.clone();
    c.bench_function("journal append and wait, 4 writers", |b| {
        b.iter_batched(
            || (),
            |()| {
                let handles: Vec<_> = (0..4)
                    .map(|t| {
                        let journal = shared.clone();
                        let op = op.clone();
                        std::thread::spawn(move || {
                            let seq = 1_000_000_000 + t;
                            let batch = journal.append(seq, &op).unwrap();
                            journal.wait(batch).unwrap();
                            journal.done(seq);
                        })
                    })
                    .collect();
                for handle in handles {
                    handle.join().unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    journal.close();
}

fn path_resolution(c: &mut Criterion) {
    let mut table = InodeTable::new();
    let mut parent = ROOT;
    for depth in 0..8u64 {
        let id = 100 + depth;
        table.lookup(parent, OsStr::new(&format!("level{depth}")), id);
        parent = id;
    }
    c.bench_function("inode path of depth 8", |b| b.iter(|| table.path(parent)));

    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a/b/c/d");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("file"), b"x").unwrap();
    let backend = Arc::new(Backend::open(Side::Local, dir.path()).unwrap());
    let relative = Path::new("a/b/c/d/file");
    c.bench_function("confined lstat of depth 5", |b| {
        b.iter(|| backend.lstat(relative).unwrap())
    });
    c.bench_function("plain lstat of depth 5 (baseline)", |b| {
        b.iter(|| std::fs::symlink_metadata(deep.join("file")).unwrap())
    });
}

criterion_group!(benches, metadata_cache, journal_append, path_resolution);
criterion_main!(benches);
