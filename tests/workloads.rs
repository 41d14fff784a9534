//! Real workloads run through a dualfs mount. Each test checks the results
//! on the mount, waits until everything is replicated, unmounts, and then
//! requires the local and remote trees to be identical.
//!
//! The tests need root (they mount FUSE filesystems and change owners) and
//! the programs tar, gzip, git, sqlite3, rsync and getfattr.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    assert_no_differences, compare_dirs, compare_trees, require_program, run, run_stdout,
    set_times, wait_for_exit, CompareOptions, Mount,
};

/// Minimum number of regular files that the crate unpacking workload writes.
const MIN_UNPACKED_FILES: usize = 3_000;

/// Maximum time for one child process of a workload (a sqlite3 writer or a
/// shell appending lines).
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// 2001-02-03 04:05:06 UTC as seconds since the Unix epoch.
const FEB_3_2001: i64 = 981_173_106;

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("failed to create a temporary directory: {e}"))
}

fn write_file(path: &Path, contents: &[u8]) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

fn create_dir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("failed to create {}: {e}", path.display()));
}

fn metadata(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("failed to stat {}: {e}", path.display()))
}

/// Lists the relative paths of all entries below `root`. At the root,
/// `.dualfs` is skipped when `skip_state_dir` is set.
fn list_tree(root: &Path, skip_state_dir: bool) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("failed to list {}: {e}", dir.display()));
            if skip_state_dir
                && relative.as_os_str().is_empty()
                && entry.file_name() == common::STATE_DIR
            {
                continue;
            }
            let child = relative.join(entry.file_name());
            let is_dir = entry
                .file_type()
                .unwrap_or_else(|e| panic!("failed to stat {}: {e}", root.join(&child).display()))
                .is_dir();
            if is_dir {
                pending.push(child.clone());
            }
            paths.insert(child);
        }
    }
    paths
}

fn count_regular_files(root: &Path) -> usize {
    list_tree(root, false)
        .iter()
        .filter(|relative| metadata(&root.join(relative)).is_file())
        .count()
}

/// Deterministic pseudo-random bytes (xorshift64), so that test data does
/// not compress to nothing and is the same in every run.
fn pseudo_random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

// ---------------------------------------------------------------------------
// Unpacking a source tree

fn cargo_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").expect("neither CARGO_HOME nor HOME is set");
    PathBuf::from(home).join(".cargo")
}

/// Returns the number of regular files in a .crate archive (a tar.gz).
fn count_archive_files(archive: &Path) -> usize {
    let listing = run_stdout(Command::new("tar").arg("-tzf").arg(archive));
    listing.lines().filter(|line| !line.ends_with('/')).count()
}

/// Picks .crate archives from the Cargo registry cache in file name order
/// until they hold at least `min_files` regular files.
fn select_crate_archives(min_files: usize) -> (Vec<PathBuf>, usize) {
    let cache = cargo_home().join("registry").join("cache");
    let registries = fs::read_dir(&cache).unwrap_or_else(|e| {
        panic!(
            "cannot list the Cargo registry cache {}: {e}; build the project once so that \
             Cargo downloads its dependencies",
            cache.display()
        )
    });
    let mut archives: Vec<PathBuf> = Vec::new();
    for registry in registries {
        let registry = registry
            .expect("failed to list the Cargo registry cache")
            .path();
        let Ok(files) = fs::read_dir(&registry) else {
            continue;
        };
        for file in files {
            let path = file
                .expect("failed to list a Cargo registry directory")
                .path();
            if path
                .extension()
                .is_some_and(|extension| extension == "crate")
            {
                archives.push(path);
            }
        }
    }
    archives.sort_by(|a, b| a.file_name().cmp(&b.file_name()).then_with(|| a.cmp(b)));
    // The same crate cached for two registries would unpack into one directory.
    archives.dedup_by(|a, b| a.file_name() == b.file_name());

    let mut selected = Vec::new();
    let mut total_files = 0;
    for archive in archives {
        if total_files >= min_files {
            break;
        }
        total_files += count_archive_files(&archive);
        selected.push(archive);
    }
    assert!(
        total_files >= min_files,
        "the Cargo registry cache {} holds only {total_files} files in {} crates, but this test \
         needs {min_files}; fetch more crates (for example with `cargo fetch` in a larger project)",
        cache.display(),
        selected.len()
    );
    (selected, total_files)
}

fn unpack_archives(archives: &[PathBuf], target: &Path) {
    for archive in archives {
        run(Command::new("tar")
            .arg("-xzf")
            .arg(archive)
            .arg("-C")
            .arg(target));
    }
}

#[test]
fn unpack_crate_sources() {
    require_program("tar", "tar");
    require_program("gzip", "gzip");
    let (archives, archive_files) = select_crate_archives(MIN_UNPACKED_FILES);
    let plain = temp_dir("dualfs-plain-");
    let mut mount = Mount::start();
    let target = mount.path().join("crates");
    create_dir(&target);

    unpack_archives(&archives, &target);
    unpack_archives(&archives, plain.path());

    let mounted_files = count_regular_files(&target);
    assert_eq!(
        mounted_files,
        archive_files,
        "{} holds {mounted_files} files after unpacking {} crates, but the archives list {archive_files}",
        target.display(),
        archives.len()
    );
    let differences = compare_dirs(
        plain.path(),
        "plain directory",
        &target,
        "mount",
        CompareOptions::copy_without_directory_times(),
    );
    assert_no_differences(
        &differences,
        "crates unpacked into a plain directory vs through the mount",
    );

    mount.wait_synced();
    mount.unmount();
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after unpacking crates");
}

// ---------------------------------------------------------------------------
// Git

const GIT_COMMITS: usize = 30;

/// Returns a git command that runs in `dir` with a private HOME, a fixed
/// identity and no automatic garbage collection, so that no background gc
/// keeps using the repository after the test unmounts.
fn git(dir: &Path, home: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_CONFIG_GLOBAL")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .args(["-c", "user.name=dualfs test"])
        .args(["-c", "user.email=dualfs-test@example.invalid"])
        .args(["-c", "init.defaultBranch=main"])
        .args(["-c", "gc.auto=0"])
        .args(["-c", "maintenance.auto=false"])
        .args(["-c", "safe.directory=*"]);
    command
}

/// Changes the work tree for commit number `index`: appends to a source
/// file, adds a note, and now and then rewrites a binary file, deletes a
/// note or renames one.
fn edit_work_tree(repo: &Path, index: usize) {
    let source = repo.join("src").join(format!("module_{}.rs", index % 5));
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&source)
        .unwrap_or_else(|e| panic!("failed to open {}: {e}", source.display()));
    writeln!(file, "pub const VALUE_{index}: usize = {index};")
        .unwrap_or_else(|e| panic!("failed to append to {}: {e}", source.display()));
    drop(file);

    let note = repo.join("docs").join(format!("note_{index}.md"));
    write_file(
        &note,
        format!("# Note {index}\n\nWritten for commit {index}.\n").as_bytes(),
    );

    if index % 6 == 1 {
        let blob = repo.join("data").join("blob.bin");
        let mut contents = pseudo_random_bytes(7, 200_000);
        contents[index * 1000..index * 1000 + 16].copy_from_slice(&[index as u8; 16]);
        write_file(&blob, &contents);
    }
    if index.is_multiple_of(7) {
        let old_note = repo.join("docs").join(format!("note_{}.md", index - 5));
        if old_note.exists() {
            fs::remove_file(&old_note)
                .unwrap_or_else(|e| panic!("failed to remove {}: {e}", old_note.display()));
        }
    }
    if index.is_multiple_of(10) {
        let from = repo.join("docs").join(format!("note_{}.md", index - 1));
        let to = repo.join("docs").join(format!("renamed_{index}.md"));
        if from.exists() {
            fs::rename(&from, &to).unwrap_or_else(|e| {
                panic!(
                    "failed to rename {} to {}: {e}",
                    from.display(),
                    to.display()
                )
            });
        }
    }
}

fn git_rev_parse(repo: &Path, home: &Path, revision: &str) -> String {
    run_stdout(git(repo, home).args(["rev-parse", revision]))
}

fn git_commit_count(repo: &Path, home: &Path, revision: &str) -> String {
    run_stdout(git(repo, home).args(["rev-list", "--count", revision]))
}

#[test]
fn git_history_branch_and_gc() {
    require_program("git", "git");
    let home = temp_dir("dualfs-git-home-");
    let mut mount = Mount::start();
    let repo = mount.path().join("repo");
    create_dir(&repo);
    run(git(&repo, home.path()).args(["init", "-q"]));
    for dir in ["src", "docs", "data"] {
        create_dir(&repo.join(dir));
    }

    // Commits 1-20 on main, 21-25 on the branch feature, 26-30 on main.
    for index in 1..=GIT_COMMITS {
        if index == 21 {
            run(git(&repo, home.path()).args(["checkout", "-q", "-b", "feature"]));
        }
        if index == 26 {
            run(git(&repo, home.path()).args(["checkout", "-q", "main"]));
        }
        edit_work_tree(&repo, index);
        run(git(&repo, home.path()).args(["add", "-A"]));
        run(git(&repo, home.path()).args(["commit", "-q", "-m", &format!("Commit {index}")]));
    }

    let feature_only = repo.join("docs").join("note_23.md");
    let main_only = repo.join("docs").join("note_27.md");
    for branch in ["feature", "main", "feature", "main"] {
        run(git(&repo, home.path()).args(["checkout", "-q", branch]));
        let on_feature = branch == "feature";
        assert_eq!(
            feature_only.exists(),
            on_feature,
            "after checking out {branch}, the existence of {} is wrong",
            feature_only.display()
        );
        assert_eq!(
            main_only.exists(),
            !on_feature,
            "after checking out {branch}, the existence of {} is wrong",
            main_only.display()
        );
    }

    run(git(&repo, home.path()).args(["gc", "-q", "--prune=now"]));
    let pack_dir = repo.join(".git").join("objects").join("pack");
    let packs = fs::read_dir(&pack_dir)
        .unwrap_or_else(|e| panic!("failed to list {}: {e}", pack_dir.display()))
        .filter(|entry| {
            entry.as_ref().is_ok_and(|entry| {
                entry
                    .path()
                    .extension()
                    .is_some_and(|extension| extension == "pack")
            })
        })
        .count();
    assert!(
        packs >= 1,
        "git gc left no pack file in {}",
        pack_dir.display()
    );

    run(git(&repo, home.path()).args(["fsck", "--full", "--strict"]));
    let status = run_stdout(git(&repo, home.path()).args(["status", "--porcelain"]));
    assert_eq!(
        status, "",
        "the work tree on the mount is not clean after checkout and gc"
    );
    let main_head = git_rev_parse(&repo, home.path(), "main");
    let feature_head = git_rev_parse(&repo, home.path(), "feature");
    assert_eq!(
        git_commit_count(&repo, home.path(), "main"),
        "25",
        "commits reachable from main"
    );
    assert_eq!(
        git_commit_count(&repo, home.path(), "feature"),
        "25",
        "commits reachable from feature"
    );

    mount.wait_synced();
    mount.unmount();
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after the git workload");

    let remote_repo = mount.remote().join("repo");
    run(git(&remote_repo, home.path()).args(["fsck", "--full", "--strict"]));
    assert_eq!(
        git_rev_parse(&remote_repo, home.path(), "main"),
        main_head,
        "main in the remote copy"
    );
    assert_eq!(
        git_rev_parse(&remote_repo, home.path(), "feature"),
        feature_head,
        "feature in the remote copy"
    );
    assert_eq!(
        git_rev_parse(&remote_repo, home.path(), "HEAD"),
        main_head,
        "HEAD in the remote copy"
    );
}

// ---------------------------------------------------------------------------
// SQLite

const SQLITE_ROWS_PER_WRITER: usize = 500;

fn sqlite_query(database: &Path, sql: &str) -> String {
    run_stdout(Command::new("sqlite3").arg("-bail").arg(database).arg(sql))
}

/// Checks integrity and row counts of the test database at `database`.
/// `copy_name` names the copy in assert messages.
fn check_sqlite_database(database: &Path, copy_name: &str) {
    let integrity = sqlite_query(database, "PRAGMA integrity_check;");
    assert_eq!(
        integrity,
        "ok",
        "PRAGMA integrity_check of {} ({copy_name})",
        database.display()
    );
    let count = sqlite_query(database, "SELECT count(*) FROM rows;");
    assert_eq!(
        count,
        (2 * SQLITE_ROWS_PER_WRITER).to_string(),
        "row count of {} ({copy_name})",
        database.display()
    );
    let per_writer = sqlite_query(
        database,
        "SELECT writer, count(*), count(DISTINCT seq), min(seq), max(seq) FROM rows \
         GROUP BY writer ORDER BY writer;",
    );
    let n = SQLITE_ROWS_PER_WRITER;
    assert_eq!(
        per_writer,
        format!("a|{n}|{n}|1|{n}\nb|{n}|{n}|1|{n}"),
        "rows per writer in {} ({copy_name}), as writer|rows|distinct seq|min seq|max seq",
        database.display()
    );
}

#[test]
fn sqlite_wal_concurrent_writers() {
    require_program("sqlite3", "sqlite3");
    let scratch = temp_dir("dualfs-sqlite-");
    let mut mount = Mount::start();
    let db_dir = mount.path().join("db");
    create_dir(&db_dir);
    let database = db_dir.join("test.db");

    let journal_mode = sqlite_query(
        &database,
        "PRAGMA journal_mode=WAL; \
         CREATE TABLE rows(id INTEGER PRIMARY KEY, writer TEXT NOT NULL, seq INTEGER NOT NULL, \
         payload TEXT NOT NULL);",
    );
    assert_eq!(
        journal_mode,
        "wal",
        "journal mode of {}",
        database.display()
    );

    let mut writers = Vec::new();
    for writer in ["a", "b"] {
        let mut script = String::from(".timeout 10000\n");
        for seq in 1..=SQLITE_ROWS_PER_WRITER {
            script.push_str(&format!(
                "BEGIN IMMEDIATE;\nINSERT INTO rows(writer, seq, payload) VALUES('{writer}', {seq}, \
                 hex(randomblob(64)));\nCOMMIT;\n"
            ));
        }
        let script_path = scratch.path().join(format!("writer-{writer}.sql"));
        write_file(&script_path, script.as_bytes());
        let output_path = scratch.path().join(format!("writer-{writer}.out"));
        let output = File::create(&output_path).expect("failed to create the writer output file");
        let child = Command::new("sqlite3")
            .arg("-bail")
            .arg(&database)
            .stdin(File::open(&script_path).expect("failed to open the writer script"))
            .stdout(
                output
                    .try_clone()
                    .expect("failed to duplicate a file descriptor"),
            )
            .stderr(output)
            .spawn()
            .expect("failed to start sqlite3");
        writers.push((writer, child, output_path));
    }
    for (writer, mut child, output_path) in writers {
        let status = wait_for_exit(
            &mut child,
            CHILD_TIMEOUT,
            &format!("sqlite3 writer {writer}"),
        );
        let output = fs::read_to_string(&output_path).unwrap_or_default();
        assert!(
            status.success(),
            "sqlite3 writer {writer} failed with {status}; output:\n{output}"
        );
    }

    check_sqlite_database(&database, "on the mount");

    mount.wait_synced();
    mount.unmount();
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after the sqlite workload");

    // Work on a copy so that opening the database cannot change the remote tree.
    let copy_dir = scratch.path().join("remote-copy");
    create_dir(&copy_dir);
    for suffix in ["", "-wal"] {
        let source = mount.remote().join("db").join(format!("test.db{suffix}"));
        if suffix.is_empty() || source.exists() {
            let destination = copy_dir.join(format!("test.db{suffix}"));
            fs::copy(&source, &destination).unwrap_or_else(|e| {
                panic!(
                    "failed to copy {} to {}: {e}",
                    source.display(),
                    destination.display()
                )
            });
        }
    }
    check_sqlite_database(&copy_dir.join("test.db"), "copy of the remote tree");
}

// ---------------------------------------------------------------------------
// O_APPEND

const APPEND_LINES_PER_WRITER: usize = 1_000;

/// Text after the sequence number on every line of writer `name`, long enough
/// that a torn or misplaced write shows up as a malformed line.
fn append_padding(name: &str) -> String {
    let letter = name.chars().last().expect("writer name is not empty");
    std::iter::repeat_n(letter, 80).collect()
}

#[test]
fn append_from_two_writers() {
    require_program("sh", "dash");
    let mut mount = Mount::start();
    let dir = mount.path().join("append");
    create_dir(&dir);
    let log = dir.join("shared.log");

    // Writer a opens the file with O_APPEND (>>) for every line. Writer b
    // keeps one O_APPEND descriptor for all of its lines.
    let reopening = r#"i=1; while [ "$i" -le "$4" ]; do printf '%s %04d %s\n' "$1" "$i" "$3" >> "$2"; i=$((i + 1)); done"#;
    let keeping_open = r#"exec 3>>"$2"; i=1; while [ "$i" -le "$4" ]; do printf '%s %04d %s\n' "$1" "$i" "$3" >&3; i=$((i + 1)); done"#;
    let lines_per_writer = APPEND_LINES_PER_WRITER.to_string();
    let mut writers = Vec::new();
    for (name, script) in [("writer-a", reopening), ("writer-b", keeping_open)] {
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(name)
            .arg(&log)
            .arg(append_padding(name))
            .arg(&lines_per_writer)
            .stdin(Stdio::null())
            .spawn()
            .expect("failed to start sh");
        writers.push((name, child));
    }
    for (name, mut child) in writers {
        let status = wait_for_exit(&mut child, CHILD_TIMEOUT, name);
        assert!(status.success(), "{name} failed with {status}");
    }

    let contents = String::from_utf8(read_file(&log))
        .unwrap_or_else(|e| panic!("{} is not valid UTF-8: {e}", log.display()));
    assert!(
        contents.ends_with('\n'),
        "{} does not end with a newline",
        log.display()
    );
    let lines: Vec<&str> = contents.split_terminator('\n').collect();
    assert_eq!(
        lines.len(),
        2 * APPEND_LINES_PER_WRITER,
        "number of lines in {}",
        log.display()
    );

    let mut next_sequence = [1usize, 1usize];
    let mut malformed = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let parsed = line.split_once(' ').and_then(|(name, rest)| {
            let (sequence, padding) = rest.split_once(' ')?;
            let writer = ["writer-a", "writer-b"]
                .iter()
                .position(|known| *known == name)?;
            let well_formed = sequence.len() == 4 && padding == append_padding(name);
            well_formed.then_some((writer, sequence.parse::<usize>().ok()?))
        });
        match parsed {
            Some((writer, sequence)) if sequence == next_sequence[writer] => {
                next_sequence[writer] += 1
            }
            _ => malformed.push(format!("line {}: {line:?}", index + 1)),
        }
    }
    assert!(
        malformed.is_empty(),
        "{} has {} malformed or out-of-order lines, the first ones:\n{}",
        log.display(),
        malformed.len(),
        malformed
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        next_sequence,
        [APPEND_LINES_PER_WRITER + 1; 2],
        "next expected sequence number per writer after reading {}",
        log.display()
    );

    mount.wait_synced();
    mount.unmount();
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after concurrent appends");
}

// ---------------------------------------------------------------------------
// Hard links

#[test]
fn hard_link_shares_data() {
    let mut mount = Mount::start();
    let original = Path::new("first").join("original.txt");
    let alias = Path::new("second").join("alias.txt");
    let third = Path::new("third.txt");
    create_dir(&mount.path().join("first"));
    create_dir(&mount.path().join("second"));
    let on_mount = |relative: &Path| mount.path().join(relative);

    write_file(
        &on_mount(&original),
        b"version 1, written through the original name\n",
    );
    fs::hard_link(on_mount(&original), on_mount(&alias)).expect("failed to create the hard link");

    let version_2 = b"version 2, written through the alias\n".to_vec();
    write_file(&on_mount(&alias), &version_2);
    assert_eq!(
        String::from_utf8_lossy(&read_file(&on_mount(&original))),
        String::from_utf8_lossy(&version_2),
        "contents read through {} after writing through {}",
        original.display(),
        alias.display()
    );

    let appended = b"appended through the original name\n";
    let mut file = OpenOptions::new()
        .append(true)
        .open(on_mount(&original))
        .expect("failed to open the original name for appending");
    file.write_all(appended).expect("failed to append");
    drop(file);
    let mut expected = version_2.clone();
    expected.extend_from_slice(appended);
    assert_eq!(
        String::from_utf8_lossy(&read_file(&on_mount(&alias))),
        String::from_utf8_lossy(&expected),
        "contents read through {} after appending through {}",
        alias.display(),
        original.display()
    );

    fs::hard_link(on_mount(&alias), on_mount(third)).expect("failed to create a third link");
    assert_eq!(
        metadata(&on_mount(&original)).nlink(),
        3,
        "link count of {} with three names",
        original.display()
    );
    fs::remove_file(on_mount(third)).expect("failed to remove the third link");

    let original_meta = metadata(&on_mount(&original));
    let alias_meta = metadata(&on_mount(&alias));
    assert_eq!(
        original_meta.ino(),
        alias_meta.ino(),
        "inode numbers of the two names on the mount"
    );
    assert_eq!(
        original_meta.nlink(),
        2,
        "link count of {} on the mount",
        original.display()
    );
    assert_eq!(
        alias_meta.nlink(),
        2,
        "link count of {} on the mount",
        alias.display()
    );

    mount.wait_synced();
    mount.unmount();
    for (label, root) in [("local", mount.local()), ("remote", mount.remote())] {
        let original_meta = metadata(&root.join(&original));
        let alias_meta = metadata(&root.join(&alias));
        assert_eq!(
            (original_meta.dev(), original_meta.ino()),
            (alias_meta.dev(), alias_meta.ino()),
            "{} and {} are not the same inode in the {label} tree",
            original.display(),
            alias.display()
        );
        for name in [&original, &alias] {
            assert_eq!(
                String::from_utf8_lossy(&read_file(&root.join(name))),
                String::from_utf8_lossy(&expected),
                "contents of {} in the {label} tree",
                name.display()
            );
        }
        assert!(
            !root.join(third).exists(),
            "the removed name {} still exists in the {label} tree",
            third.display()
        );
    }
    assert_eq!(
        metadata(&mount.remote().join(&original)).nlink(),
        2,
        "link count of {} in the remote tree",
        original.display()
    );
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after the hard link workload");
}

// ---------------------------------------------------------------------------
// A file deleted while open

/// Returns the paths below `root` whose file name starts with `.fuse_hidden`.
fn fuse_hidden_entries(root: &Path) -> Vec<PathBuf> {
    list_tree(root, false)
        .into_iter()
        .filter(|relative| {
            relative
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(".fuse_hidden"))
        })
        .collect()
}

#[test]
fn unlinked_open_file_keeps_data() {
    let mut mount = Mount::start();
    let scratch = mount.path().join("scratch");
    create_dir(&scratch);
    let path = scratch.join("victim.dat");

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("failed to create {}: {e}", path.display()));
    let mut expected = b"written before unlink\n".to_vec();
    file.write_all(&expected)
        .expect("failed to write before unlink");
    file.flush().expect("failed to flush");

    fs::remove_file(&path).unwrap_or_else(|e| panic!("failed to unlink {}: {e}", path.display()));
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "{} can still be found after unlink",
        path.display()
    );
    let listing = list_tree(&scratch, false);
    assert!(
        listing.is_empty(),
        "{} lists {listing:?} after its only file was unlinked",
        scratch.display()
    );

    let mut after_unlink = b"written after unlink\n".to_vec();
    after_unlink.extend(pseudo_random_bytes(3, 200_000));
    file.write_all(&after_unlink)
        .expect("failed to write after unlink");
    expected.extend_from_slice(&after_unlink);

    let mut read_back = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("failed to seek");
    file.read_to_end(&mut read_back)
        .expect("failed to read through the descriptor");
    assert!(
        read_back == expected,
        "data read back through the descriptor of the unlinked file: {} bytes, expected {} bytes \
         (first difference at byte {:?})",
        read_back.len(),
        expected.len(),
        read_back.iter().zip(&expected).position(|(a, b)| a != b)
    );

    // A new file under the same name must not disturb the open one.
    let replacement = b"replacement file created under the same name\n";
    write_file(&path, replacement);
    let mut read_again = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("failed to seek");
    file.read_to_end(&mut read_again)
        .expect("failed to read through the descriptor");
    assert!(
        read_again == expected,
        "after creating a new {}, the open unlinked file reads {} bytes, expected {} bytes",
        path.display(),
        read_again.len(),
        expected.len()
    );
    assert_eq!(
        read_file(&path),
        replacement,
        "contents of the new file under the name of the unlinked one"
    );
    drop(file);

    let expected_tree: BTreeSet<PathBuf> = [
        PathBuf::from("scratch"),
        PathBuf::from("scratch/victim.dat"),
    ]
    .into();
    assert_eq!(
        list_tree(mount.path(), false),
        expected_tree,
        "entries on the mount after close"
    );

    mount.wait_synced();
    assert_eq!(
        list_tree(mount.path(), false),
        expected_tree,
        "entries on the mount after sync"
    );
    mount.unmount();
    for (label, root) in [("local", mount.local()), ("remote", mount.remote())] {
        assert_eq!(
            list_tree(root, true),
            expected_tree,
            "entries in the {label} tree (without {})",
            common::STATE_DIR
        );
        let hidden = fuse_hidden_entries(root);
        assert!(
            hidden.is_empty(),
            ".fuse_hidden files left in the {label} tree: {hidden:?}"
        );
        assert_eq!(
            read_file(&root.join("scratch/victim.dat")),
            replacement,
            "contents of scratch/victim.dat in the {label} tree"
        );
    }
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after unlinking an open file");
}

// ---------------------------------------------------------------------------
// Ownership, permissions and times

/// Expected attributes of one entry in the metadata workload.
struct ExpectedAttributes {
    path: &'static str,
    is_dir: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Argument of `touch -d`, interpreted in UTC.
    touch_date: &'static str,
    mtime: (i64, i64),
}

const NOBODY: u32 = 65_534;

/// Entries of the metadata workload. Directories come after their children,
/// in the order in which their times are set.
fn metadata_table() -> Vec<ExpectedAttributes> {
    let entry = |path, is_dir, mode, uid, gid, touch_date, mtime| ExpectedAttributes {
        path,
        is_dir,
        mode,
        uid,
        gid,
        touch_date,
        mtime,
    };
    vec![
        entry(
            "tree/setuid-tool",
            false,
            0o4755,
            0,
            0,
            "2001-02-03 04:05:06",
            (FEB_3_2001, 0),
        ),
        entry(
            "tree/private.txt",
            false,
            0o600,
            NOBODY,
            NOBODY,
            "2001-02-03 04:05:07",
            (FEB_3_2001 + 1, 0),
        ),
        entry(
            "tree/readonly.txt",
            false,
            0o444,
            0,
            NOBODY,
            "2001-02-03 04:05:08",
            (FEB_3_2001 + 2, 0),
        ),
        entry(
            "tree/shared/inner.txt",
            false,
            0o640,
            0,
            NOBODY,
            "2001-02-03 04:05:10.123456789",
            (FEB_3_2001 + 4, 123_456_789),
        ),
        entry(
            "tree/sticky/precise.txt",
            false,
            0o644,
            NOBODY,
            0,
            "2001-02-03 04:05:06.987654321",
            (FEB_3_2001, 987_654_321),
        ),
        entry(
            "tree/shared",
            true,
            0o2775,
            NOBODY,
            NOBODY,
            "2001-02-03 04:05:09",
            (FEB_3_2001 + 3, 0),
        ),
        entry(
            "tree/sticky",
            true,
            0o1777,
            0,
            0,
            "2001-02-03 04:05:11",
            (FEB_3_2001 + 5, 0),
        ),
        entry(
            "tree",
            true,
            0o750,
            0,
            0,
            "2001-02-03 04:05:12",
            (FEB_3_2001 + 6, 0),
        ),
    ]
}

/// Asserts the attributes in `table` and of the symlink `tree/link` below
/// `root`. `label` names the tree in messages.
fn check_attributes(root: &Path, label: &str, table: &[ExpectedAttributes]) {
    for expected in table {
        let path = root.join(expected.path);
        let meta = metadata(&path);
        assert_eq!(
            meta.is_dir(),
            expected.is_dir,
            "{} ({label}) is a directory",
            expected.path
        );
        assert_eq!(
            format!("{:#o}", meta.mode() & 0o7777),
            format!("{:#o}", expected.mode),
            "mode of {} ({label})",
            expected.path
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (expected.uid, expected.gid),
            "uid and gid of {} ({label})",
            expected.path
        );
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            expected.mtime,
            "mtime (seconds, nanoseconds) of {} ({label})",
            expected.path
        );
    }
    let link = root.join("tree/link");
    let link_meta = metadata(&link);
    assert!(
        link_meta.file_type().is_symlink(),
        "tree/link ({label}) is not a symlink"
    );
    assert_eq!(
        (link_meta.uid(), link_meta.gid()),
        (NOBODY, NOBODY),
        "uid and gid of the symlink tree/link ({label})"
    );
    assert_eq!(
        fs::read_link(&link).expect("failed to read tree/link"),
        PathBuf::from("private.txt"),
        "target of tree/link ({label})"
    );
}

#[test]
fn chmod_chown_touch_replicate() {
    for program in ["chmod", "chown", "touch"] {
        require_program(program, "coreutils");
    }
    require_program("getfattr", "attr");
    let table = metadata_table();
    let mut mount = Mount::start();
    let mount_path = mount.path().to_path_buf();

    for expected in &table {
        let path = mount_path.join(expected.path);
        if expected.is_dir {
            create_dir(&path);
        } else {
            create_dir(path.parent().expect("entry has a parent"));
            write_file(&path, format!("contents of {}\n", expected.path).as_bytes());
        }
    }
    std::os::unix::fs::symlink("private.txt", mount_path.join("tree/link"))
        .expect("failed to create tree/link");

    // chown before chmod, because chown clears the setuid and setgid bits.
    for expected in &table {
        let owner = format!("{}:{}", expected.uid, expected.gid);
        run(Command::new("chown")
            .arg(&owner)
            .arg(mount_path.join(expected.path)));
    }
    run(Command::new("chown")
        .arg("-h")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(mount_path.join("tree/link")));
    for expected in &table {
        let mode = format!("{:o}", expected.mode);
        run(Command::new("chmod")
            .arg(&mode)
            .arg(mount_path.join(expected.path)));
    }
    // The table lists directories after their children, so no later change
    // inside a directory moves its mtime again.
    for expected in &table {
        run(Command::new("touch")
            .env("TZ", "UTC")
            .arg("-d")
            .arg(expected.touch_date)
            .arg(mount_path.join(expected.path)));
    }

    check_attributes(&mount_path, "mount", &table);

    mount.wait_synced();
    let state = run_stdout(
        Command::new("getfattr")
            .args(["--only-values", "-n", common::STATE_XATTR])
            .arg(&mount_path),
    );
    assert_eq!(
        state,
        "synced",
        "getfattr -n {} {} after wait_synced",
        common::STATE_XATTR,
        mount_path.display()
    );
    mount.unmount();

    check_attributes(mount.local(), "local", &table);
    check_attributes(mount.remote(), "remote", &table);
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after chmod, chown and touch");
}

// ---------------------------------------------------------------------------
// rsync

/// Directories of the rsync sample tree with their modes.
const SAMPLE_DIRS: [(&str, u32); 9] = [
    ("alpha", 0o755),
    ("alpha/beta", 0o700),
    ("alpha/beta/gamma", 0o750),
    ("alpha/beta/gamma/delta", 0o555),
    ("empty", 0o711),
    ("with space", 0o775),
    ("unicode-\u{fc}\u{e9}", 0o2755),
    ("wide", 0o755),
    ("wide/sub", 0o1777),
];

const SAMPLE_FILE_MODES: [u32; 9] = [
    0o644, 0o600, 0o755, 0o400, 0o640, 0o664, 0o700, 0o4755, 0o444,
];

const SAMPLE_FILE_SIZES: [usize; 10] = [
    0, 1, 100, 4_095, 4_096, 4_097, 65_536, 131_073, 10_000, 300_000,
];

const SAMPLE_FILES: usize = 320;

/// Builds the rsync sample tree in `root` (which must exist): nested
/// directories, files with varied sizes, modes and nanosecond mtimes, and
/// relative, absolute and dangling symlinks. Directory times are set last,
/// deepest first.
fn build_sample_tree(root: &Path) {
    for (dir, _) in SAMPLE_DIRS {
        create_dir(&root.join(dir));
    }
    let file_dirs: Vec<&str> = std::iter::once("")
        .chain(
            SAMPLE_DIRS
                .iter()
                .map(|(dir, _)| *dir)
                .filter(|dir| *dir != "empty"),
        )
        .collect();
    for index in 0..SAMPLE_FILES {
        let dir = root.join(file_dirs[index % file_dirs.len()]);
        let path = dir.join(format!("file-{index:03}.dat"));
        let size = SAMPLE_FILE_SIZES[index % SAMPLE_FILE_SIZES.len()];
        write_file(&path, &pseudo_random_bytes(index as u64 + 1, size));
        let mode = SAMPLE_FILE_MODES[index % SAMPLE_FILE_MODES.len()];
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("failed to chmod {}: {e}", path.display()));
        let seconds = 1_000_000_000 + index as i64 * 86_413;
        let nanoseconds = (index as i64 * 7_919_003) % 1_000_000_000;
        set_times(&path, seconds, nanoseconds);
    }

    let symlinks = [
        ("alpha/link-to-file", "../file-000.dat"),
        ("link-to-dir", "alpha/beta"),
        ("alpha/beta/dangling", "does-not-exist"),
        ("absolute-link", "/nonexistent/dualfs/target"),
        ("with space/link with space", "../wide/file-008.dat"),
    ];
    for (link, target) in symlinks {
        let path = root.join(link);
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|e| panic!("failed to create the symlink {}: {e}", path.display()));
        set_times(&path, 1_100_000_000, 5);
    }

    let mut dirs: Vec<(&str, u32)> = SAMPLE_DIRS.to_vec();
    dirs.sort_by_key(|(dir, _)| std::cmp::Reverse(dir.matches('/').count()));
    dirs.push(("", 0o755));
    for (index, (dir, mode)) in dirs.into_iter().enumerate() {
        let path = root.join(dir);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("failed to chmod {}: {e}", path.display()));
        set_times(
            &path,
            1_200_000_000 + index as i64 * 3_600,
            index as i64 * 111_111_111,
        );
    }
}

fn full_comparison() -> CompareOptions {
    CompareOptions {
        skip_left_state_dir: false,
        directory_mtimes: true,
        root_attributes: true,
    }
}

#[test]
fn rsync_round_trip() {
    require_program("rsync", "rsync");
    let scratch = temp_dir("dualfs-rsync-");
    let source = scratch.path().join("source");
    create_dir(&source);
    build_sample_tree(&source);
    let out = scratch.path().join("out");

    let mut mount = Mount::start();
    let inside = mount.path().join("tree");
    // A trailing slash copies the contents and the attributes of the directory.
    let with_slash = |path: &Path| format!("{}/", path.display());
    run(Command::new("rsync")
        .arg("-a")
        .arg(with_slash(&source))
        .arg(with_slash(&inside)));
    let differences = compare_dirs(&source, "source", &inside, "mount", full_comparison());
    assert_no_differences(&differences, "source vs the copy on the mount");

    run(Command::new("rsync")
        .arg("-a")
        .arg(with_slash(&inside))
        .arg(with_slash(&out)));
    let differences = compare_dirs(&source, "source", &out, "copied out", full_comparison());
    assert_no_differences(&differences, "source vs the tree copied out of the mount");

    mount.wait_synced();
    mount.unmount();
    let differences = compare_trees(mount.local(), mount.remote());
    assert_no_differences(&differences, "local vs remote after rsync");
    let differences = compare_dirs(
        &source,
        "source",
        &mount.remote().join("tree"),
        "remote",
        full_comparison(),
    );
    assert_no_differences(&differences, "source vs the remote copy");
}

// ---------------------------------------------------------------------------
// The test harness itself

#[test]
fn mount_guard_cleans_up_on_panic() {
    let (sender, receiver) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let mount = Mount::start();
        let pid = mount.pid().expect("the daemon is running");
        sender
            .send((mount.path().to_path_buf(), pid))
            .expect("failed to send the mount details");
        write_file(
            &mount.path().join("file.txt"),
            b"written before the panic\n",
        );
        panic!("deliberate panic while the mount is active");
    })
    .join();
    assert!(
        outcome.is_err(),
        "the thread that holds the mount did not panic"
    );

    let (mountpoint, pid) = receiver.recv().expect("the mount did not start");
    assert_eq!(
        common::mount_fs_type(&mountpoint),
        None,
        "{} is still mounted after the guard was dropped during a panic",
        mountpoint.display()
    );
    // The guard reaps the daemon, so its pid is free or belongs to another program.
    let executable = fs::read_link(format!("/proc/{pid}/exe")).ok();
    assert_ne!(
        executable.as_deref(),
        Some(Path::new(common::dualfs_binary())),
        "dualfs (pid {pid}) still runs after the guard was dropped during a panic"
    );
}
