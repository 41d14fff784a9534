//! Mounting and unmounting: path checks, mount(2) of `/dev/fuse`, and the session loop.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fuser::{Config, Session, SessionACL};
use nix::mount::MsFlags;

use crate::fs::{FaultFilesystem, FsOptions, Shared};

/// Settings of a faultfs mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let users other than root use the mount (`allow_other`).
    pub allow_other: bool,
    /// FUSE request threads. Delayed and hung requests move to threads of their own, so
    /// this only bounds how many requests run on the backing tree at once.
    pub threads: usize,
    /// Entry and attribute TTL sent to the kernel. The default of zero makes every path
    /// walk and stat reach faultfs, so rules apply to each access.
    pub ttl: Duration,
    /// Open files with FOPEN_DIRECT_IO, so every read(2) reaches faultfs instead of being
    /// served from the page cache.
    pub direct_io: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: false,
            threads: 16,
            ttl: Duration::ZERO,
            direct_io: false,
        }
    }
}

/// A mounted faultfs whose session has not started serving yet.
pub struct Mounted {
    session: Session<FaultFilesystem>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
}

impl Mounted {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serves requests until the filesystem is unmounted, keeping the stats file current.
    pub fn run(self) -> io::Result<()> {
        let stats_writer = self.shared.spawn_stats_writer()?;
        let served = self.session.run();
        self.shared.shut_down();
        if stats_writer.join().is_err() {
            tracing::error!("the stats writer thread panicked");
        }
        served
    }
}

fn canonical_dir(path: &Path, role: &str) -> Result<PathBuf> {
    let canonical = std::fs::canonicalize(path).with_context(|| {
        format!(
            "{role} {} cannot be opened; create it first",
            path.display()
        )
    })?;
    if !canonical.is_dir() {
        bail!("{role} {} is not a directory", path.display());
    }
    Ok(canonical)
}

/// Returns the control file's path with a canonical parent directory. The file itself may
/// be missing; then there are no rules until it appears.
fn canonical_control(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("control file {} has no file name", path.display()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok(canonical_dir(parent, "directory of the control file")?.join(name))
}

/// Mounts a faultfs passthrough of `backing` at `mountpoint`, with rules read from
/// `control`. Needs root (CAP_SYS_ADMIN) and `/dev/fuse`.
pub fn mount(
    backing: &Path,
    control: &Path,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted> {
    let backing = canonical_dir(backing, "backing directory")?;
    let mountpoint = canonical_dir(mountpoint, "mount point")?;
    let control = canonical_control(control)?;
    if mountpoint.starts_with(&backing) || backing.starts_with(&mountpoint) {
        bail!(
            "mount point {} overlaps the backing directory {}; mount outside the backing tree",
            mountpoint.display(),
            backing.display()
        );
    }
    if control.starts_with(&mountpoint) {
        bail!(
            "control file {} is inside the mount point {}; faultfs would wait on itself",
            control.display(),
            mountpoint.display()
        );
    }
    if options.threads == 0 {
        bail!("--threads must be at least 1");
    }

    let fs_options = FsOptions {
        ttl: options.ttl,
        direct_io: options.direct_io,
    };
    let shared = Arc::new(
        Shared::new(&backing, &control, fs_options)
            .with_context(|| format!("cannot open backing directory {}", backing.display()))?,
    );

    let fd = mount_fuse(&backing, &mountpoint, options.allow_other)?;
    let mut config = Config::default();
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads);
    let filesystem = FaultFilesystem::new(shared.clone());
    let session = match Session::from_fd(filesystem, fd, config.acl, config) {
        Ok(session) => session,
        Err(err) => {
            if let Err(unmount_err) = unmount(&mountpoint) {
                tracing::error!(mountpoint = %mountpoint.display(), err = %unmount_err, "cannot unmount after a failed handshake");
            }
            return Err(err).context("the FUSE handshake with the kernel failed");
        }
    };
    tracing::info!(
        backing = %backing.display(),
        control = %control.display(),
        mountpoint = %mountpoint.display(),
        "mounted"
    );
    Ok(Mounted {
        session,
        shared,
        mountpoint,
    })
}

/// Opens /dev/fuse and mounts it with mount(2) as type `fuse.faultfs`, so mount tables name
/// the filesystem. Returns the connection's descriptor.
fn mount_fuse(backing: &Path, mountpoint: &Path, allow_other: bool) -> Result<OwnedFd> {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse; load the fuse module and run as root")?;
    let fd = OwnedFd::from(device);

    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut options = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        fd.as_raw_fd()
    );
    if allow_other {
        options.push_str(",allow_other");
    }
    let source = format!("faultfs:{}", backing.display());
    nix::mount::mount(
        Some(source.as_str()),
        mountpoint,
        Some("fuse.faultfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mount(2) of {} failed; faultfs needs root (CAP_SYS_ADMIN)",
            mountpoint.display()
        )
    })?;
    Ok(fd)
}

/// Unmounts `mountpoint`, falling back to a lazy detach while it is busy.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: umount2 only reads the NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EBUSY) {
        return Err(err);
    }
    tracing::warn!(mountpoint = %mountpoint.display(), "mount point busy, detaching lazily");
    // SAFETY: as above.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}
