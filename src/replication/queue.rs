//! The ordered queue of changes for the remote tree, with per-path ordering.
//!
//! A change enters the queue in two steps. `begin` records it (in the durable journal, when
//! one is attached) before the local change is made, and holds it so no worker applies it yet;
//! `commit` releases it once the local change succeeded, `abort` drops it when it failed.
//! Writes to a file that already has a queued, not yet started copy join that entry instead.
//!
//! Operations on unrelated paths run concurrently. An operation waits while any earlier
//! operation, queued or running, touches the same path, one of its ancestors or one of its
//! descendants, so a directory is created before its children and a write reaches the remote
//! before the rename or unlink that follows it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use std::sync::Arc;

use super::journal::{Batch, Journal};
use super::op::{is_within, paths_overlap, rebase, Op, OpKind, RangeSet};

/// How many queued operations a worker examines when looking for one it may run. Bounds the
/// cost of a dispatch when a long chain of operations waits on one slow path.
const DISPATCH_WINDOW: usize = 256;

const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The last remote error of an operation, kept for the sync-state attributes.
#[derive(Clone, Debug)]
pub struct FailedAttempt {
    pub message: String,
    pub at: SystemTime,
}

#[derive(Debug)]
struct Entry {
    op: Op,
    /// Begun but not committed: the local change is still being made.
    held: bool,
    /// Callers that joined this entry and are still making their local change.
    pins: u32,
    /// For a rename: copies, onto the new name, of the operations below the old name that
    /// were running when the rename began. They may finish before the rename is committed and
    /// find the old name gone, so they are queued again after the rename.
    moves: Vec<Op>,
    in_flight: bool,
    /// The journal batch that makes this entry's record durable (`None` once replayed), which
    /// a change joining the entry must wait for too before making its local change.
    batch: Option<Batch>,
    /// Set after a failed attempt: the entry is not run again before this instant.
    retry_at: Option<Instant>,
    attempts: u32,
    last_error: Option<FailedAttempt>,
    /// Senders of callers that wait for this operation (sync mode, fsync).
    waiters: Vec<Sender<()>>,
    enqueued_at: Instant,
}

#[derive(Default)]
struct Inner {
    /// How long a fresh state transfer waits before it may run, so that the writes, chmods
    /// and utimes that usually follow a create join it instead of each costing a journal
    /// record and a remote call.
    coalesce_window: Duration,
    entries: BTreeMap<u64, Entry>,
    journal: Option<Arc<Journal>>,
    /// Sequence numbers of the queued operations that touch each exact path, oldest first.
    by_path: HashMap<PathBuf, Vec<u64>>,
    next_seq: u64,
    shutdown: bool,
}

/// Queue-wide figures for the mount root's attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub ops: usize,
    /// Bytes of the queued data ranges with a known end (whole-file copies count 0).
    pub bytes: u64,
    pub in_flight: usize,
    pub failing: usize,
    pub oldest_age: Duration,
}

/// Queued work for one path and everything below it.
#[derive(Clone, Debug, Default)]
pub struct PathSummary {
    pub ops: usize,
    pub in_flight: usize,
    pub data_ranges: Vec<RangeSet>,
    pub last_error: Option<FailedAttempt>,
}

/// A handle to wait for one queued operation.
pub struct Ticket(Receiver<()>);

impl Ticket {
    /// Waits up to `timeout`; returns whether the operation reached the remote.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.0.recv_timeout(timeout).is_ok()
    }
}

/// A change recorded by `begin`, to be committed or aborted.
#[derive(Debug)]
pub struct Begun {
    seq: u64,
    /// Whether the change joined an entry that was queued before.
    joined: bool,
    /// The journal batch to wait on before making the local change.
    pub batch: Option<Batch>,
}

#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    /// Signalled when an operation may have become runnable.
    work: Condvar,
    /// Signalled when the queue becomes empty.
    idle: Condvar,
}

impl Inner {
    fn index(&mut self, seq: u64, op: &Op) {
        self.by_path.entry(op.path.clone()).or_default().push(seq);
        if let Some(second) = op.second_path() {
            self.by_path
                .entry(second.to_path_buf())
                .or_default()
                .push(seq);
        }
    }

    fn unindex(&mut self, seq: u64, op: &Op) {
        let mut drop_seq = |path: &Path| {
            if let Some(list) = self.by_path.get_mut(path) {
                list.retain(|&s| s != seq);
                if list.is_empty() {
                    self.by_path.remove(path);
                }
            }
        };
        drop_seq(&op.path);
        if let Some(second) = op.second_path() {
            drop_seq(second);
        }
    }

    fn insert(&mut self, op: Op, held: bool) -> (u64, Option<Batch>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = self.journal_append(seq, &op);
        self.insert_at(seq, op, held);
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.batch = batch;
        }
        (seq, batch)
    }

    /// Appends to the journal; a failed append surfaces when the caller waits on the batch.
    fn journal_append(&self, seq: u64, op: &Op) -> Option<Batch> {
        let journal = self.journal.as_ref()?;
        match journal.append(seq, op) {
            Ok(batch) => Some(batch),
            Err(err) => {
                tracing::error!(seq, path = %op.path.display(), error = %err, "journal append failed");
                Some(Batch::FAILED)
            }
        }
    }

    fn insert_at(&mut self, seq: u64, op: Op, held: bool) {
        self.index(seq, &op);
        self.entries.insert(
            seq,
            Entry {
                op,
                held,
                pins: 0,
                moves: Vec::new(),
                in_flight: false,
                batch: None,
                retry_at: None,
                attempts: 0,
                last_error: None,
                waiters: Vec::new(),
                enqueued_at: Instant::now(),
            },
        );
    }

    /// Removes an entry and marks it done in the journal.
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.unindex(seq, &entry.op);
        if let Some(journal) = &self.journal {
            journal.done(seq);
        }
        Some(entry)
    }

    /// Folds a state-transfer operation into the last queued one for the same path, when
    /// that one has not started and its journal record already covers the new change (a
    /// replayed data record copies the whole file), and pins it until the caller commits.
    fn coalesce(&mut self, op: &Op) -> Option<(u64, Option<Batch>)> {
        let seq = *self.by_path.get(&op.path)?.last()?;
        let entry = self.entries.get_mut(&seq)?;
        if entry.in_flight || entry.op.path != op.path {
            return None;
        }

        match (&mut entry.op.kind, &op.kind) {
            (OpKind::Data(existing), OpKind::Data(added)) => existing.merge(added),
            (OpKind::Data(_), OpKind::Attr) => {}
            (OpKind::Attr, OpKind::Attr) => {}
            (OpKind::Mkdir | OpKind::Mknod | OpKind::Symlink, OpKind::Attr) => {}
            (OpKind::Xattr(existing), OpKind::Xattr(added)) if existing == added => {}
            _ => return None,
        }
        entry.pins += 1;
        Some((seq, entry.batch))
    }

    /// Returns the queued state transfers below a path that is being renamed away, rebased
    /// onto the new name so they are applied after the rename. Also returns the numbers of the
    /// originals that may be dropped: those not running, held or pinned. Data of a moved file
    /// is copied whole, because the old name may be reused before the rename applies.
    fn moved_below(&self, from: &Path, to: &Path, rename_seq: u64) -> (Vec<Op>, Vec<u64>) {
        let mut moved = Vec::new();
        let mut dropped = Vec::new();
        for (&seq, entry) in self.entries.range(..rename_seq) {
            if !is_within(&entry.op.path, from) || entry.op.second_path().is_some() {
                continue;
            }
            let Some(follow_up) = moved_copy(&entry.op, from, to) else {
                continue;
            };
            if !entry.in_flight && !entry.held && entry.pins == 0 {
                dropped.push(seq);
            }
            moved.push(follow_up);
        }
        (moved, dropped)
    }

    /// Queues the follow-ups of a rename whose local part is done: the state transfers
    /// below its old name move to the new one. The follow-ups are journaled before the
    /// originals are marked done, so a crash between the two journal writes replays one or
    /// both, never neither.
    fn move_below_rename(&mut self, rename_seq: u64, mut follow_ups: Vec<Op>) {
        let Some(entry) = self.entries.get(&rename_seq) else {
            return;
        };
        let OpKind::Rename { to, flags } = &entry.op.kind else {
            return;
        };
        let (from, to, flags) = (entry.op.path.clone(), to.clone(), *flags);
        let (moved, mut dropped) = self.moved_below(&from, &to, rename_seq);
        follow_ups.extend(moved);
        if flags & libc::RENAME_EXCHANGE != 0 {
            let (moved, also_dropped) = self.moved_below(&to, &from, rename_seq);
            follow_ups.extend(moved);
            dropped.extend(also_dropped);
        }
        let mut queued: Vec<Op> = Vec::with_capacity(follow_ups.len());
        for follow_up in follow_ups {
            if !queued.contains(&follow_up) {
                queued.push(follow_up.clone());
                self.insert(follow_up, false);
            }
        }
        for seq in dropped {
            self.remove(seq);
        }
    }

    /// Returns the moved copies of the operations below `from` that are running now.
    fn running_moves(&self, from: &Path, to: &Path) -> Vec<Op> {
        self.entries
            .values()
            .filter(|e| e.in_flight)
            .filter_map(|e| moved_copy(&e.op, from, to))
            .collect()
    }
}

impl Queue {
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Creates a queue that records every change in `journal`, continuing its sequence
    /// numbers after `next_seq`.
    pub fn with_journal(journal: Arc<Journal>, next_seq: u64) -> Queue {
        let queue = Queue::default();
        {
            let mut inner = queue.inner.lock();
            inner.journal = Some(journal);
            inner.next_seq = next_seq;
        }
        queue
    }

    /// Sets how long fresh state transfers wait for more changes to join them.
    pub fn set_coalesce_window(&self, window: Duration) {
        self.inner.lock().coalesce_window = window;
    }

    /// Queues again an operation replayed from the journal, under its original number.
    pub fn restore(&self, seq: u64, op: Op) {
        let mut inner = self.inner.lock();
        inner.next_seq = inner.next_seq.max(seq + 1);
        inner.insert_at(seq, op, false);
        drop(inner);
        self.work.notify_all();
    }

    /// Moves the replayed state transfers below each replayed rename's old name onto the new
    /// name, as the rename's commit would have done. The crash may have come between the local
    /// rename and that commit, and the remote's old name may still contain stale content.
    pub fn restore_renames(&self) {
        let mut inner = self.inner.lock();
        let renames: Vec<u64> = inner
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.op.kind, OpKind::Rename { .. }))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in renames {
            inner.move_below_rename(seq, Vec::new());
        }
        drop(inner);
        self.work.notify_all();
    }

    /// Records a change before its local part is made; no worker applies it before `commit`.
    pub fn begin(&self, op: Op) -> Begun {
        let mut inner = self.inner.lock();
        let joined = match &op.kind {
            OpKind::Data(_) | OpKind::Attr | OpKind::Xattr(_) => inner.coalesce(&op),
            _ => None,
        };
        // The joining caller waits for the entry's own record: until it is durable, a crash
        // would lose the entry and with it the joined change.
        if let Some((seq, batch)) = joined {
            return Begun {
                seq,
                joined: true,
                batch,
            };
        }

        let moves = match &op.kind {
            OpKind::Rename { to, flags } => {
                let mut moves = inner.running_moves(&op.path, to);
                if flags & libc::RENAME_EXCHANGE != 0 {
                    moves.extend(inner.running_moves(to, &op.path));
                }
                moves
            }
            _ => Vec::new(),
        };
        let (seq, batch) = inner.insert(op, true);
        if let Some(entry) = inner.entries.get_mut(&seq) {
            entry.moves = moves;
        }
        Begun {
            seq,
            joined: false,
            batch,
        }
    }

    /// Releases a change whose local part succeeded and returns a ticket to wait for it.
    pub fn commit(&self, begun: Begun) -> Ticket {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut inner = self.inner.lock();
        let window = inner.coalesce_window;
        let rename_moves = inner.entries.get_mut(&begun.seq).and_then(|entry| {
            if begun.joined {
                entry.pins = entry.pins.saturating_sub(1);
            } else {
                entry.held = false;
                if !window.is_zero()
                    && matches!(
                        entry.op.kind,
                        OpKind::Data(_) | OpKind::Attr | OpKind::Xattr(_)
                    )
                {
                    entry.retry_at = Some(Instant::now() + window);
                }
            }
            entry.waiters.push(tx);
            match &entry.op.kind {
                OpKind::Rename { .. } if !begun.joined => Some(std::mem::take(&mut entry.moves)),
                _ => None,
            }
        });
        if let Some(running) = rename_moves {
            inner.move_below_rename(begun.seq, running);
        }
        drop(inner);
        // One worker is enough: it takes the change or sleeps until its coalesce window
        // ends, and a worker that takes a change wakes the next one.
        self.work.notify_one();
        Ticket(rx)
    }

    /// Drops a change whose local part failed. An entry that others joined stays queued,
    /// because their local changes did happen.
    pub fn abort(&self, begun: Begun) {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.entries.get_mut(&begun.seq) else {
            return;
        };
        if begun.joined {
            entry.pins = entry.pins.saturating_sub(1);
        } else if entry.pins > 0 {
            entry.held = false;
        } else {
            inner.remove(begun.seq);
        }
        drop(inner);
        self.work.notify_one();
    }

    /// Queues a change that has no local part left to make and returns a ticket for it.
    pub fn push(&self, op: Op) -> Ticket {
        let begun = self.begin(op);
        self.commit(begun)
    }

    /// Blocks until an operation may run and marks it running; `None` after shutdown.
    pub fn next(&self) -> Option<(u64, Op)> {
        let mut inner = self.inner.lock();
        loop {
            if inner.shutdown {
                return None;
            }

            let now = Instant::now();
            let mut earliest_retry: Option<Instant> = None;
            let mut chosen = None;
            let window: Vec<(u64, &Entry)> = inner
                .entries
                .iter()
                .take(DISPATCH_WINDOW)
                .map(|(&s, e)| (s, e))
                .collect();

            for (i, (seq, entry)) in window.iter().enumerate() {
                if entry.in_flight || entry.held || entry.pins > 0 {
                    continue;
                }
                if let Some(at) = entry.retry_at {
                    if at > now {
                        earliest_retry = Some(earliest_retry.map_or(at, |e| e.min(at)));
                        continue;
                    }
                }
                // A rename whose local part is in progress blocks every operation on its
                // paths, even earlier ones: they would read the local tree mid-rename.
                let blocked = window[..i]
                    .iter()
                    .any(|(_, earlier)| ops_conflict(&earlier.op, &entry.op))
                    || window[i + 1..].iter().any(|(_, later)| {
                        later.held
                            && matches!(later.op.kind, OpKind::Rename { .. })
                            && ops_conflict(&later.op, &entry.op)
                    });
                if !blocked {
                    chosen = Some(*seq);
                    break;
                }
            }

            if let Some(seq) = chosen {
                let entry = inner.entries.get_mut(&seq).expect("chosen entry exists");
                entry.in_flight = true;
                let op = entry.op.clone();
                if inner.entries.len() > 1 {
                    // Another change may be runnable too.
                    self.work.notify_one();
                }
                return Some((seq, op));
            }

            match earliest_retry {
                Some(at) => {
                    self.work.wait_until(&mut inner, at);
                }
                None => self.work.wait(&mut inner),
            }
        }
    }

    /// Records the result of running an operation. On success it leaves the queue and its
    /// waiters are released. On failure it is retried later, with exponential backoff.
    pub fn finish(&self, seq: u64, result: Result<(), String>) -> Option<Duration> {
        let mut inner = self.inner.lock();
        let retry = match result {
            Ok(()) => {
                if let Some(entry) = inner.remove(seq) {
                    for waiter in entry.waiters {
                        let _ = waiter.try_send(());
                    }
                }
                None
            }
            Err(message) => inner.entries.get_mut(&seq).map(|entry| {
                entry.in_flight = false;
                entry.attempts += 1;
                let delay = backoff(entry.attempts);
                entry.retry_at = Some(Instant::now() + delay);
                entry.last_error = Some(FailedAttempt {
                    message,
                    at: SystemTime::now(),
                });
                delay
            }),
        };

        let empty = inner.entries.is_empty();
        drop(inner);
        self.work.notify_all();
        if empty {
            self.idle.notify_all();
        }
        retry
    }

    /// Waits until the queue is empty or `timeout` passes; returns whether it emptied.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock();
        while !inner.entries.is_empty() {
            if self.idle.wait_until(&mut inner, deadline).timed_out() {
                return inner.entries.is_empty();
            }
        }
        true
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner.lock().shutdown
    }

    /// Stops handing out operations; workers blocked in `next` return `None`.
    pub fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.work.notify_all();
    }

    /// Whether a queued operation removes `path` or one of its ancestors from the remote, so
    /// the remote entry there must not be shown (it is deleted or renamed away).
    pub fn hides_remote(&self, path: &Path) -> bool {
        let inner = self.inner.lock();
        let mut current = Some(path);
        while let Some(p) = current {
            if p.as_os_str().is_empty() {
                break;
            }
            // A held entry's local change is still being made, so it does not count yet.
            let last = inner.by_path.get(p).and_then(|list| {
                list.iter()
                    .rev()
                    .filter_map(|seq| inner.entries.get(seq))
                    .find(|entry| !entry.held)
            });
            if let Some(entry) = last {
                if entry.op.removes(p) {
                    return true;
                }
            }
            current = p.parent();
        }
        false
    }

    pub fn summary(&self) -> QueueSummary {
        let inner = self.inner.lock();
        let now = Instant::now();
        QueueSummary {
            ops: inner.entries.len(),
            bytes: inner
                .entries
                .values()
                .filter_map(|e| match &e.op.kind {
                    OpKind::Data(ranges) => Some(ranges.known_bytes()),
                    _ => None,
                })
                .sum(),
            in_flight: inner.entries.values().filter(|e| e.in_flight).count(),
            failing: inner
                .entries
                .values()
                .filter(|e| e.last_error.is_some())
                .count(),
            oldest_age: inner
                .entries
                .values()
                .next()
                .map_or(Duration::ZERO, |e| now - e.enqueued_at),
        }
    }

    /// Summarizes the queued operations on `path` and below it.
    pub fn path_summary(&self, path: &Path) -> PathSummary {
        let inner = self.inner.lock();
        let mut summary = PathSummary::default();
        for entry in inner.entries.values() {
            let touches = is_within(&entry.op.path, path)
                || entry.op.second_path().is_some_and(|p| is_within(p, path));
            if !touches {
                continue;
            }
            summary.ops += 1;
            if entry.in_flight {
                summary.in_flight += 1;
            }
            if let OpKind::Data(ranges) = &entry.op.kind {
                if entry.op.path == path {
                    summary.data_ranges.push(ranges.clone());
                }
            }
            if entry.last_error.is_some() {
                summary.last_error = entry.last_error.clone();
            }
        }
        summary
    }
}

/// Returns the copy of `op` that must follow a rename of `from` to `to`, if `op` lies below
/// `from` and transfers state. Data is copied whole, because the old name may be reused
/// before the rename reaches the remote.
fn moved_copy(op: &Op, from: &Path, to: &Path) -> Option<Op> {
    if op.second_path().is_some() {
        return None;
    }
    let path = rebase(&op.path, from, to)?;
    let kind = match &op.kind {
        OpKind::Data(_) => OpKind::Data(RangeSet::everything()),
        OpKind::Attr => OpKind::Attr,
        OpKind::Xattr(name) => OpKind::Xattr(name.clone()),
        _ => return None,
    };
    Some(Op::new(path, kind))
}

fn ops_conflict(a: &Op, b: &Op) -> bool {
    let a_paths = [Some(a.path.as_path()), a.second_path()];
    let b_paths = [Some(b.path.as_path()), b.second_path()];
    a_paths
        .iter()
        .flatten()
        .any(|pa| b_paths.iter().flatten().any(|pb| paths_overlap(pa, pb)))
}

/// Exponential backoff with jitter, capped at `RETRY_MAX`.
fn backoff(attempts: u32) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << attempts.min(10));
    let capped = exp.min(RETRY_MAX);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = capped.mul_f64(0.5 * (nanos % 1000) as f64 / 1000.0);
    capped / 2 + jitter
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn data(path: &str, start: u64, len: u64) -> Op {
        Op::new(path, OpKind::Data(RangeSet::single(start, len)))
    }

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
    fn unrelated_paths_run_concurrently() {
        let queue = Queue::new();
        queue.push(data("a", 0, 1));
        queue.push(data("b", 0, 1));
        let (first, _) = queue.next().unwrap();
        let (second, op) = queue.next().unwrap();
        assert_ne!(first, second);
        assert_eq!(op.path, PathBuf::from("b"));
    }

    #[test]
    fn child_waits_for_parent_mkdir() {
        let queue = Queue::new();
        queue.push(Op::new("d", OpKind::Mkdir));
        queue.push(data("d/f", 0, 1));
        queue.push(data("e", 0, 1));
        let (mkdir, _) = queue.next().unwrap();
        let (_, op) = queue.next().unwrap();
        assert_eq!(op.path, PathBuf::from("e"), "d/f must wait for mkdir d");
        queue.finish(mkdir, Ok(()));
        let (_, op) = queue.next().unwrap();
        assert_eq!(op.path, PathBuf::from("d/f"));
    }

    #[test]
    fn writes_to_one_file_coalesce() {
        let queue = Queue::new();
        queue.push(data("f", 0, 10));
        queue.push(data("f", 10, 10));
        queue.push(Op::new("f", OpKind::Attr));
        assert_eq!(queue.summary().ops, 1);
        let (_, op) = queue.next().unwrap();
        assert_eq!(op.kind, OpKind::Data(RangeSet::single(0, 20)));
    }

    #[test]
    fn rename_moves_pending_data_after_it() {
        let queue = Queue::new();
        queue.push(data("a", 0, 10));
        queue.push(Op::new(
            "a",
            OpKind::Rename {
                to: PathBuf::from("b"),
                flags: 0,
            },
        ));
        let (rename, op) = queue.next().unwrap();
        assert_eq!(op.name(), "rename");
        queue.finish(rename, Ok(()));
        let (_, op) = queue.next().unwrap();
        assert_eq!(op, Op::new("b", OpKind::Data(RangeSet::everything())));
    }

    #[test]
    fn replayed_rename_moves_data_replayed_before_it() {
        // The crash came after the local rename but before its commit queued the follow-up.
        let queue = Queue::new();
        queue.restore(5, data("a", 0, 10));
        queue.restore(6, rename("a", "b"));
        queue.restore_renames();
        let (rename_seq, op) = queue.next().unwrap();
        assert_eq!(
            op,
            rename("a", "b"),
            "the data of a must not be copied first"
        );
        queue.finish(rename_seq, Ok(()));
        let (data_seq, op) = queue.next().unwrap();
        assert_eq!(op, Op::new("b", OpKind::Data(RangeSet::everything())));
        queue.finish(data_seq, Ok(()));
        assert_eq!(queue.summary().ops, 0);
    }

    /// Replays every prefix of the journal a rename commit writes, as a crash at any byte
    /// would leave it: the data change queued before the rename is always replayed, under
    /// the old or the new name.
    #[test]
    fn rename_follow_up_journaled_first() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        let (journal, _) =
            Journal::open(&journal_dir, super::super::journal::JournalSync::Always).unwrap();
        let queue = Queue::with_journal(journal.clone(), 1);
        queue.push(data("a", 0, 10));
        let begun = queue.begin(rename("a", "b"));
        queue.commit(begun);
        journal.close();

        let segment = super::super::journal::newest_segment(&journal_dir);
        let bytes = fs::read(&segment).unwrap();
        for cut in 0..=bytes.len() {
            let copy = dir.path().join(format!("cut{cut}"));
            fs::create_dir(&copy).unwrap();
            fs::write(copy.join(segment.file_name().unwrap()), &bytes[..cut]).unwrap();
            let Ok((journal, replay)) =
                Journal::open(&copy, super::super::journal::JournalSync::Always)
            else {
                continue; // cut inside the header: the segment is not a journal yet
            };
            journal.close();
            let has_data = replay
                .pending
                .iter()
                .any(|(_, op)| matches!(op.kind, OpKind::Data(_)));
            assert!(
                has_data || replay.pending.is_empty(),
                "a crash after {cut} of {} journal bytes loses the data change: {:?}",
                bytes.len(),
                replay.pending
            );
            fs::remove_dir_all(&copy).unwrap();
        }
    }

    #[test]
    fn rename_requeues_data_that_ran_during_it() {
        let queue = Queue::new();
        queue.push(data("tmp", 0, 10));
        let (data_seq, _) = queue.next().unwrap();

        // The rename begins while the copy of tmp runs, and the copy finishes before the
        // rename is committed (it found tmp gone locally and skipped).
        let rename = queue.begin(Op::new(
            "tmp",
            OpKind::Rename {
                to: PathBuf::from("final"),
                flags: 0,
            },
        ));
        queue.finish(data_seq, Ok(()));
        queue.commit(rename);

        let (rename_seq, op) = queue.next().unwrap();
        assert_eq!(op.name(), "rename");
        queue.finish(rename_seq, Ok(()));
        let (_, op) = queue.next().unwrap();
        assert_eq!(op, Op::new("final", OpKind::Data(RangeSet::everything())));
    }

    #[test]
    fn held_rename_blocks_earlier_operations_on_its_path() {
        let queue = Queue::new();
        queue.push(data("tmp", 0, 10));
        queue.push(data("other", 0, 10));
        let rename = queue.begin(Op::new(
            "tmp",
            OpKind::Rename {
                to: PathBuf::from("final"),
                flags: 0,
            },
        ));
        let (_, op) = queue.next().unwrap();
        assert_eq!(
            op.path,
            PathBuf::from("other"),
            "tmp must wait for the rename"
        );
        queue.commit(rename);
        let (_, op) = queue.next().unwrap();
        assert_eq!(
            op.name(),
            "rename",
            "the pending copy of tmp moved after the rename"
        );
    }

    #[test]
    fn coalesce_window_lets_following_writes_join() {
        let queue = Queue::new();
        queue.set_coalesce_window(Duration::from_millis(50));
        queue.push(data("f", 0, 10));
        let begun = queue.begin(data("f", 10, 10));
        assert!(
            begun.joined,
            "a write within the window joins the queued copy"
        );
        queue.commit(begun);
        queue.push(Op::new("f", OpKind::Attr));
        assert_eq!(queue.summary().ops, 1);

        let started = Instant::now();
        let (_, op) = queue.next().unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "dispatched before the window"
        );
        assert_eq!(op.kind, OpKind::Data(RangeSet::single(0, 20)));
    }

    #[test]
    fn queued_unlink_hides_remote_entry() {
        let queue = Queue::new();
        queue.push(Op::new("d/f", OpKind::Unlink));
        assert!(queue.hides_remote(Path::new("d/f")));
        assert!(!queue.hides_remote(Path::new("d")));
        queue.push(Op::new("d", OpKind::Rmdir));
        assert!(queue.hides_remote(Path::new("d/g")));
    }

    #[test]
    fn failed_operation_blocks_dependents_until_retry() {
        let queue = Queue::new();
        queue.push(data("f", 0, 1));
        queue.push(Op::new("f", OpKind::Unlink));
        let (seq, _) = queue.next().unwrap();
        let delay = queue.finish(seq, Err("EIO".into())).unwrap();
        assert!(delay <= RETRY_MAX);
        assert_eq!(queue.path_summary(Path::new("f")).ops, 2);
        assert!(queue.path_summary(Path::new("f")).last_error.is_some());
    }

    #[test]
    fn ticket_released_on_success() {
        let queue = Queue::new();
        let ticket = queue.push(data("f", 0, 1));
        let (seq, _) = queue.next().unwrap();
        queue.finish(seq, Ok(()));
        assert!(ticket.wait(Duration::from_millis(10)));
        assert!(queue.wait_idle(Duration::from_millis(10)));
    }
}
