//! Remote calls made on behalf of FUSE requests, on a small bounded pool with a deadline.
//!
//! A remote on an NFS hard mount can block a system call for minutes. Lookups, listings and
//! reads that need the remote therefore run on these threads, and the request waits at most
//! the deadline. A thread stuck in a hung call stays stuck, but the pool never grows: when all
//! threads are busy, or the remote is down, calls are skipped at once and the request carries
//! on with what the local tree has.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use super::health::{Failure, RemoteHealth};
use crate::backend::{self, Backend};

type Job = Box<dyn FnOnce() + Send>;

pub struct RemoteCaller {
    remote: Arc<Backend>,
    health: Arc<RemoteHealth>,
    jobs: Sender<Job>,
    deadline: Duration,
}

impl RemoteCaller {
    pub fn start(
        remote: Arc<Backend>,
        health: Arc<RemoteHealth>,
        threads: usize,
        deadline: Duration,
    ) -> std::io::Result<RemoteCaller> {
        let (jobs, receiver) = crossbeam_channel::bounded::<Job>(threads);
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("remote-call-{i}"))
                .spawn(move || {
                    while let Ok(job) = receiver.recv() {
                        job();
                    }
                })?;
        }
        Ok(RemoteCaller {
            remote,
            health,
            jobs,
            deadline,
        })
    }

    pub fn health(&self) -> &RemoteHealth {
        &self.health
    }

    /// Runs `call` against the remote tree and returns its result, or `None` when the remote
    /// is down, every pool thread is busy, or the call misses the deadline.
    pub fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Backend) -> backend::Result<T> + Send + 'static,
    ) -> Option<backend::Result<T>> {
        if self.health.is_down() {
            return None;
        }

        let (tx, rx) = crossbeam_channel::bounded(1);
        let remote = self.remote.clone();
        let job: Job = Box::new(move || {
            let _ = tx.send(call(&remote));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("every remote call thread is busy; skipping the remote");
                return None;
            }
            Err(TrySendError::Disconnected(_)) => return None,
        }

        match rx.recv_timeout(self.deadline) {
            Ok(result) => {
                match &result {
                    Err(errno) if Failure::Errno(*errno).is_unreachable() => {
                        self.health.record_failure(Failure::Errno(*errno));
                    }
                    _ => self.health.record_success(),
                }
                Some(result)
            }
            Err(_) => {
                tracing::warn!(deadline = ?self.deadline, "remote call timed out; serving from the local tree");
                self.health.record_failure(Failure::Timeout);
                None
            }
        }
    }
}
