//! [`FaultFs`]: a faultfs mount served by threads of the test process, unmounted on drop.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::control::{stats_path, write_atomically};
use crate::fs::Shared;
use crate::mount::{mount, unmount, MountOptions};
use crate::rules::{parse_rules, Op};

/// Maximum time that drop waits for the session threads to end after unmounting.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A faultfs mount of a backing directory, for tests. The mount point and the control file
/// live in a fresh temporary directory; the FUSE session runs on threads of the calling
/// process. Needs root and `/dev/fuse`.
///
/// Dropping the guard, also while a test panics, releases held requests with EIO, unmounts
/// (lazily if the mount is busy) and removes the temporary directory.
///
/// ```no_run
/// # use std::path::Path;
/// let backing = tempfile::tempdir().unwrap();
/// let remote = faultfs::FaultFs::mount(backing.path());
/// remote.set_rules("write * errno=EIO");
/// // ... run the code under test against remote.path() ...
/// assert!(remote.count("write") > 0);
/// remote.clear_rules();
/// ```
pub struct FaultFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    control: PathBuf,
    /// Device number of the mount, which names its connection under
    /// /sys/fs/fuse/connections.
    device: u64,
    session: Option<JoinHandle<std::io::Result<()>>>,
    // Dropped after `Drop::drop` has unmounted, so removing it never walks a live mount.
    _dir: TempDir,
}

impl FaultFs {
    /// Mounts a passthrough of `backing` with the default options. Panics with the reason
    /// when mounting fails.
    pub fn mount(backing: &Path) -> FaultFs {
        FaultFs::mount_with(backing, MountOptions::default())
    }

    /// Mounts a passthrough of `backing` with `options`. Panics with the reason when
    /// mounting fails.
    pub fn mount_with(backing: &Path, options: MountOptions) -> FaultFs {
        match FaultFs::try_mount(backing, options) {
            Ok(mounted) => mounted,
            Err(err) => panic!("cannot mount faultfs over {}: {err:#}", backing.display()),
        }
    }

    /// Mounts a passthrough of `backing` with `options`.
    pub fn try_mount(backing: &Path, options: MountOptions) -> Result<FaultFs> {
        let dir = tempfile::Builder::new()
            .prefix("faultfs-")
            .tempdir()
            .context("cannot create a temporary directory for the mount point")?;
        let mountpoint = dir.path().join("mnt");
        let control = dir.path().join("rules");
        std::fs::create_dir(&mountpoint)?;
        std::fs::write(&control, "")?;

        let mounted = mount(backing, &control, &mountpoint, &options)?;
        let shared = mounted.shared().clone();
        let mountpoint = mounted.mountpoint().to_path_buf();
        let control = shared.control().path().to_path_buf();
        let session = thread::Builder::new()
            .name("faultfs-session".into())
            .spawn(move || mounted.run())?;
        let device = std::fs::metadata(&mountpoint).map_or(0, |meta| meta.dev());
        Ok(FaultFs {
            shared,
            mountpoint,
            control,
            device,
            session: Some(session),
            _dir: dir,
        })
    }

    /// Returns the mount point, the path to give to the code under test.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Returns the path of the control file that contains the rules.
    pub fn control_file(&self) -> PathBuf {
        self.control.clone()
    }

    /// Returns the path of the stats file, which is rewritten within about 100 ms of each
    /// change of the counts.
    pub fn stats_file(&self) -> PathBuf {
        stats_path(&self.control)
    }

    /// Replaces the rules with `rules` (the control file syntax) and applies them before
    /// returning, so they apply to the next request. Panics if a line is malformed.
    pub fn set_rules(&self, rules: &str) {
        let (_, errors) = parse_rules(rules);
        if !errors.is_empty() {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("malformed faultfs rules: {}", lines.join("; "));
        }
        if let Err(err) = write_atomically(&self.control, rules) {
            panic!(
                "cannot write the control file {}: {err}",
                self.control.display()
            );
        }
        self.shared.control().refresh();
    }

    /// Removes every rule; requests held by `hang` rules pass through.
    pub fn clear_rules(&self) {
        self.set_rules("");
    }

    /// Returns how many requests of operation `op` (a name such as `write` or `getattr`) faultfs
    /// has received, including those that rules failed or held. Panics on an unknown name.
    pub fn count(&self, op: &str) -> u64 {
        let op = Op::from_name(op).unwrap_or_else(|| panic!("unknown faultfs operation `{op}`"));
        self.shared.counters().get(op)
    }

    /// Request counts of every operation, by name.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        Op::ALL
            .into_iter()
            .map(|op| (op.name(), self.shared.counters().get(op)))
            .collect()
    }

    /// Unmounts now, as dropping the guard does.
    pub fn unmount(self) {}

    /// Ends the connection through the fusectl filesystem, when it is mounted. Needed when
    /// the lazy detach left the filesystem alive because something still uses it.
    fn abort_connection(&self) -> bool {
        let major = libc::major(self.device) as u64;
        let minor = libc::minor(self.device) as u64;
        // The kernel names each connection by its internal device number.
        let name = (major << 20) | minor;
        let abort = format!("/sys/fs/fuse/connections/{name}/abort");
        std::fs::write(abort, "1").is_ok()
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.shared.shut_down();
        if let Err(err) = unmount(&self.mountpoint) {
            eprintln!(
                "faultfs: cannot unmount {}: {err}",
                self.mountpoint.display()
            );
        }
        let Some(session) = self.session.take() else {
            return;
        };

        let stopped = wait_finished(&session, STOP_TIMEOUT)
            || (self.abort_connection() && wait_finished(&session, STOP_TIMEOUT));
        if !stopped {
            eprintln!(
                "faultfs: the session of {} is still running after the unmount; leaving it",
                self.mountpoint.display()
            );
            return;
        }
        match session.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("faultfs: the session ended with an error: {err}"),
            Err(_) => eprintln!("faultfs: the session thread panicked"),
        }
    }
}

/// Waits up to `timeout` for the thread to end; returns whether it did.
fn wait_finished<T>(thread: &JoinHandle<T>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !thread.is_finished() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}
