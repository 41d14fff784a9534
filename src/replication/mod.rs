//! Mirroring local changes into the remote tree: the queue, the workers that apply it, and
//! the per-path sync records behind the `user.dualfs.*` attributes.

pub mod apply;
pub mod health;
pub mod journal;
pub mod op;
pub mod queue;
pub mod remote_call;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;

use nix::errno::Errno;

use crate::backend::Backend;
use apply::Applier;
use health::{Failure, Health, RemoteHealth};
use journal::{Journal, JournalError, JournalSync};
pub use op::{Op, OpKind, RangeSet};
use queue::Queue;
pub use queue::{PathSummary, QueueSummary};
use remote_call::RemoteCaller;

/// When a change is acknowledged to the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Wait for the remote too, up to the remote timeout.
    Sync,
    /// Return after the local change; the remote follows.
    Async,
}

#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    pub mode: Mode,
    /// How long a call waits for the remote in sync mode before leaving the change queued.
    pub remote_timeout: Duration,
    pub workers: usize,
    pub mirror_owner: bool,
    /// Threads for remote lookups, listings and reads made on behalf of FUSE requests.
    pub remote_call_threads: usize,
    /// In async mode, how long a fresh state transfer waits for following changes to join it.
    pub coalesce_window: Duration,
    /// Whether a change waits for its journal record to be durable or only written.
    pub journal_sync: JournalSync,
}

/// How often the monitor looks for hung remote applies and probes a down remote.
const MONITOR_INTERVAL: Duration = Duration::from_millis(500);

/// How many paths keep a record of their last remote apply and error.
const SYNC_RECORDS: usize = 65_536;

/// The outcome of the last remote apply for one path.
#[derive(Clone, Debug, Default)]
pub struct SyncRecord {
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
}

pub struct Replicator {
    queue: Arc<Queue>,
    journal: Option<Arc<Journal>>,
    health: Arc<RemoteHealth>,
    caller: RemoteCaller,
    config: ReplicationConfig,
    records: Arc<Mutex<LruCache<PathBuf, SyncRecord>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Replicator {
    /// Opens the journal in `journal_dir`, queues again what it still holds, and starts the
    /// worker threads that apply queued changes to the remote tree.
    pub fn start(
        local: Arc<Backend>,
        remote: Arc<Backend>,
        config: ReplicationConfig,
        journal_dir: &Path,
    ) -> Result<Replicator, JournalError> {
        let (journal, replay) = Journal::open(journal_dir, config.journal_sync)?;
        let queue = Arc::new(Queue::with_journal(journal.clone(), replay.next_seq));
        // In sync mode every call waits for its remote apply, so nothing may wait on purpose.
        if config.mode == Mode::Async {
            queue.set_coalesce_window(config.coalesce_window);
        }
        let replayed = replay.pending.len();
        // A replayed change may have been half applied before the crash: its remote entry
        // changed but the directory times not copied yet, and a replayed state transfer that
        // finds its file already created does not copy them. The directories of every replayed
        // change get their times copied again after it.
        let mut directories = std::collections::BTreeSet::new();
        for (seq, op) in replay.pending {
            for path in [Some(op.path.as_path()), op.second_path()]
                .into_iter()
                .flatten()
            {
                directories.insert(path.parent().unwrap_or(Path::new("")).to_path_buf());
            }
            queue.restore(seq, op);
        }
        queue.restore_renames();
        for directory in directories {
            queue.push(Op::new(directory, OpKind::Attr));
        }
        if replay.records_may_be_lost {
            tracing::warn!(
                journal = %journal_dir.display(),
                "the previous daemon did not close the journal and the machine has restarted since; \
                 its last records may not have reached the disk, so both trees are compared in the background"
            );
            spawn_reconcile(
                local.clone(),
                remote.clone(),
                queue.clone(),
                config.mirror_owner,
            )
            .map_err(|source| JournalError::Io {
                path: journal_dir.to_path_buf(),
                source,
            })?;
        }
        tracing::info!(
            replayed,
            truncated_bytes = replay.truncated_bytes,
            journal = %journal_dir.display(),
            "journal replayed"
        );
        Self::start_with_queue(local, remote, config, queue, Some(journal)).map_err(|source| {
            JournalError::Io {
                path: journal_dir.to_path_buf(),
                source,
            }
        })
    }

    fn start_with_queue(
        local: Arc<Backend>,
        remote: Arc<Backend>,
        config: ReplicationConfig,
        queue: Arc<Queue>,
        journal: Option<Arc<Journal>>,
    ) -> std::io::Result<Replicator> {
        let records = Arc::new(Mutex::new(LruCache::new(
            NonZeroUsize::new(SYNC_RECORDS).expect("non-zero"),
        )));
        let health = Arc::new(RemoteHealth::new());
        let caller = RemoteCaller::start(
            remote.clone(),
            health.clone(),
            config.remote_call_threads.max(1),
            config.remote_timeout,
        )?;

        let mut workers = Vec::new();
        let mut busy_slots = Vec::new();
        let time_locks = Arc::new(apply::TimeLocks::default());
        for i in 0..config.workers.max(1) {
            let busy = Arc::new(Mutex::new(None));
            busy_slots.push(busy.clone());
            let worker = Worker {
                queue: queue.clone(),
                local: local.clone(),
                remote: remote.clone(),
                records: records.clone(),
                health: health.clone(),
                busy,
                time_locks: time_locks.clone(),
                mirror_owner: config.mirror_owner,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("replicate-{i}"))
                    .spawn(move || worker.run())?,
            );
        }

        let monitor = Monitor {
            queue: queue.clone(),
            remote: remote.clone(),
            health: health.clone(),
            busy_slots,
            deadline: config.remote_timeout,
        };
        std::thread::Builder::new()
            .name("remote-monitor".into())
            .spawn(move || monitor.run())?;

        Ok(Replicator {
            queue,
            journal,
            health,
            caller,
            config,
            records,
            workers: Mutex::new(workers),
        })
    }

    pub fn health(&self) -> Health {
        self.health.get()
    }

    /// The bounded, deadline-limited pool for remote calls made on behalf of requests.
    pub fn remote_caller(&self) -> &RemoteCaller {
        &self.caller
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// Records `op` durably, makes the local change with `local`, and queues `op` for the
    /// remote if the local change succeeded; in sync mode then waits for the remote up to the
    /// remote timeout. The local result is the caller's result. A journal that cannot record
    /// the change fails the call with its errno (ENOSPC when the local tree is full) before
    /// anything local is changed.
    pub fn record<T>(&self, op: Op, local: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
        self.record_and_wait(op, local, self.config.mode == Mode::Sync)
    }

    fn record_and_wait<T>(
        &self,
        op: Op,
        local: impl FnOnce() -> Result<T, Errno>,
        wait: bool,
    ) -> Result<T, Errno> {
        let begun = self.queue.begin(op);
        if let (Some(journal), Some(batch)) = (&self.journal, begun.batch) {
            if let Err(errno) = journal.wait(batch) {
                self.queue.abort(begun);
                return Err(Errno::from_raw(errno));
            }
        }

        match local() {
            Ok(value) => {
                let ticket = self.queue.commit(begun);
                // A down remote is not waited for: every change goes async until it is back.
                if wait && !self.health.is_down() {
                    ticket.wait(self.config.remote_timeout);
                }
                Ok(value)
            }
            Err(errno) => {
                self.queue.abort(begun);
                Err(errno)
            }
        }
    }

    /// Queues a change that has no local part without waiting for the remote in any mode.
    pub fn enqueue(&self, op: Op) -> Result<(), Errno> {
        self.record_and_wait(op, || Ok(()), false)
    }

    /// Queues a change that has no local part (the local tree already holds it); in sync
    /// mode waits for the remote up to the remote timeout.
    pub fn submit(&self, op: Op) -> Result<(), Errno> {
        self.record(op, || Ok(()))
    }

    /// Queues a change and waits for it up to the remote timeout whatever the mode; used
    /// by fsync in sync mode.
    pub fn submit_and_wait(&self, op: Op) -> Result<(), Errno> {
        self.record_and_wait(op, || Ok(()), true)
    }

    /// Waits until every journal record written so far is durable. An application's fsync
    /// calls this, so what it made durable locally reaches the remote after any crash.
    pub fn sync_journal(&self) {
        if let Some(journal) = &self.journal {
            journal.sync();
        }
    }

    pub fn hides_remote(&self, path: &Path) -> bool {
        self.queue.hides_remote(path)
    }

    pub fn summary(&self) -> QueueSummary {
        self.queue.summary()
    }

    pub fn path_summary(&self, path: &Path) -> PathSummary {
        self.queue.path_summary(path)
    }

    pub fn sync_record(&self, path: &Path) -> SyncRecord {
        self.records.lock().get(path).cloned().unwrap_or_default()
    }

    /// Waits until everything queued has reached the remote, up to `timeout` (not at all
    /// while the remote is down), then stops the workers and closes the journal. Returns how
    /// many operations were left behind; the journal keeps them for the next start.
    pub fn shutdown(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.health.is_down() {
            if self.queue.wait_idle(MONITOR_INTERVAL) {
                break;
            }
        }
        let left = self.queue.summary().ops;
        self.queue.shutdown();

        // A worker stuck in a hung remote call cannot be joined; it ends with the process,
        // and its operation stays in the journal.
        let join_deadline = Instant::now() + Duration::from_secs(2);
        for worker in self.workers.lock().drain(..) {
            while !worker.is_finished() && Instant::now() < join_deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if worker.is_finished() {
                let _ = worker.join();
            } else {
                tracing::warn!("a replication worker is stuck in a remote call; leaving it");
            }
        }
        if let Some(journal) = &self.journal {
            journal.close();
        }
        left
    }
}

/// Compares both trees in the background and queues a fresh copy of every path that differs:
/// after a machine crash the journal may miss the changes of its last milliseconds.
fn spawn_reconcile(
    local: Arc<Backend>,
    remote: Arc<Backend>,
    queue: Arc<Queue>,
    mirror_owner: bool,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            let progress = indicatif::ProgressBar::hidden();
            let options = crate::verify::CompareOptions {
                checksum: false,
                owners: mirror_owner,
            };
            match crate::verify::Comparison::run(&local, &remote, options, &progress) {
                Ok(differences) => {
                    for (path, list) in &differences {
                        let kind = if list.iter().all(crate::verify::Difference::attributes_only) {
                            OpKind::Attr
                        } else {
                            OpKind::Resync
                        };
                        queue.push(Op::new(path.clone(), kind));
                    }
                    tracing::info!(
                        paths = differences.len(),
                        entries = progress.position(),
                        "comparison after a machine crash done; differing paths queued"
                    );
                }
                Err(err) => tracing::error!(
                    %err,
                    "comparison after a machine crash failed; run `dualfs verify` to find what the remote misses"
                ),
            }
        })
        .map(drop)
}

struct Worker {
    queue: Arc<Queue>,
    local: Arc<Backend>,
    remote: Arc<Backend>,
    records: Arc<Mutex<LruCache<PathBuf, SyncRecord>>>,
    health: Arc<RemoteHealth>,
    /// When the apply in progress started, for the monitor's hung-call detection.
    busy: Arc<Mutex<Option<Instant>>>,
    time_locks: Arc<apply::TimeLocks>,
    mirror_owner: bool,
}

impl Worker {
    fn run(self) {
        let applier = Applier {
            local: &self.local,
            remote: &self.remote,
            mirror_owner: self.mirror_owner,
            heartbeat: Some(&self.busy),
            time_locks: &self.time_locks,
        };
        loop {
            // While the remote is down, only the monitor's probe talks to it.
            while self.health.is_down() && !self.queue.is_shut_down() {
                self.health.wait_while_down(MONITOR_INTERVAL);
            }
            let Some((seq, op)) = self.queue.next() else {
                return;
            };

            let started = Instant::now();
            *self.busy.lock() = Some(started);
            let result = applier.apply(&op);
            *self.busy.lock() = None;
            let elapsed = started.elapsed();

            match result {
                Ok(()) => {
                    self.health.record_success();
                    self.record_success(&op);
                    tracing::trace!(op = op.name(), path = %op.path.display(), ?elapsed, "applied to remote");
                    self.queue.finish(seq, Ok(()));
                }
                Err(err) => {
                    if !err.step.starts_with("local") {
                        self.health.record_failure(Failure::Errno(err.errno));
                    }
                    let message = err.to_string();
                    self.record_error(&op, &message);
                    let retry_in = self.queue.finish(seq, Err(message));
                    tracing::warn!(
                        op = op.name(),
                        path = %err.path,
                        errno = %err.errno,
                        step = err.step,
                        ?retry_in,
                        "remote apply failed, change stays queued"
                    );
                }
            }
        }
    }

    fn record_success(&self, op: &Op) {
        let now = SystemTime::now();
        let mut records = self.records.lock();
        // The root's record stores when anything last reached the remote.
        let root = Some(Path::new(""));
        for path in [Some(op.path.as_path()), op.second_path(), root]
            .into_iter()
            .flatten()
        {
            records.put(
                path.to_path_buf(),
                SyncRecord {
                    last_sync: Some(now),
                    last_error: None,
                },
            );
        }
    }

    fn record_error(&self, op: &Op, message: &str) {
        let mut records = self.records.lock();
        let record = records.get_or_insert_mut(op.path.clone(), SyncRecord::default);
        record.last_error = Some(message.to_string());
    }
}

/// Watches the remote: marks it down when an apply hangs past the deadline, and probes it
/// while it is down.
struct Monitor {
    queue: Arc<Queue>,
    remote: Arc<Backend>,
    health: Arc<RemoteHealth>,
    busy_slots: Vec<Arc<Mutex<Option<Instant>>>>,
    deadline: Duration,
}

impl Monitor {
    fn run(self) {
        let probe_running = Arc::new(Mutex::new(false));
        let mut reported_hang = false;
        while !self.queue.is_shut_down() {
            std::thread::sleep(MONITOR_INTERVAL);

            let hung = self.busy_slots.iter().any(|slot| {
                slot.lock()
                    .is_some_and(|since| since.elapsed() > self.deadline)
            });
            if hung && !reported_hang {
                tracing::warn!(deadline = ?self.deadline, "a remote apply is hung past the deadline");
                self.health.record_failure(Failure::Timeout);
            }
            reported_hang = hung;

            if self.health.is_down() && !*probe_running.lock() {
                self.spawn_probe(probe_running.clone());
            }
        }
    }

    /// Probes the remote root on its own thread, so a hung probe never blocks the monitor;
    /// at most one probe runs at a time.
    fn spawn_probe(&self, running: Arc<Mutex<bool>>) {
        *running.lock() = true;
        let remote = self.remote.clone();
        let health = self.health.clone();
        let done = running.clone();
        let spawned = std::thread::Builder::new()
            .name("remote-probe".into())
            .spawn(move || {
                match remote.lstat(Path::new("")) {
                    Ok(_) => health.record_success(),
                    Err(errno) => health.record_failure(Failure::Errno(errno)),
                }
                *done.lock() = false;
            });
        if spawned.is_err() {
            *running.lock() = false;
        }
    }
}
