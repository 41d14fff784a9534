//! `dualfs verify` and `dualfs resync`: compare the remote tree with the local tree, and
//! repair the remote from the local tree.
//!
//! Both read the backing directories directly, not a mount. Verify may run beside a live
//! daemon, but changes still queued show up as differences; resync refuses to run while a
//! daemon serves the local tree, because it would race with its workers.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::io::{IsTerminal, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix::errno::Errno;

use crate::backend::{file_type, read_dir, Backend, Side, Stat};
use crate::cli::VerifyArgs;
use crate::replication::apply::{Applier, TimeLocks};
use crate::replication::{Op, OpKind};
use crate::STATE_DIR;

/// One way in which the remote differs from the local tree at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    MissingOnRemote,
    ExtraOnRemote,
    Type,
    Size {
        local: u64,
        remote: u64,
    },
    Content,
    SymlinkTarget,
    Mode {
        local: u32,
        remote: u32,
    },
    Owner {
        local: (u32, u32),
        remote: (u32, u32),
    },
    Mtime,
    Xattrs,
    /// The path must be a hard link of `with`, as it is in the local tree.
    HardLinks {
        with: PathBuf,
    },
}

impl Difference {
    /// Whether only attributes differ, so copying attributes repairs it.
    pub fn attributes_only(&self) -> bool {
        matches!(
            self,
            Difference::Mode { .. } | Difference::Owner { .. } | Difference::Mtime
        )
    }

    fn describe(&self) -> String {
        match self {
            Difference::MissingOnRemote => "missing on the remote".into(),
            Difference::ExtraOnRemote => "only on the remote".into(),
            Difference::Type => "file type differs".into(),
            Difference::Size { local, remote } => {
                format!("size differs: local {local}, remote {remote}")
            }
            Difference::Content => "content differs".into(),
            Difference::SymlinkTarget => "symlink target differs".into(),
            Difference::Mode { local, remote } => {
                format!("mode differs: local {local:o}, remote {remote:o}")
            }
            Difference::Owner { local, remote } => format!(
                "owner differs: local {}:{}, remote {}:{}",
                local.0, local.1, remote.0, remote.1
            ),
            Difference::Mtime => "mtime differs".into(),
            Difference::Xattrs => "user xattrs differ".into(),
            Difference::HardLinks { with } => {
                format!("not a hard link of {} as in the local tree", show(with))
            }
        }
    }
}

/// The checks a comparison makes.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// Compare file contents byte by byte, not only sizes and mtimes.
    pub checksum: bool,
    /// Compare owners (off when the remote enforces one identity, as an EFS access point does).
    pub owners: bool,
}

/// Compares two trees and returns the differences by path, each path once, parents first.
pub struct Comparison<'a> {
    local: &'a Backend,
    remote: &'a Backend,
    options: CompareOptions,
    progress: &'a ProgressBar,
    differences: BTreeMap<PathBuf, Vec<Difference>>,
    /// Paths of each local file with several links, by inode, and the remote inode seen for
    /// each path, to compare hard-link groups.
    local_links: HashMap<u64, Vec<PathBuf>>,
    remote_inode: HashMap<PathBuf, u64>,
}

impl<'a> Comparison<'a> {
    pub fn run(
        local: &'a Backend,
        remote: &'a Backend,
        options: CompareOptions,
        progress: &'a ProgressBar,
    ) -> Result<BTreeMap<PathBuf, Vec<Difference>>> {
        let mut comparison = Comparison {
            local,
            remote,
            options,
            progress,
            differences: BTreeMap::new(),
            local_links: HashMap::new(),
            remote_inode: HashMap::new(),
        };
        comparison.compare(Path::new(""))?;
        comparison.compare_links();
        Ok(comparison.differences)
    }

    fn add(&mut self, path: &Path, difference: Difference) {
        self.differences
            .entry(path.to_path_buf())
            .or_default()
            .push(difference);
    }

    fn compare(&mut self, path: &Path) -> Result<()> {
        self.progress.inc(1);
        let local = self
            .local
            .lstat(path)
            .with_context(|| format!("cannot read local {}", show(path)))?;
        let remote = match self.remote.lstat(path) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                self.add(path, Difference::MissingOnRemote);
                return Ok(());
            }
            Err(errno) => {
                return Err(errno).with_context(|| format!("cannot read remote {}", show(path)))
            }
        };
        if file_type(&local) != file_type(&remote) {
            self.add(path, Difference::Type);
            return Ok(());
        }

        self.compare_attributes(path, &local, &remote);
        match file_type(&local) {
            libc::S_IFDIR => self.compare_dir(path),
            libc::S_IFREG => self.compare_file(path, &local, &remote),
            libc::S_IFLNK => {
                if self.local.readlink(path).ok() != self.remote.readlink(path).ok() {
                    self.add(path, Difference::SymlinkTarget);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn compare_attributes(&mut self, path: &Path, local: &Stat, remote: &Stat) {
        let is_symlink = file_type(local) == libc::S_IFLNK;
        if !is_symlink && local.st_mode & 0o7777 != remote.st_mode & 0o7777 {
            self.add(
                path,
                Difference::Mode {
                    local: local.st_mode & 0o7777,
                    remote: remote.st_mode & 0o7777,
                },
            );
        }
        if self.options.owners && (local.st_uid, local.st_gid) != (remote.st_uid, remote.st_gid) {
            self.add(
                path,
                Difference::Owner {
                    local: (local.st_uid, local.st_gid),
                    remote: (remote.st_uid, remote.st_gid),
                },
            );
        }
        let same_mtime =
            (local.st_mtime, local.st_mtime_nsec) == (remote.st_mtime, remote.st_mtime_nsec);
        if !is_symlink && !same_mtime {
            self.add(path, Difference::Mtime);
        }
        if !is_symlink && self.user_xattrs(self.local, path) != self.user_xattrs(self.remote, path)
        {
            self.add(path, Difference::Xattrs);
        }
    }

    /// Returns the `user.*` attributes and their values; a backing without xattr support
    /// (NFSv4.1 on EFS) has none.
    fn user_xattrs(&self, backend: &Backend, path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut values = BTreeMap::new();
        let Ok(names) = backend.listxattr(path) else {
            return values;
        };
        for name in names.split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
            let name_os = std::ffi::OsStr::from_bytes(name);
            if let Ok(value) = backend.getxattr(path, name_os) {
                values.insert(name.to_vec(), value);
            }
        }
        values
    }

    fn compare_dir(&mut self, path: &Path) -> Result<()> {
        let local_names = self.names(self.local, path)?;
        let remote_names = self.names(self.remote, path)?;
        for name in remote_names.keys() {
            if !local_names.contains_key(name) {
                self.add(&path.join(name), Difference::ExtraOnRemote);
            }
        }
        for name in local_names.keys() {
            self.compare(&path.join(name))?;
        }
        Ok(())
    }

    fn names(&self, backend: &Backend, path: &Path) -> Result<BTreeMap<OsString, ()>> {
        let fd = backend
            .open_dir(path)
            .with_context(|| format!("cannot open {} {}", backend.side().name(), show(path)))?;
        let entries = read_dir(fd)
            .with_context(|| format!("cannot list {} {}", backend.side().name(), show(path)))?;
        let is_root = path.as_os_str().is_empty();
        Ok(entries
            .into_iter()
            .filter(|e| !(is_root && e.name.as_bytes() == STATE_DIR.as_bytes()))
            .map(|e| (e.name, ()))
            .collect())
    }

    fn compare_file(&mut self, path: &Path, local: &Stat, remote: &Stat) -> Result<()> {
        if local.st_nlink > 1 {
            self.local_links
                .entry(local.st_ino)
                .or_default()
                .push(path.to_path_buf());
            self.remote_inode.insert(path.to_path_buf(), remote.st_ino);
        }
        if local.st_size != remote.st_size {
            self.add(
                path,
                Difference::Size {
                    local: local.st_size as u64,
                    remote: remote.st_size as u64,
                },
            );
            return Ok(());
        }
        if self.options.checksum && !self.same_content(path)? {
            self.add(path, Difference::Content);
        }
        Ok(())
    }

    fn same_content(&self, path: &Path) -> Result<bool> {
        let open = |backend: &Backend| {
            backend
                .open_file(path, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                .with_context(|| format!("cannot open {} {}", backend.side().name(), show(path)))
        };
        let mut local = open(self.local)?;
        let mut remote = open(self.remote)?;
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        loop {
            let n = read_full(&mut local, &mut a)?;
            let m = read_full(&mut remote, &mut b)?;
            if n != m || a[..n] != b[..m] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
        }
    }

    /// Files that share an inode locally must share one on the remote.
    fn compare_links(&mut self) {
        let groups: Vec<Vec<PathBuf>> = self
            .local_links
            .values()
            .filter(|paths| paths.len() > 1)
            .cloned()
            .collect();
        for paths in groups {
            let first = self.remote_inode.get(&paths[0]).copied();
            for path in &paths[1..] {
                if self.remote_inode.get(path).copied() != first {
                    self.add(
                        path,
                        Difference::HardLinks {
                            with: paths[0].clone(),
                        },
                    );
                }
            }
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn show(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "/".into()
    } else {
        format!("/{}", path.display())
    }
}

/// Counts paths in words, with the verb that agrees: "1 path differs", "2 paths differ".
fn paths(count: usize, singular_verb: &str, plural_verb: &str) -> String {
    let (noun, verb) = if count == 1 {
        ("path", singular_verb)
    } else {
        ("paths", plural_verb)
    };
    format!("{count} {noun} {verb}").trim_end().to_string()
}

fn progress_bar(message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} entries ({elapsed})")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn open_backends(args: &VerifyArgs) -> Result<(Backend, Backend)> {
    let local = Backend::open(Side::Local, &args.local)
        .with_context(|| format!("cannot open local directory {}", args.local.display()))?;
    let remote = Backend::open(Side::Remote, &args.remote)
        .with_context(|| format!("cannot open remote directory {}", args.remote.display()))?;
    Ok((local, remote))
}

fn print_differences(differences: &BTreeMap<PathBuf, Vec<Difference>>) {
    for (path, list) in differences {
        let text: Vec<String> = list.iter().map(Difference::describe).collect();
        println!("{}: {}", show(path), text.join("; "));
    }
}

/// `dualfs verify`: exits 0 when the trees match, 1 with the list of differences otherwise.
pub fn run_verify(args: VerifyArgs) -> Result<ExitCode> {
    let (local, remote) = open_backends(&args)?;
    let progress = progress_bar("comparing");
    let options = CompareOptions {
        checksum: args.checksum,
        owners: !args.no_mirror_owner,
    };
    let differences = Comparison::run(&local, &remote, options, &progress)?;
    progress.finish_and_clear();

    if differences.is_empty() {
        eprintln!(
            "the remote matches the local tree ({} entries)",
            progress.position()
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_differences(&differences);
    eprintln!(
        "{}; run `dualfs resync` with the same directories to repair the remote",
        paths(differences.len(), "differs", "differ")
    );
    Ok(ExitCode::FAILURE)
}

/// `dualfs resync`: repairs every difference by copying from the local tree, then verifies.
pub fn run_resync(args: VerifyArgs) -> Result<ExitCode> {
    let _lock = crate::mount::lock_local_tree(&args.local).with_context(|| {
        format!(
            "a dualfs daemon serves {}; unmount it first, or run \
             `setfattr -n user.dualfs.resync -v 1 MOUNTPOINT` to repair through the mount",
            args.local.display()
        )
    })?;
    let (local, remote) = open_backends(&args)?;
    let options = CompareOptions {
        checksum: args.checksum,
        owners: !args.no_mirror_owner,
    };

    let progress = progress_bar("comparing");
    let differences = Comparison::run(&local, &remote, options, &progress)?;
    progress.finish_and_clear();
    if differences.is_empty() {
        eprintln!("the remote already matches the local tree");
        return Ok(ExitCode::SUCCESS);
    }
    print_differences(&differences);

    let time_locks = TimeLocks::default();
    let applier = Applier {
        local: &local,
        remote: &remote,
        mirror_owner: !args.no_mirror_owner,
        heartbeat: None,
        time_locks: &time_locks,
    };
    let progress = progress_bar("repairing");
    let mut repaired: Vec<&PathBuf> = Vec::new();
    let mut links = Vec::new();
    for (path, list) in &differences {
        // Hard links are made once every other entry is in place.
        if let Some(Difference::HardLinks { with }) = list
            .iter()
            .find(|d| matches!(d, Difference::HardLinks { .. }))
        {
            links.push(Op::new(with.clone(), OpKind::Link { to: path.clone() }));
            continue;
        }
        // A repaired directory was copied whole, descendants included.
        if repaired.iter().any(|done| path.starts_with(done)) {
            continue;
        }
        let op = if list.iter().all(Difference::attributes_only) {
            Op::new(path.clone(), OpKind::Attr)
        } else {
            Op::new(path.clone(), OpKind::Resync)
        };
        applier
            .apply(&op)
            .map_err(|err| anyhow::anyhow!("repairing {} failed: {err}", show(path)))?;
        if !matches!(op.kind, OpKind::Attr) {
            repaired.push(path);
        }
        progress.inc(1);
    }
    for op in links {
        applier
            .apply(&op)
            .map_err(|err| anyhow::anyhow!("repairing a hard link failed: {err}"))?;
        progress.inc(1);
    }
    progress.finish_and_clear();

    let progress = progress_bar("checking");
    let left = Comparison::run(&local, &remote, options, &progress)?;
    progress.finish_and_clear();
    if left.is_empty() {
        eprintln!(
            "repaired {}; the remote now matches the local tree",
            paths(differences.len(), "", "")
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_differences(&left);
    eprintln!(
        "{} after the repair",
        paths(left.len(), "still differs", "still differ")
    );
    Ok(ExitCode::FAILURE)
}
