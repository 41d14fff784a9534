//! The passthrough filesystem: shared state, the fault gate every request passes, and the
//! calls on the backing tree.

mod backing;
mod fuse;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use parking_lot::Mutex;

use crate::control::{stats_path, write_atomically, Control, Counters};
use crate::nodes::Nodes;
use crate::rules::{Action, Op, Rule};

pub use fuse::FaultFilesystem;

/// How often a hung request checks whether its rule is gone.
const HANG_POLL: Duration = Duration::from_millis(50);

/// How often the stats file is rewritten while counts change.
const STATS_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of the passthrough that do not come from the control file.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Entry and attribute TTL sent to the kernel. Zero makes every path walk and stat reach
    /// faultfs, so rules apply to each access.
    pub ttl: Duration,
    /// Open files with FOPEN_DIRECT_IO, so every read(2) reaches faultfs instead of the page
    /// cache.
    pub direct_io: bool,
}

/// A file opened for the kernel.
struct OpenFile {
    file: File,
    /// Node id of the file.
    ino: u64,
}

/// A listing taken when the kernel reads a directory from offset 0.
struct DirHandle {
    ino: u64,
    entries: Vec<backing::DirEntry>,
}

/// Decision of the rules for one request.
enum Verdict {
    Pass,
    Fail(Errno),
    Delay(Duration),
    Hang(Rule),
    /// A `full` rule matched an operation that needs no space: pass it through, and report
    /// no free space if it is statfs.
    Full,
}

/// State shared by the FUSE threads, the threads that run delayed requests and the owner
/// of the mount.
pub struct Shared {
    root: PathBuf,
    control: Control,
    counters: Counters,
    stats_path: PathBuf,
    options: FsOptions,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_handle: AtomicU64,
    shutting_down: AtomicBool,
}

impl Shared {
    /// Creates the state for a passthrough of the directory `root`, which must be canonical.
    pub fn new(root: &Path, control: &Path, options: FsOptions) -> std::io::Result<Shared> {
        let root_meta = std::fs::metadata(root)?;
        Ok(Shared {
            root: root.to_path_buf(),
            control: Control::open(control),
            counters: Counters::default(),
            stats_path: stats_path(control),
            options,
            nodes: Mutex::new(Nodes::new(std::os::unix::fs::MetadataExt::ino(&root_meta))),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        })
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Releases hung requests with EIO and stops the stats writer. Called before unmounting.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Writes the request counts to the stats file.
    pub fn write_stats(&self) {
        if let Err(err) = write_atomically(&self.stats_path, &self.counters.render()) {
            tracing::warn!(path = %self.stats_path.display(), %err, "cannot write the stats file");
        }
    }

    /// Starts a thread that rewrites the stats file whenever the counts change, until
    /// [`Shared::shut_down`]; it writes the file once more before it ends.
    pub fn spawn_stats_writer(self: &Arc<Self>) -> std::io::Result<thread::JoinHandle<()>> {
        let shared = self.clone();
        thread::Builder::new()
            .name("faultfs-stats".into())
            .spawn(move || {
                let mut written = None;
                while !shared.is_shutting_down() {
                    let total = shared.counters.total();
                    if written != Some(total) {
                        shared.write_stats();
                        written = Some(total);
                    }
                    thread::sleep(STATS_INTERVAL);
                }
                shared.write_stats();
            })
    }

    /// Counts the request and applies the first matching rule.
    fn gate(&self, op: Op, paths: &[&str]) -> Verdict {
        self.counters.record(op);
        let Some(rule) = self.control.decide(op, paths) else {
            return Verdict::Pass;
        };
        match rule.action {
            Action::Errno(errno) => {
                tracing::debug!(%op, ?paths, ?errno, "failing request by rule");
                Verdict::Fail(errno)
            }
            Action::Delay(delay) => Verdict::Delay(delay),
            Action::Hang => Verdict::Hang(rule),
            Action::Full if op.needs_space() => {
                tracing::debug!(%op, ?paths, "failing request with ENOSPC: disk full by rule");
                Verdict::Fail(Errno::ENOSPC)
            }
            Action::Full => Verdict::Full,
        }
    }

    /// Blocks until `rule` is gone from the control file. Returns false if faultfs is
    /// shutting down instead.
    fn wait_for_removal(&self, rule: &Rule, op: Op, path: &str) -> bool {
        tracing::info!(%op, path, %rule, "holding request until its rule is removed");
        loop {
            if self.is_shutting_down() {
                tracing::info!(%op, path, "releasing held request with EIO: shutting down");
                return false;
            }
            if !self.control.contains(rule) {
                tracing::info!(%op, path, "rule removed, passing held request through");
                return true;
            }
            thread::sleep(HANG_POLL);
        }
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Returns the path of node `ino` for rule matching: its last known path, even if
    /// removed.
    fn rule_path(&self, ino: u64) -> Option<String> {
        let path = self.nodes.lock().path(ino, false)?;
        Some(path.to_string_lossy().into_owned())
    }

    /// Returns the path of `name` in directory `parent` for rule matching.
    fn rule_child_path(&self, parent: u64, name: &std::ffi::OsStr) -> Option<String> {
        let path = self.nodes.lock().path(parent, false)?.join(name);
        Some(path.to_string_lossy().into_owned())
    }
}

/// A fuser reply that can carry an error; implemented for every reply type faultfs sends.
trait ErrorReply: Send + 'static {
    fn fail(self, errno: Errno);
}

macro_rules! impl_error_reply {
    ($($reply:ty),* $(,)?) => {
        $(impl ErrorReply for $reply {
            fn fail(self, errno: Errno) {
                self.error(fuser::Errno::from_i32(errno as i32));
            }
        })*
    };
}

impl_error_reply!(
    fuser::ReplyEmpty,
    fuser::ReplyData,
    fuser::ReplyEntry,
    fuser::ReplyAttr,
    fuser::ReplyOpen,
    fuser::ReplyWrite,
    fuser::ReplyStatfs,
    fuser::ReplyCreate,
    fuser::ReplyDirectory,
    fuser::ReplyXattr,
    fuser::ReplyLseek,
);

/// Runs `work` for a request that passed the gate: at once, or on a new thread after a
/// delay or hang, so a held request never occupies a FUSE thread.
fn dispatch<R: ErrorReply>(
    shared: &Arc<Shared>,
    verdict: Verdict,
    op: Op,
    path: Option<String>,
    reply: R,
    work: impl FnOnce(&Shared, R) + Send + 'static,
) {
    match verdict {
        Verdict::Pass | Verdict::Full => work(shared, reply),
        Verdict::Fail(errno) => reply.fail(errno),
        Verdict::Delay(delay) => {
            let shared = shared.clone();
            spawn_request(op, move || {
                thread::sleep(delay);
                work(&shared, reply);
            });
        }
        Verdict::Hang(rule) => {
            let shared = shared.clone();
            spawn_request(op, move || {
                let path = path.unwrap_or_default();
                if shared.wait_for_removal(&rule, op, &path) {
                    work(&shared, reply);
                } else {
                    reply.fail(Errno::EIO);
                }
            });
        }
    }
}

fn spawn_request(op: Op, task: impl FnOnce() + Send + 'static) {
    let started = thread::Builder::new()
        .name(format!("faultfs-{op}"))
        .spawn(task);
    if let Err(err) = started {
        // The task and its reply are dropped, and fuser replies EIO for a dropped reply.
        tracing::error!(%op, %err, "cannot start a thread for a held request; it fails with EIO");
    }
}
