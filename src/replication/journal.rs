//! The durable journal of changes the remote tree still lacks.
//!
//! Every queued operation is appended before the local change it describes is made, and is
//! marked done once the remote has it; on start, the operations without a done mark are queued
//! again. In `always` mode a change waits for its record's `fdatasync`, which appends from
//! many threads share (group commit). In `background` mode a change waits only for the write,
//! and the `fdatasync` follows at most every 10 ms.
//!
//! On disk the journal is a series of segment files `journal-<id>` in the state folder. Each
//! starts with a header (magic, format version, kind) followed by records:
//! `length u32 | crc32 u32 | payload`. A crash mid-append leaves a torn record at the end of the
//! last segment, which replay detects by its length or checksum and cuts off; records before it
//! are kept. Compaction writes the operations still pending into a new snapshot segment
//! (written to a temporary file and renamed into place, so it is complete or absent), after
//! which older segments are deleted; replay starts from the newest snapshot. Every start
//! compacts this way before the first append.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::op::{Op, OpKind, RangeSet};

const MAGIC: &[u8; 8] = b"DUALFSJR";
/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 13;
/// Segments that earlier versions started with; replay reads them like any segment after
/// the newest snapshot.
#[cfg_attr(not(test), allow(dead_code))]
const KIND_LOG: u8 = 0;
const KIND_SNAPSHOT: u8 = 1;

const RECORD_APPEND: u8 = 1;
const RECORD_DONE: u8 = 2;

/// Records larger than this are treated as corruption (a path is at most 4 KiB, an xattr
/// name 255 bytes, a range list 64 entries).
const MAX_RECORD: usize = 64 * 1024;

/// The log is compacted once it grows beyond this many bytes and beyond four times the size of
/// the last snapshot, which bounds its size by the pending operations, not by history.
const COMPACT_MIN_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "journal segment {path} was written by an incompatible dualfs (format {found}, this build reads format {FORMAT_VERSION}); \
         finish replication with the dualfs version that wrote it, or move the folder away to start without it"
    )]
    Incompatible { path: PathBuf, found: u32 },
    #[error("{path} is not a dualfs journal segment (bad magic); move it out of the state folder")]
    NotJournal { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The result of replaying the journal.
#[derive(Debug, Default)]
pub struct Replay {
    /// Operations still pending, oldest first, with their sequence numbers.
    pub pending: Vec<(u64, Op)>,
    /// The next free sequence number.
    pub next_seq: u64,
    /// Bytes cut off the end of the last segment because a record there was torn.
    pub truncated_bytes: u64,
    /// Whether the previous daemon left a background-mode journal open on another boot of the
    /// machine. Its last records may then never have reached the disk, so the trees must be
    /// compared.
    pub records_may_be_lost: bool,
}

struct Inner {
    /// Encoded records waiting for the next group commit.
    buffer: Vec<u8>,
    /// Number of the group commit that will write `buffer`.
    open_batch: u64,
    /// Number of the last group commit whose records are written (in the page cache at least).
    written_batch: u64,
    /// Number of the last group commit that reached stable storage.
    durable_batch: u64,
    /// Background mode: records were written since the last `fdatasync`.
    dirty: bool,
    /// A snapshot is being written; appends wait in the buffer until it is in place.
    compacting: bool,
    /// Background mode: a caller of `sync` waits, so the next sync may not wait its turn.
    sync_requested: bool,
    /// Operations appended and not yet done, by sequence number.
    live: BTreeMap<u64, Op>,
    active: File,
    active_path: PathBuf,
    active_id: u64,
    active_bytes: u64,
    last_snapshot_bytes: u64,
    /// Recent group commits that failed, with the errno; their callers abort their changes.
    failed_batches: VecDeque<(u64, i32)>,
    shutdown: bool,
}

/// Background mode: the shortest time between two syncs that no caller waits for. Each
/// `fdatasync` of the journal also commits the file system's own journal with the metadata of
/// every change made since, so a sync after every record slows the local tree down.
const BACKGROUND_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// How many failed group commits are remembered for their waiters.
const FAILED_BATCHES_KEPT: usize = 64;

/// When a change may go ahead after its record was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum JournalSync {
    /// Once the record is on stable storage (a group-committed `fdatasync`), so a machine
    /// crash loses no record of a change made, as far as the storage honours `fdatasync`.
    Always,
    /// Once the record is written to the journal file. The `fdatasync` follows within
    /// milliseconds, and an application's fsync waits for it. A killed daemon loses nothing
    /// because the kernel keeps the written records. A machine crash may lose the records of
    /// the last milliseconds, so the next start then compares both trees.
    #[default]
    Background,
}

impl JournalSync {
    fn name(self) -> &'static str {
        match self {
            JournalSync::Always => "always",
            JournalSync::Background => "background",
        }
    }
}

pub struct Journal {
    dir: PathBuf,
    sync: JournalSync,
    inner: Mutex<Inner>,
    /// Signalled when records are buffered or at shutdown.
    pending: Condvar,
    /// Signalled after each group commit.
    durable: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// A position in the journal that a caller can wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch(u64);

impl Batch {
    /// The batch of an append that could not even be buffered.
    pub const FAILED: Batch = Batch(u64::MAX);
}

fn segment_name(id: u64) -> String {
    format!("journal-{id:016}")
}

fn segment_id(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?.parse().ok()
}

fn header(kind: u8) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.push(kind);
    bytes
}

impl Journal {
    /// Opens the journal in `dir` (creating it), replays it and starts the group-commit thread.
    pub fn open(dir: &Path, sync: JournalSync) -> Result<(Arc<Journal>, Replay), JournalError> {
        // The journal names every changed path, so only the daemon's user may read it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let (segments, mut replay, _) = read_segments(dir)?;
        replay.records_may_be_lost = owner::take_over(dir, sync.name())?;

        // Each start replaces every segment by one snapshot of the pending operations, so
        // restarts do not pile up segments and their space reserves.
        let active_id = segments.last().map_or(1, |(id, _)| id + 1);
        let mut snapshot = Vec::new();
        for (seq, op) in &replay.pending {
            encode_record(&mut snapshot, RECORD_APPEND, *seq, Some(op));
        }
        let (active, active_path, active_bytes) =
            write_snapshot_segment(dir, active_id, &snapshot).map_err(io_error(dir))?;
        remove_segments_before(dir, active_id);
        let live: BTreeMap<u64, Op> = replay.pending.iter().cloned().collect();
        replay.pending = live.iter().map(|(s, o)| (*s, o.clone())).collect();
        let journal = Arc::new(Journal {
            dir: dir.to_path_buf(),
            sync,
            inner: Mutex::new(Inner {
                buffer: Vec::new(),
                open_batch: 1,
                written_batch: 0,
                durable_batch: 0,
                dirty: false,
                compacting: false,
                sync_requested: false,
                live,
                active,
                active_path,
                active_id,
                active_bytes,
                last_snapshot_bytes: active_bytes,
                failed_batches: VecDeque::new(),
                shutdown: false,
            }),
            pending: Condvar::new(),
            durable: Condvar::new(),
            flusher: Mutex::new(None),
        });

        let flusher = journal.clone();
        let handle = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || flusher.run_flusher())
            .map_err(io_error(dir))?;
        *journal.flusher.lock() = Some(handle);
        Ok((journal, replay))
    }

    /// Appends an operation; wait on the returned batch before making the change it records.
    pub fn append(&self, seq: u64, op: &Op) -> Result<Batch, String> {
        let mut inner = self.inner.lock();
        if inner.shutdown {
            return Err("the journal is closed".to_string());
        }
        encode_record(&mut inner.buffer, RECORD_APPEND, seq, Some(op));
        inner.live.insert(seq, op.clone());
        Ok(self.submit(inner))
    }

    /// Marks an operation done. Not waited on: losing the mark in a crash only replays an
    /// operation that is safe to apply again.
    pub fn done(&self, seq: u64) {
        let mut inner = self.inner.lock();
        if inner.live.remove(&seq).is_some() {
            encode_record(&mut inner.buffer, RECORD_DONE, seq, None);
            self.submit(inner);
        }
    }

    /// Hands the buffered records on and returns their batch. In background mode they are
    /// written to the journal file at once unless a snapshot is being written, so a killed
    /// daemon cannot lose them. The group-commit thread then makes them durable.
    fn submit(&self, mut inner: parking_lot::MutexGuard<'_, Inner>) -> Batch {
        let batch = inner.open_batch;
        if self.sync == JournalSync::Background && !inner.compacting {
            inner.open_batch += 1;
            let buffer = std::mem::take(&mut inner.buffer);
            let written_before = inner.active_bytes;
            if let Err(err) = inner.active.write_all(&buffer) {
                let _ = inner.active.set_len(written_before);
                record_failure(&mut inner, batch, &err);
            } else {
                inner.active_bytes += buffer.len() as u64;
                inner.dirty = true;
            }
            inner.written_batch = batch;
            inner.buffer = buffer;
            inner.buffer.clear();
        }
        drop(inner);
        self.pending.notify_one();
        Batch(batch)
    }

    /// Waits until the batch may be relied on (written in background mode, on stable storage
    /// otherwise); returns the errno of a failed write.
    pub fn wait(&self, batch: Batch) -> Result<(), i32> {
        if batch == Batch::FAILED {
            return Err(libc::EIO);
        }
        let mut inner = self.inner.lock();
        loop {
            let reached = match self.sync {
                JournalSync::Always => inner.durable_batch,
                JournalSync::Background => inner.written_batch,
            };
            if reached >= batch.0 {
                break;
            }
            self.durable.wait(&mut inner);
        }
        match inner.failed_batches.iter().find(|(b, _)| *b == batch.0) {
            Some((_, errno)) => Err(*errno),
            None => Ok(()),
        }
    }

    /// Waits until every record appended so far is on stable storage (for an application's
    /// fsync in background mode).
    pub fn sync(&self) {
        let mut inner = self.inner.lock();
        let target = if inner.buffer.is_empty() {
            inner.open_batch - 1
        } else {
            inner.open_batch
        };
        inner.sync_requested = true;
        self.pending.notify_one();
        while inner.durable_batch < target && !inner.shutdown {
            self.durable.wait(&mut inner);
        }
    }

    pub fn live_count(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// Writes what is buffered, makes it durable and stops the group-commit thread.
    pub fn close(&self) {
        self.inner.lock().shutdown = true;
        self.pending.notify_all();
        if let Some(handle) = self.flusher.lock().take() {
            let _ = handle.join();
        }
        if let Err(err) = owner::mark_closed(&self.dir) {
            tracing::warn!(journal = %self.dir.display(), %err, "cannot mark the journal closed; the next start compares both trees");
        }
    }

    fn run_flusher(&self) {
        let mut last_sync = Instant::now() - BACKGROUND_SYNC_INTERVAL;
        loop {
            let mut inner = self.inner.lock();
            while inner.buffer.is_empty() && !inner.dirty && !inner.shutdown {
                self.pending.wait(&mut inner);
            }
            // Records written directly wait for the next sync slot unless someone waits.
            let next_slot = last_sync + BACKGROUND_SYNC_INTERVAL;
            while inner.buffer.is_empty()
                && !inner.sync_requested
                && !inner.shutdown
                && Instant::now() < next_slot
            {
                self.pending.wait_until(&mut inner, next_slot);
            }
            inner.sync_requested = false;
            if inner.buffer.is_empty() && !inner.dirty && inner.shutdown {
                return;
            }

            // Every batch numbered so far is in the buffer or already written.
            let batch = if inner.buffer.is_empty() {
                inner.open_batch - 1
            } else {
                inner.open_batch += 1;
                inner.open_batch - 1
            };
            let buffer = std::mem::take(&mut inner.buffer);
            inner.dirty = false;
            let compact = inner.active_bytes > COMPACT_MIN_BYTES.max(4 * inner.last_snapshot_bytes);
            let result = if compact {
                self.compact(inner)
            } else if self.sync == JournalSync::Background {
                last_sync = Instant::now();
                self.write_then_sync(inner, &buffer, batch)
            } else {
                let file = inner.active.try_clone();
                let written_before = inner.active_bytes;
                drop(inner);
                file.and_then(|mut file| {
                    file.write_all(&buffer)
                        .inspect_err(|_| {
                            // Cut a partial write off so later records are not stranded
                            // behind a torn one.
                            let _ = file.set_len(written_before);
                        })
                        .and_then(|()| file.sync_data())
                })
                .map(|()| buffer.len() as u64)
            };

            let mut inner = self.inner.lock();
            match result {
                Ok(bytes) => inner.active_bytes += bytes,
                Err(err) => {
                    tracing::error!(path = %inner.active_path.display(), error = %err, batch, "journal write failed; the changes of this batch are rejected");
                    record_failure(&mut inner, batch, &err);
                }
            }
            inner.written_batch = inner.written_batch.max(batch);
            inner.durable_batch = inner.durable_batch.max(batch);
            drop(inner);
            self.durable.notify_all();
        }
    }

    /// Background mode: writes the buffer under the lock, so it keeps its place before the
    /// records that appenders write directly, releases the waiters, then syncs.
    fn write_then_sync(
        &self,
        mut inner: parking_lot::MutexGuard<'_, Inner>,
        buffer: &[u8],
        batch: u64,
    ) -> io::Result<u64> {
        if !buffer.is_empty() {
            let written_before = inner.active_bytes;
            if let Err(err) = inner.active.write_all(buffer) {
                let _ = inner.active.set_len(written_before);
                return Err(err);
            }
            inner.active_bytes += buffer.len() as u64;
        }
        inner.written_batch = inner.written_batch.max(batch);
        let file = inner.active.try_clone();
        drop(inner);
        self.durable.notify_all();
        if let Err(err) = file.and_then(|file| file.sync_data()) {
            // The records were written and their changes made; only the durability against a
            // machine crash is in doubt, which the next start's comparison covers.
            tracing::error!(journal = %self.dir.display(), %err, "journal fdatasync failed");
        }
        Ok(0)
    }

    /// Replaces the segments by a snapshot of the pending operations. Appends made meanwhile
    /// stay in the buffer (and their callers wait) until the snapshot is in place.
    fn compact(&self, mut inner: parking_lot::MutexGuard<'_, Inner>) -> io::Result<u64> {
        let mut snapshot = Vec::new();
        for (seq, op) in &inner.live {
            encode_record(&mut snapshot, RECORD_APPEND, *seq, Some(op));
        }
        inner.compacting = true;
        drop(inner);
        let result = self.write_snapshot(&snapshot);
        let mut inner = self.inner.lock();
        inner.compacting = false;
        let (file, path, id, bytes) = result?;
        inner.active = file;
        inner.active_path = path;
        inner.active_id = id;
        inner.active_bytes = bytes;
        inner.last_snapshot_bytes = bytes;
        drop(inner);
        remove_segments_before(&self.dir, id);
        Ok(0)
    }

    /// Writes the pending operations into a new snapshot segment and returns it opened for
    /// appending, with its path, id and size.
    fn write_snapshot(&self, records: &[u8]) -> io::Result<(File, PathBuf, u64, u64)> {
        let id = self.inner.lock().active_id + 1;
        let (file, path, bytes) = write_snapshot_segment(&self.dir, id, records)?;
        tracing::info!(segment = %path.display(), bytes, "journal compacted");
        Ok((file, path, id, bytes))
    }
}

/// Writes a snapshot segment `id` holding `records` (to a temporary file renamed into place,
/// so it is complete or absent) and returns it opened for appending, with its path and size.
fn write_snapshot_segment(dir: &Path, id: u64, records: &[u8]) -> io::Result<(File, PathBuf, u64)> {
    let path = dir.join(segment_name(id));
    let temporary = dir.join(format!("{}.tmp", segment_name(id)));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&header(KIND_SNAPSHOT))?;
    file.write_all(records)?;
    file.sync_all()?;
    fs::rename(&temporary, &path)?;
    File::open(dir)?.sync_all()?;
    let file = OpenOptions::new().append(true).open(&path)?;
    reserve_space(&file);
    Ok((file, path, (HEADER_LEN + records.len()) as u64))
}

/// Removes the segments older than `id`, which a complete snapshot replaces.
fn remove_segments_before(dir: &Path, id: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(old) = name.to_str().and_then(segment_id) else {
            continue;
        };
        if old < id {
            if let Err(err) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), %err, "cannot remove an old journal segment");
            }
        }
    }
}

/// Returns the newest segment file in `dir`.
#[cfg(test)]
pub(super) fn newest_segment(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name()?.to_str()?;
            segment_id(name).is_some().then_some(path)
        })
        .max()
        .unwrap()
}

/// Remembers a failed write for the waiters of its batch.
fn record_failure(inner: &mut Inner, batch: u64, err: &io::Error) {
    if inner.failed_batches.len() == FAILED_BATCHES_KEPT {
        inner.failed_batches.pop_front();
    }
    inner
        .failed_batches
        .push_back((batch, err.raw_os_error().unwrap_or(libc::EIO)));
}

/// Space allocated ahead for a segment's appends.
const RESERVE_BYTES: i64 = 4 << 20;

/// Allocates space for future appends without changing the file size, so that a full local
/// file system still accepts journal records (and with them the deletions that free space)
/// until the reserve is used up. Backings without fallocate (NFSv4.1) simply get none.
fn reserve_space(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor; a failure only means no reserve.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            RESERVE_BYTES,
        )
    };
    if ret != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "no space reserved for the journal");
    }
}

type Segments = Vec<(u64, PathBuf)>;

/// Reads every segment from the newest snapshot on and returns them with the replay result
/// and the size of that snapshot.
fn read_segments(dir: &Path) -> Result<(Segments, Replay, u64), JournalError> {
    let mut segments: Segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") && name.starts_with("journal-") {
            // A snapshot that was never renamed into place is incomplete.
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some(id) = segment_id(name) {
            segments.push((id, entry.path()));
        }
    }
    segments.sort();

    let mut kinds = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        kinds.push(read_header(path)?);
    }
    let start = kinds.iter().rposition(|k| *k == KIND_SNAPSHOT).unwrap_or(0);

    let mut live: BTreeMap<u64, Op> = BTreeMap::new();
    let mut next_seq = 1;
    let mut truncated_bytes = 0;
    let mut snapshot_bytes = 0;
    let last = segments.len().saturating_sub(1);
    for (index, (_, path)) in segments.iter().enumerate().skip(start) {
        let bytes = fs::read(path).map_err(io_error(path))?;
        if index == start && kinds[index] == KIND_SNAPSHOT {
            snapshot_bytes = bytes.len() as u64;
        }
        let valid = apply_records(&bytes[HEADER_LEN..], &mut live, &mut next_seq);
        let valid_end = HEADER_LEN + valid;
        if valid_end < bytes.len() {
            let cut = (bytes.len() - valid_end) as u64;
            if index == last {
                tracing::warn!(segment = %path.display(), bytes = cut, "journal ends in a torn record (crash during an append); cutting it off");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(path))?;
                file.set_len(valid_end as u64).map_err(io_error(path))?;
                file.sync_all().map_err(io_error(path))?;
            } else {
                tracing::error!(segment = %path.display(), bytes = cut, "journal segment is corrupt in the middle; records after the damage are skipped");
            }
            truncated_bytes += cut;
        }
    }

    let pending = live.into_iter().collect();
    Ok((
        segments,
        Replay {
            pending,
            next_seq,
            truncated_bytes,
            records_may_be_lost: false,
        },
        snapshot_bytes,
    ))
}

fn read_header(path: &Path) -> Result<u8, JournalError> {
    let mut bytes = [0u8; HEADER_LEN];
    let mut file = File::open(path).map_err(io_error(path))?;
    let read = file.read(&mut bytes).map_err(io_error(path))?;
    if read < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(JournalError::NotJournal {
            path: path.to_path_buf(),
        });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(JournalError::Incompatible {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(bytes[12])
}

/// Applies the records in `bytes` and returns how many bytes held whole, valid records.
fn apply_records(bytes: &[u8], live: &mut BTreeMap<u64, Op>, next_seq: &mut u64) -> usize {
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let len =
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
        let end = offset + 8 + len;
        if len > MAX_RECORD || end > bytes.len() {
            break;
        }
        let payload = &bytes[offset + 8..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some((kind, seq, op)) = decode_record(payload) else {
            break;
        };
        match (kind, op) {
            (RECORD_APPEND, Some(op)) => {
                live.insert(seq, op);
            }
            (RECORD_DONE, _) => {
                live.remove(&seq);
            }
            _ => break,
        }
        *next_seq = (*next_seq).max(seq + 1);
        offset = end;
    }
    offset
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_record(out: &mut Vec<u8>, kind: u8, seq: u64, op: Option<&Op>) {
    let mut payload = Vec::with_capacity(64);
    payload.push(kind);
    payload.extend_from_slice(&seq.to_le_bytes());
    if let Some(op) = op {
        encode_op(&mut payload, op);
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn encode_op(out: &mut Vec<u8>, op: &Op) {
    let tag = match op.kind {
        OpKind::Mkdir => 1,
        OpKind::Mknod => 2,
        OpKind::Symlink => 3,
        OpKind::Data(_) => 4,
        OpKind::Attr => 5,
        OpKind::Xattr(_) => 6,
        OpKind::Unlink => 7,
        OpKind::Rmdir => 8,
        OpKind::Rename { .. } => 9,
        OpKind::Link { .. } => 10,
        OpKind::Fsync => 11,
        OpKind::Resync => 12,
    };
    out.push(tag);
    put_bytes(out, op.path.as_os_str().as_bytes());
    match &op.kind {
        OpKind::Xattr(name) => put_bytes(out, name.as_bytes()),
        OpKind::Rename { to, flags } => {
            put_bytes(out, to.as_os_str().as_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
        }
        OpKind::Link { to } => put_bytes(out, to.as_os_str().as_bytes()),
        _ => {}
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self.u32()? as usize;
        self.take(len).map(<[u8]>::to_vec)
    }

    fn path(&mut self) -> Option<PathBuf> {
        self.bytes().map(|b| PathBuf::from(OsString::from_vec(b)))
    }
}

fn decode_record(payload: &[u8]) -> Option<(u8, u64, Option<Op>)> {
    let mut reader = Reader { bytes: payload };
    let kind = reader.u8()?;
    let seq = reader.u64()?;
    if kind == RECORD_DONE {
        return Some((kind, seq, None));
    }

    let tag = reader.u8()?;
    let path = reader.path()?;
    let kind_of_op = match tag {
        1 => OpKind::Mkdir,
        2 => OpKind::Mknod,
        3 => OpKind::Symlink,
        // The ranges written since the append were merged without a journal record, so a
        // replayed copy covers the whole file.
        4 => OpKind::Data(RangeSet::everything()),
        5 => OpKind::Attr,
        6 => OpKind::Xattr(OsString::from_vec(reader.bytes()?)),
        7 => OpKind::Unlink,
        8 => OpKind::Rmdir,
        9 => {
            let to = reader.path()?;
            let flags = reader.u32()?;
            OpKind::Rename { to, flags }
        }
        10 => OpKind::Link { to: reader.path()? },
        11 => OpKind::Fsync,
        12 => OpKind::Resync,
        _ => return None,
    };
    Some((kind, seq, Some(Op::new(path, kind_of_op))))
}

/// The journal's owner file: the boot of the machine that last opened the journal, its sync
/// mode, and whether it closed the journal. A journal left open in background mode by another
/// boot may miss its last records, which only the page cache of the crashed machine held.
mod owner {
    use std::fs::{self, File};
    use std::io::{self, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use super::{io_error, JournalError};

    const FILE: &str = "owner";

    /// Records this daemon as the owner and returns whether the previous one may have lost
    /// records.
    pub fn take_over(dir: &Path, sync: &str) -> Result<bool, JournalError> {
        let path = dir.join(FILE);
        let boot = boot_id();
        let lost = fs::read_to_string(&path).is_ok_and(|text| {
            let field = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .map(str::trim)
            };
            field("state=") == Some("open")
                && field("sync=") == Some("background")
                && field("boot=") != Some(boot.as_str())
        });
        write(dir, &format!("boot={boot}\nsync={sync}\nstate=open\n")).map_err(io_error(&path))?;
        Ok(lost)
    }

    /// Records that the owner closed the journal with every record durable.
    pub fn mark_closed(dir: &Path) -> io::Result<()> {
        let text = fs::read_to_string(dir.join(FILE))?;
        write(dir, &text.replace("state=open", "state=closed"))
    }

    fn write(dir: &Path, text: &str) -> io::Result<()> {
        let temporary = dir.join(format!("{FILE}.tmp"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, dir.join(FILE))?;
        File::open(dir)?.sync_all()
    }

    /// Returns the kernel's id of this boot, or an empty string where /proc lacks it. An empty
    /// id counts as another boot only when the previous owner recorded one.
    fn boot_id() -> String {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|id| id.trim().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(from: &str, to: &str) -> Op {
        Op::new(
            from,
            OpKind::Rename {
                to: PathBuf::from(to),
                flags: 0,
            },
        )
    }

    #[test]
    fn pending_operations_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, replay) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        assert!(replay.pending.is_empty());

        let batch = journal.append(1, &Op::new("a", OpKind::Mkdir)).unwrap();
        journal.append(2, &rename("a", "b")).unwrap();
        journal
            .append(3, &Op::new("b/x", OpKind::Data(RangeSet::single(0, 5))))
            .unwrap();
        journal.done(1);
        journal.wait(batch).unwrap();
        journal.close();

        let (journal, replay) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        let seqs: Vec<u64> = replay.pending.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(replay.pending[0].1, rename("a", "b"));
        assert_eq!(
            replay.pending[1].1.kind,
            OpKind::Data(RangeSet::everything()),
            "a replayed data operation copies the whole file"
        );
        assert_eq!(replay.next_seq, 4);
        journal.close();
    }

    fn segment_count(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_str().unwrap().starts_with("journal-")
            })
            .count()
    }

    #[test]
    fn restarts_keep_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        let batch = journal.append(7, &Op::new("kept", OpKind::Attr)).unwrap();
        journal.wait(batch).unwrap();
        journal.close();
        for _ in 0..5 {
            let (journal, replay) = Journal::open(dir.path(), JournalSync::Background).unwrap();
            assert_eq!(replay.pending, vec![(7, Op::new("kept", OpKind::Attr))]);
            journal.close();
        }
        assert_eq!(segment_count(dir.path()), 1);
    }

    #[test]
    fn log_segment_of_an_earlier_version_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = header(KIND_LOG);
        encode_record(
            &mut bytes,
            RECORD_APPEND,
            3,
            Some(&Op::new("old", OpKind::Attr)),
        );
        fs::write(dir.path().join(segment_name(4)), bytes).unwrap();

        let (journal, replay) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        assert_eq!(replay.pending, vec![(3, Op::new("old", OpKind::Attr))]);
        assert_eq!(replay.next_seq, 4);
        assert_eq!(segment_count(dir.path()), 1, "the old segment is replaced");
        journal.close();
    }

    #[test]
    fn torn_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        let batch = journal.append(1, &Op::new("kept", OpKind::Attr)).unwrap();
        journal.wait(batch).unwrap();
        journal.close();

        let segment = newest_segment(dir.path());
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        let mut torn = Vec::new();
        encode_record(
            &mut torn,
            RECORD_APPEND,
            2,
            Some(&Op::new("torn", OpKind::Attr)),
        );
        file.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(file);

        let (journal, replay) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        assert_eq!(replay.pending.len(), 1);
        assert_eq!(replay.pending[0].1.path, PathBuf::from("kept"));
        assert_eq!(replay.truncated_bytes, (torn.len() - 3) as u64);
        journal.close();
    }

    #[test]
    fn corrupt_checksum_stops_replay_at_the_record() {
        let mut bytes = Vec::new();
        encode_record(
            &mut bytes,
            RECORD_APPEND,
            1,
            Some(&Op::new("a", OpKind::Attr)),
        );
        let first = bytes.len();
        encode_record(
            &mut bytes,
            RECORD_APPEND,
            2,
            Some(&Op::new("b", OpKind::Attr)),
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;

        let mut live = BTreeMap::new();
        let mut next = 1;
        assert_eq!(apply_records(&bytes, &mut live, &mut next), first);
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn incompatible_version_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&99u32.to_le_bytes());
        bytes.push(KIND_LOG);
        fs::write(dir.path().join(segment_name(1)), bytes).unwrap();

        let err = Journal::open(dir.path(), JournalSync::Always)
            .err()
            .expect("must be rejected");
        let message = err.to_string();
        assert!(message.contains("format 99"), "{message}");
        assert!(message.contains("incompatible"), "{message}");
    }

    /// A killed daemon leaves its written records in the page cache: a new daemon replays
    /// them although the journal was never closed nor synced on purpose.
    #[test]
    fn background_records_replay_without_close() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        let first = journal.append(1, &Op::new("a", OpKind::Mkdir)).unwrap();
        let second = journal.append(2, &rename("a", "b")).unwrap();
        journal.done(1);
        journal.wait(first).unwrap();
        journal.wait(second).unwrap();

        let (_, replay, _) = read_segments(dir.path()).unwrap();
        assert_eq!(replay.pending, vec![(2, rename("a", "b"))]);
        journal.close();
    }

    /// Appenders on several threads, done marks and compactions interleave; what replays is
    /// exactly what was not marked done, before and after close.
    #[test]
    fn concurrent_background_appends_replay_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        let long_path = "d/".repeat(1500);
        let threads: Vec<_> = (0..4u64)
            .map(|thread| {
                let journal = journal.clone();
                let long_path = long_path.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..3000u64 {
                        let seq = 1 + thread + 4 * i;
                        let batch = journal
                            .append(seq, &Op::new(long_path.as_str(), OpKind::Attr))
                            .unwrap();
                        journal.wait(batch).unwrap();
                        if i % 7 == 0 {
                            kept.push(seq);
                        } else {
                            journal.done(seq);
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        kept.sort_unstable();
        journal.sync();
        assert!(
            journal.inner.lock().last_snapshot_bytes > 0,
            "the test must cover compaction"
        );

        // Read what a killed daemon leaves (a second journal must not run beside the first).
        let (_, replay, _) = read_segments(dir.path()).unwrap();
        let replayed: Vec<u64> = replay.pending.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            replayed, kept,
            "replay while the first journal is still open"
        );
        journal.close();
        let (journal, replay) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        let replayed: Vec<u64> = replay.pending.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(replayed, kept, "replay after close");
        journal.close();
    }

    #[test]
    fn unclosed_background_journal_of_another_boot_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        journal.append(1, &Op::new("a", OpKind::Attr)).unwrap();
        // The machine crashed (the journal stays open) and the daemon starts on a new boot.
        let owner = dir.path().join("owner");
        let text = fs::read_to_string(&owner).unwrap();
        assert!(text.contains("state=open"), "{text}");
        let boot = text.lines().find(|l| l.starts_with("boot=")).unwrap();
        fs::write(&owner, text.replace(boot, "boot=another-boot")).unwrap();

        let (second, replay) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        assert!(replay.records_may_be_lost);
        second.close();
        let (third, replay) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        assert!(!replay.records_may_be_lost, "a closed journal lost nothing");
        third.close();
        journal.close();

        // In always mode every record was durable before its change, whatever crashed.
        let (journal, _) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        let text = fs::read_to_string(&owner).unwrap();
        let boot = text.lines().find(|l| l.starts_with("boot=")).unwrap();
        fs::write(&owner, text.replace(boot, "boot=another-boot")).unwrap();
        let (second, replay) = Journal::open(dir.path(), JournalSync::Background).unwrap();
        assert!(!replay.records_may_be_lost);
        second.close();
        journal.close();
    }

    #[test]
    fn compaction_keeps_only_pending_operations() {
        compaction_keeps_only_pending_operations_in(JournalSync::Always);
        compaction_keeps_only_pending_operations_in(JournalSync::Background);
    }

    fn compaction_keeps_only_pending_operations_in(sync: JournalSync) {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), sync).unwrap();
        let long_path = "d/".repeat(1000);
        let mut seq = 1;
        // Write well over the compaction threshold, leaving one operation pending.
        let kept = journal
            .append(seq, &Op::new("pending", OpKind::Attr))
            .unwrap();
        journal.wait(kept).unwrap();
        for _ in 0..20 {
            if journal.inner.lock().last_snapshot_bytes > 0 {
                break;
            }
            for _ in 0..1000 {
                seq += 1;
                journal
                    .append(seq, &Op::new(long_path.as_str(), OpKind::Attr))
                    .unwrap();
                journal.done(seq);
            }
            let batch = journal
                .append(seq + 1, &Op::new("tick", OpKind::Attr))
                .unwrap();
            seq += 1;
            journal.done(seq);
            journal.wait(batch).unwrap();
        }
        assert!(
            journal.inner.lock().last_snapshot_bytes > 0,
            "writing 40 MB never compacted the journal ({sync:?})"
        );
        let batch = journal
            .append(seq + 1, &Op::new("last", OpKind::Attr))
            .unwrap();
        journal.wait(batch).unwrap();
        journal.close();

        let total: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            total < 4 << 20,
            "journal still holds {total} bytes after compaction"
        );
        let (journal, replay) = Journal::open(dir.path(), JournalSync::Always).unwrap();
        let paths: Vec<PathBuf> = replay.pending.iter().map(|(_, o)| o.path.clone()).collect();
        assert_eq!(paths, vec![PathBuf::from("pending"), PathBuf::from("last")]);
        journal.close();
    }
}
