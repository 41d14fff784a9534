//! Mirroring local changes into the remote tree: the queue, the workers that apply it, and
//! the per-path sync records behind the `user.dualfs.*` attributes.

pub mod apply;
pub mod op;
pub mod queue;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;

use crate::backend::Backend;
use apply::Applier;
pub use op::{Op, OpKind, RangeSet};
use queue::Queue;
pub use queue::{PathSummary, QueueSummary};

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
}

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
    config: ReplicationConfig,
    records: Arc<Mutex<LruCache<PathBuf, SyncRecord>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Replicator {
    /// Starts the worker threads that apply queued changes to the remote tree.
    pub fn start(
        local: Arc<Backend>,
        remote: Arc<Backend>,
        config: ReplicationConfig,
    ) -> std::io::Result<Replicator> {
        let queue = Arc::new(Queue::new());
        let records = Arc::new(Mutex::new(LruCache::new(
            NonZeroUsize::new(SYNC_RECORDS).expect("non-zero"),
        )));

        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let worker = Worker {
                queue: queue.clone(),
                local: local.clone(),
                remote: remote.clone(),
                records: records.clone(),
                mirror_owner: config.mirror_owner,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("replicate-{i}"))
                    .spawn(move || worker.run())?,
            );
        }

        Ok(Replicator {
            queue,
            config,
            records,
            workers: Mutex::new(workers),
        })
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// Queues a change; in sync mode waits for the remote up to the remote timeout.
    pub fn submit(&self, op: Op) {
        let ticket = self.queue.push(op);
        if self.config.mode == Mode::Sync {
            ticket.wait(self.config.remote_timeout);
        }
    }

    /// Queues a change and waits for it up to the remote timeout whatever the mode; used
    /// by fsync in sync mode and by tests.
    pub fn submit_and_wait(&self, op: Op) -> bool {
        self.queue.push(op).wait(self.config.remote_timeout)
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

    pub fn record(&self, path: &Path) -> SyncRecord {
        self.records.lock().get(path).cloned().unwrap_or_default()
    }

    /// Waits until everything queued has reached the remote, up to `timeout`, then stops the
    /// workers. Returns how many operations were left behind.
    pub fn shutdown(&self, timeout: Duration) -> usize {
        self.queue.wait_idle(timeout);
        let left = self.queue.summary().ops;
        self.queue.shutdown();
        for worker in self.workers.lock().drain(..) {
            let _ = worker.join();
        }
        left
    }
}

struct Worker {
    queue: Arc<Queue>,
    local: Arc<Backend>,
    remote: Arc<Backend>,
    records: Arc<Mutex<LruCache<PathBuf, SyncRecord>>>,
    mirror_owner: bool,
}

impl Worker {
    fn run(self) {
        let applier = Applier {
            local: &self.local,
            remote: &self.remote,
            mirror_owner: self.mirror_owner,
        };
        while let Some((seq, op)) = self.queue.next() {
            let started = Instant::now();
            let result = applier.apply(&op);
            let elapsed = started.elapsed();

            match result {
                Ok(()) => {
                    self.record_success(&op);
                    tracing::trace!(op = op.name(), path = %op.path.display(), ?elapsed, "applied to remote");
                    self.queue.finish(seq, Ok(()));
                }
                Err(err) => {
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
        for path in [Some(op.path.as_path()), op.second_path()]
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
