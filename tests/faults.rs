//! Backend faults: a full local tree, and (through faultfs) remote errors, a full remote,
//! stale handles and a hung remote.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_no_differences, compare_trees, lazy_unmount, run, Mount};

/// A size-limited tmpfs mounted over a directory, unmounted on drop.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> SmallFs {
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "dualfs-test-small",
            ])
            .arg(path));
        SmallFs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        lazy_unmount(&self.path);
    }
}

#[test]
fn local_enospc_reaches_dd_and_nothing_is_lost() {
    let mut mount = Mount::start();
    // The daemon must open the local tree on the small file system, so it starts again.
    mount.unmount();
    let _small = SmallFs::mount(mount.local(), "16m");
    mount.restart();

    fs::write(
        mount.path().join("before.txt"),
        b"written before the disk filled",
    )
    .unwrap();
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", mount.path().join("big.bin").display()))
        .args(["bs=1M", "count=64", "conv=fsync"])
        .output()
        .expect("failed to run dd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "dd must fail on a full tree: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "dd must report ENOSPC: {stderr}"
    );

    // Deleting frees space and is still recorded, and what was written stays.
    fs::remove_file(mount.path().join("big.bin")).unwrap();
    fs::write(
        mount.path().join("after.txt"),
        b"written after space returned",
    )
    .unwrap();
    assert_eq!(
        fs::read(mount.path().join("before.txt")).unwrap(),
        b"written before the disk filled"
    );

    mount.wait_synced();
    mount.unmount();
    assert_no_differences(&compare_trees(mount.local(), mount.remote()), "remote");
    assert!(!mount.remote().join("big.bin").exists());
}

/// A dualfs mount whose remote is a faultfs mount over a plain directory. Fields drop in
/// order: dualfs first, then faultfs, then the directory.
struct FaultyRemote {
    mount: Mount,
    remote: faultfs::FaultFs,
    backing: tempfile::TempDir,
}

impl FaultyRemote {
    fn start(extra_args: &[&str]) -> FaultyRemote {
        let backing = tempfile::Builder::new()
            .prefix("dualfs-test-remote-")
            .tempdir()
            .expect("failed to create the remote backing directory");
        let remote = faultfs::FaultFs::mount(backing.path());
        let mount = Mount::start_over(None, Some(remote.path()), extra_args);
        FaultyRemote {
            mount,
            remote,
            backing,
        }
    }

    fn root_attribute(&self, name: &str) -> String {
        String::from_utf8_lossy(&common::get_xattr(self.mount.path(), name).unwrap()).into_owned()
    }

    /// Waits until the remote is reported in `health`.
    fn wait_health(&self, health: &str) {
        for _ in 0..400 {
            if self.root_attribute("user.dualfs.remote") == health {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "user.dualfs.remote never became {health}; it is {}",
            self.root_attribute("user.dualfs.remote")
        );
    }

    /// Clears every rule, waits for the queue to drain, unmounts dualfs and compares the
    /// local tree with the remote's backing directory, which it returns for further checks.
    fn finish(mut self) -> tempfile::TempDir {
        self.remote.clear_rules();
        self.mount.wait_synced();
        self.mount.unmount();
        assert_no_differences(
            &compare_trees(self.mount.local(), self.backing.path()),
            "remote after the fault cleared",
        );
        drop(self.mount);
        drop(self.remote);
        self.backing
    }
}

#[test]
fn hung_remote_leaves_local_work_prompt() {
    let hang_seconds: u64 = std::env::var("DUALFS_HANG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let faulty = FaultyRemote::start(&["--mode", "sync", "--remote-timeout", "1s"]);
    let root = faulty.mount.path().to_path_buf();
    fs::write(root.join("existing.txt"), b"before the hang").unwrap();
    faulty.mount.state_of(&root).unwrap();

    faulty.remote.set_rules("* * hang");
    let started = std::time::Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker_root = root.clone();
    let app = std::thread::spawn(move || {
        let mut operations = 0u32;
        for i in 0..50 {
            let dir = worker_root.join(format!("during-{i}"));
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("data.bin"), vec![i as u8; 10_000]).unwrap();
            fs::rename(dir.join("data.bin"), dir.join("renamed.bin")).unwrap();
            assert_eq!(fs::read(dir.join("renamed.bin")).unwrap().len(), 10_000);
            fs::metadata(worker_root.join("existing.txt")).unwrap();
            fs::read_dir(&worker_root).unwrap().count();
            common::get_xattr(&dir.join("renamed.bin"), "user.dualfs.state").unwrap();
            operations += 7;
        }
        done_tx.send(operations).unwrap();
    });

    // The application must finish while the remote still hangs: nothing may wait for it.
    let operations = done_rx
        .recv_timeout(std::time::Duration::from_secs(hang_seconds))
        .unwrap_or_else(|_| {
            panic!("the application did not finish within {hang_seconds} s of a hung remote")
        });
    app.join().unwrap();
    eprintln!(
        "{operations} operations finished in {:?} with the remote hung",
        started.elapsed()
    );
    assert_eq!(faulty.root_attribute("user.dualfs.remote"), "down");
    assert_ne!(faulty.root_attribute("user.dualfs.state"), "synced");

    // Keep the remote hung for the rest of the period, then let it recover.
    if let Some(rest) = std::time::Duration::from_secs(hang_seconds).checked_sub(started.elapsed())
    {
        std::thread::sleep(rest);
    }
    faulty.finish();
}

#[test]
fn full_remote_keeps_changes_until_space_returns() {
    let faulty = FaultyRemote::start(&["--mode", "async"]);
    faulty.remote.set_rules("* * full");
    let path = faulty.mount.path().join("report.csv");
    fs::write(&path, b"a,b\n1,2\n").unwrap();

    let mut last_error = String::new();
    for _ in 0..200 {
        last_error =
            String::from_utf8_lossy(&common::get_xattr(&path, "user.dualfs.last_error").unwrap())
                .into_owned();
        if !last_error.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        last_error.contains("ENOSPC"),
        "last_error must name ENOSPC: {last_error:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&common::get_xattr(&path, "user.dualfs.state").unwrap()),
        "error"
    );
    // A full remote still answers, so it is degraded, not down.
    assert_eq!(faulty.root_attribute("user.dualfs.remote"), "degraded");
    faulty.finish();
}

#[test]
fn eio_bursts_are_retried() {
    let faulty = FaultyRemote::start(&["--mode", "async"]);
    for burst in 0..5 {
        faulty.remote.set_rules("* * errno=EIO");
        for i in 0..20 {
            let path = faulty.mount.path().join(format!("burst{burst}-{i}.txt"));
            fs::write(&path, format!("burst {burst} file {i}")).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        faulty.remote.clear_rules();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    faulty.finish();
}

#[test]
fn estale_is_retried() {
    let faulty = FaultyRemote::start(&["--mode", "async"]);
    fs::create_dir(faulty.mount.path().join("dir")).unwrap();
    faulty.remote.set_rules("* dir* errno=ESTALE");
    fs::write(
        faulty.mount.path().join("dir/file.txt"),
        b"written during ESTALE",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(faulty.remote.count("create") + faulty.remote.count("lookup") > 0);
    faulty.finish();
}

#[test]
fn recreate_while_down_ends_with_new_content() {
    let mut faulty = FaultyRemote::start(&["--mode", "async"]);
    let path = faulty.mount.path().join("config.yaml");
    fs::write(&path, b"old content").unwrap();
    faulty.mount.wait_synced();

    faulty.remote.set_rules("* * errno=EIO");
    fs::remove_file(&path).unwrap();
    assert!(
        !path.exists(),
        "a queued deletion must hide the remote copy"
    );
    fs::write(&path, b"new content, longer than the old").unwrap();
    faulty.wait_health("down");

    let backing = faulty.finish();
    assert_eq!(
        fs::read(backing.path().join("config.yaml")).unwrap(),
        b"new content, longer than the old"
    );
}

#[test]
fn temporary_then_rename_while_down() {
    let faulty = FaultyRemote::start(&["--mode", "async"]);
    faulty.remote.set_rules("* * errno=EIO");
    let root = faulty.mount.path().to_path_buf();
    for i in 0..10 {
        let temporary = root.join(format!(".save-{i}.tmp"));
        fs::write(&temporary, format!("document {i}")).unwrap();
        fs::rename(&temporary, root.join(format!("document-{i}.txt"))).unwrap();
    }

    let backing = faulty.finish();
    let names: Vec<String> = fs::read_dir(backing.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.ends_with(".tmp")),
        "temporary names reached the remote: {names:?}"
    );
    assert_eq!(names.len(), 10, "remote entries: {names:?}");
}

#[test]
fn unreadable_local_tree_is_an_error_not_empty() {
    let local_backing = tempfile::Builder::new()
        .prefix("dualfs-test-local-")
        .tempdir()
        .unwrap();
    let local = faultfs::FaultFs::mount(local_backing.path());
    let mut mount = Mount::start_over(Some(local.path()), None, &[]);
    fs::create_dir(mount.path().join("data")).unwrap();
    fs::write(mount.path().join("data/keep.txt"), b"must survive").unwrap();
    mount.wait_synced();

    local.set_rules("readdir,opendir,lookup,getattr data* errno=EIO");
    let listing = fs::read_dir(mount.path().join("data")).and_then(|entries| {
        entries
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
    });
    let err = listing.expect_err("an unreadable local directory must not list as empty");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    local.clear_rules();

    mount.wait_synced();
    mount.unmount();
    assert_eq!(
        fs::read(mount.remote().join("data/keep.txt")).unwrap(),
        b"must survive",
        "nothing may be deleted on the remote because the local tree looked empty"
    );
}

/// Creating files looks each new name up in both trees. One listing of the remote directory
/// rules the new names out, so many creates cost the remote a handful of lookups. A name that
/// another writer adds to the remote shows up once the listing's TTL has passed.
#[test]
fn new_names_need_no_remote_lookup_each() {
    let backing = tempfile::Builder::new()
        .prefix("dualfs-test-remote-")
        .tempdir()
        .unwrap();
    fs::create_dir(backing.path().join("dir")).unwrap();
    let remote = faultfs::FaultFs::mount(backing.path());
    // A long coalesce window keeps the replication of the new files out of the count.
    let mut mount = Mount::start_over(
        None,
        Some(remote.path()),
        &["--mode", "async", "--coalesce-window", "3s"],
    );
    let dir = mount.path().join("dir");
    assert!(dir.is_dir());

    let before = remote.count("lookup");
    for i in 0..50 {
        fs::write(dir.join(format!("new{i}")), b"x").unwrap();
    }
    let lookups = remote.count("lookup") - before;
    assert!(
        lookups < 10,
        "50 creates made {lookups} remote lookups; one listing should answer them"
    );

    fs::write(backing.path().join("dir/from-elsewhere"), b"remote").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        fs::read(dir.join("from-elsewhere")).unwrap(),
        b"remote",
        "a remote name must show up after the cache TTL (1 s)"
    );
    mount.unmount();
    drop(remote);
}
