//! The control file that contains the fault rules, and the request counters with their
//! stats file.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::rules::{first_match, parse_rules, Op, Rule};

/// How long after its last modification the control file is re-read on every check, even
/// when its metadata looks unchanged. Before Linux 6.13, file timestamps advance in coarse
/// ticks of one jiffy (1 to 10 ms), so two writes of the same size within one tick leave
/// mtime, ctime and size unchanged. Two seconds also covers filesystems with one-second
/// timestamps.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Metadata that changes whenever the control file is rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// Returns whether the file changed so recently that another write within the same
    /// timestamp tick would leave this key unchanged.
    fn is_racy(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        now - self.mtime_ns.max(self.ctime_ns) < RACY_WINDOW.as_nanos() as i128
    }
}

/// The state of the control file as last read.
struct Snapshot {
    /// `None` while the file is missing.
    key: Option<FileKey>,
    racy: bool,
    text: String,
}

/// The control file and the rules parsed from it. The file is re-read when its metadata
/// changes; a missing file means no rules.
pub struct Control {
    path: PathBuf,
    snapshot: Mutex<Snapshot>,
    rules: RwLock<Arc<Vec<Rule>>>,
}

impl Control {
    /// Reads the control file at `path` for the first time.
    pub fn open(path: &Path) -> Control {
        let control = Control {
            path: path.to_path_buf(),
            snapshot: Mutex::new(Snapshot {
                key: None,
                racy: true,
                text: String::new(),
            }),
            rules: RwLock::new(Arc::new(Vec::new())),
        };
        control.refresh();
        control
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the control file if it changed since the last read. Costs one stat(2)
    /// unless the file changed less than two seconds ago (`RACY_WINDOW`).
    pub fn refresh(&self) {
        let key = match fs::metadata(&self.path) {
            Ok(meta) => Some(FileKey::of(&meta)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                tracing::error!(path = %self.path.display(), %err, "cannot stat the control file; keeping the current rules");
                return;
            }
        };
        let mut snapshot = self.snapshot.lock();
        if key == snapshot.key && !snapshot.racy {
            return;
        }

        let text = match key {
            None => String::new(),
            Some(_) => match fs::read_to_string(&self.path) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
                Err(err) => {
                    tracing::error!(path = %self.path.display(), %err, "cannot read the control file; keeping the current rules");
                    return;
                }
            },
        };
        snapshot.key = key;
        snapshot.racy = key.is_some_and(|key| key.is_racy());
        if text == snapshot.text {
            return;
        }

        let (rules, errors) = parse_rules(&text);
        for error in &errors {
            tracing::error!(path = %self.path.display(), %error, "ignoring a malformed rule");
        }
        tracing::info!(path = %self.path.display(), rules = rules.len(), "loaded fault rules");
        for rule in &rules {
            tracing::debug!(%rule, "fault rule");
        }
        snapshot.text = text;
        *self.rules.write() = Arc::new(rules);
    }

    /// Returns the rules as last read.
    pub fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.read().clone()
    }

    /// Re-reads the file if needed and returns the first rule that applies.
    pub fn decide(&self, op: Op, paths: &[&str]) -> Option<Rule> {
        self.refresh();
        first_match(&self.rules(), op, paths).cloned()
    }

    /// Re-reads the file if needed and reports whether `rule` is still in it.
    pub fn contains(&self, rule: &Rule) -> bool {
        self.refresh();
        self.rules().iter().any(|candidate| candidate == rule)
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let temporary = path.with_file_name(name);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    fs::rename(&temporary, path)
}

/// Per-operation request counters.
pub struct Counters {
    counts: [AtomicU64; Op::ALL.len()],
    /// Sum of all counts, which lets the stats writer detect a change with one load.
    total: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn record(&self, op: Op) {
        self.counts[op.index()].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.counts[op.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Renders the stats file's text: one `op count` line per operation, zeros included.
    pub fn render(&self) -> String {
        Op::ALL
            .into_iter()
            .map(|op| format!("{} {}\n", op.name(), self.get(op)))
            .collect()
    }
}

/// Path of the stats file that belongs to a control file: its name with `.stats` appended.
pub fn stats_path(control: &Path) -> PathBuf {
    let mut name = control.file_name().unwrap_or_default().to_os_string();
    name.push(".stats");
    control.with_file_name(name)
}
