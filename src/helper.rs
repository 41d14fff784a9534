//! The mount(8) calling convention: `dualfs SOURCE MOUNTPOINT -o OPTIONS`.
//!
//! mount(8) runs `/sbin/mount.fuse.dualfs SOURCE DIR -o OPTS` for `-t fuse.dualfs` (and
//! `mount.fuse3` runs `dualfs SOURCE DIR -o OPTS`). SOURCE is `local=DIR,remote=DIR`. The
//! options that mount and fstab add for every filesystem are dropped, the rest become
//! `dualfs mount` flags, and unknown ones are rejected. The daemon is started in the
//! background and the helper returns once the mount is live, or fails with mount's exit code
//! 32 and the reason on stderr.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// mount(8) exit codes.
const EXIT_USAGE: u8 = 1;
const EXIT_MOUNT_FAILURE: u8 = 32;

/// How long the helper waits for the daemon to mount.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options mount(8), mount.fuse3 and fstab pass for any filesystem; dualfs has no use for them
/// (it always mounts nosuid,nodev).
const DROPPED: &[&str] = &[
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "_netdev", "nofail", "auto", "noauto", "user",
    "users", "defaults", "relatime",
];

/// Options that map to a `dualfs mount` flag taking a value.
const WITH_VALUE: &[(&str, &str)] = &[
    ("mode", "--mode"),
    ("remote_timeout", "--remote-timeout"),
    ("coalesce_window", "--coalesce-window"),
    ("journal_sync", "--journal-sync"),
    ("entry_ttl", "--entry-ttl"),
    ("attr_ttl", "--attr-ttl"),
    ("cache_ttl", "--cache-ttl"),
    ("cache_size", "--cache-size"),
    ("threads", "--threads"),
    ("workers", "--workers"),
    ("drain_timeout", "--drain-timeout"),
    ("metrics_addr", "--metrics-addr"),
    ("log_format", "--log-format"),
];

/// Options that map to a `dualfs mount` switch.
const SWITCHES: &[(&str, &str)] = &[
    ("allow_other", "--allow-other"),
    ("hydrate", "--hydrate"),
    ("no_mirror_owner", "--no-mirror-owner"),
    ("no_passthrough", "--no-passthrough"),
];

/// The translated command line of `dualfs mount`.
#[derive(Debug, PartialEq, Eq)]
pub struct Translated {
    pub local: PathBuf,
    pub remote: PathBuf,
    pub flags: Vec<String>,
}

/// Translates mount(8)'s source and options into `dualfs mount` arguments.
pub fn translate(source: &str, options: &[String]) -> Result<Translated, String> {
    let mut local = None;
    let mut remote = None;
    let mut flags = Vec::new();

    let source_items = source
        .split(',')
        .filter(|s| !s.is_empty() && *s != "dualfs");
    let option_items = options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.is_empty());
    for item in source_items.chain(option_items) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if DROPPED.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        match (key, value) {
            ("local", Some(dir)) => local = Some(PathBuf::from(dir)),
            ("remote", Some(dir)) => remote = Some(PathBuf::from(dir)),
            ("ro", _) => {
                return Err("option ro: dualfs mounts are always read-write; remove ro".into())
            }
            _ => {
                if let Some((_, flag)) = WITH_VALUE.iter().find(|(name, _)| *name == key) {
                    let value = value
                        .ok_or_else(|| format!("option {key} needs a value, as in {key}=VALUE"))?;
                    flags.push(flag.to_string());
                    flags.push(value.to_string());
                } else if let Some((_, flag)) = SWITCHES.iter().find(|(name, _)| *name == key) {
                    if value.is_some() {
                        return Err(format!("option {key} takes no value; write just {key}"));
                    }
                    flags.push(flag.to_string());
                } else {
                    return Err(unknown_option(item));
                }
            }
        }
    }

    let local = local.ok_or("missing local=DIR in the source or the options (source example: local=/mnt/efs-local,remote=/mnt/efs-core)")?;
    let remote = remote.ok_or("missing remote=DIR in the source or the options (source example: local=/mnt/efs-local,remote=/mnt/efs-core)")?;
    Ok(Translated {
        local,
        remote,
        flags,
    })
}

fn unknown_option(item: &str) -> String {
    let mut known: Vec<&str> = WITH_VALUE.iter().map(|(name, _)| *name).collect();
    known.extend(SWITCHES.iter().map(|(name, _)| *name));
    format!(
        "unknown option {item:?}; dualfs accepts local=, remote=, {} and ignores {} and x-*",
        known.join(", "),
        DROPPED.join(", ")
    )
}

/// Splits `SOURCE MOUNTPOINT [-o OPTIONS]...` as mount(8) passes them; `-n`, `-v`, `-f`
/// (mount's no-mtab, verbose and fake flags) are accepted and ignored.
fn parse_args(args: &[OsString]) -> Result<(String, PathBuf, Vec<String>), String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "-o" {
            let value = iter.next().ok_or("-o needs a list of options")?;
            options.push(value.to_string_lossy().into_owned());
        } else if let Some(value) = text.strip_prefix("-o") {
            options.push(value.to_string());
        } else if matches!(text.as_ref(), "-n" | "-v" | "-f" | "-s") {
            continue;
        } else {
            positional.push(arg.clone());
        }
    }
    match positional.as_slice() {
        [source, mountpoint] => Ok((
            source.to_string_lossy().into_owned(),
            PathBuf::from(mountpoint),
            options,
        )),
        _ => Err("usage: mount.fuse.dualfs local=DIR,remote=DIR MOUNTPOINT [-o OPTIONS]".into()),
    }
}

/// Whether `args` (without the program name) follow mount(8)'s convention rather than a
/// `dualfs` subcommand.
pub fn is_mount_convention(args: &[OsString]) -> bool {
    let Some(first) = args.first().map(|a| a.to_string_lossy()) else {
        return false;
    };
    first.contains("local=") || first.contains("remote=") || first == "dualfs"
}

/// Runs the helper: translates, starts the daemon in the background, waits for the mount.
pub fn run(args: &[OsString]) -> ExitCode {
    let (source, mountpoint, options) = match parse_args(args) {
        Ok(parsed) => parsed,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    let translated = match translate(&source, &options) {
        Ok(translated) => translated,
        Err(message) => return fail(EXIT_USAGE, &message),
    };
    let log_path = match log_path(&mountpoint) {
        Ok(path) => path,
        Err(message) => return fail(EXIT_MOUNT_FAILURE, &message),
    };

    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!("cannot find the dualfs binary: {err}"),
            )
        }
    };
    let log = match OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(log) => log,
        Err(err) => {
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!("cannot open the log {}: {err}", log_path.display()),
            )
        }
    };
    let log_start = log.metadata().map_or(0, |m| m.len());
    let log_stdout = match log.try_clone() {
        Ok(log) => log,
        Err(err) => {
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!("cannot duplicate the log: {err}"),
            )
        }
    };

    let mut command = Command::new(exe);
    command
        .arg("mount")
        .arg("--local")
        .arg(&translated.local)
        .arg("--remote")
        .arg(&translated.remote)
        .args(&translated.flags)
        .arg(&mountpoint)
        .stdin(Stdio::null())
        .stdout(log_stdout)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and only detaches the child from the helper's
    // session, so the daemon outlives mount(8).
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!("cannot start the daemon: {err}"),
            )
        }
    };

    let started = Instant::now();
    loop {
        if mount_is_live(&mountpoint) {
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = last_lines(&log_path, log_start, 5);
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!("the dualfs daemon exited with {status} before mounting:\n{tail}"),
            );
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = child.kill();
            return fail(
                EXIT_MOUNT_FAILURE,
                &format!(
                    "{} was not mounted within {READY_TIMEOUT:?}; see {}",
                    mountpoint.display(),
                    log_path.display()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Returns where the daemon of `mountpoint` logs: /run/dualfs/<mount point with / as ->.log.
fn log_path(mountpoint: &Path) -> Result<PathBuf, String> {
    let dir = PathBuf::from("/run/dualfs");
    fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let name = absolute
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "-");
    Ok(dir.join(format!("{name}.log")))
}

/// Whether a live dualfs mount is at `mountpoint`: listed as fuse.dualfs and answering.
pub(crate) fn mount_is_live(mountpoint: &Path) -> bool {
    let Ok(absolute) = fs::canonicalize(mountpoint) else {
        return false;
    };
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let listed = mountinfo.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4).map(|p| p.replace("\\040", " ")).as_deref() == absolute.to_str()
            && fields.get(separator + 1) == Some(&"fuse.dualfs")
    });
    listed && fs::read_dir(&absolute).is_ok()
}

/// Returns the last `count` lines written to the log after byte `start`.
fn last_lines(path: &Path, start: u64, count: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let fresh = bytes.get(start as usize..).unwrap_or_default();
    let text = String::from_utf8_lossy(fresh);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("mount.fuse.dualfs: {message}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Every option of `dualfs mount` can be given through mount(8), except the ones that
    /// only make sense for a command run by hand.
    #[test]
    fn every_mount_option_has_a_helper_name() {
        use clap::Args;
        const BY_HAND_ONLY: &[&str] = &[
            "--local",
            "--remote",
            "--takeover",
            "--handover-socket",
            "--after-handover",
        ];
        let command = crate::cli::MountArgs::augment_args(clap::Command::new("mount"));
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            if BY_HAND_ONLY.contains(&flag.as_str()) || long == "help" {
                continue;
            }
            let known = WITH_VALUE.iter().chain(SWITCHES).any(|(_, f)| *f == flag);
            assert!(known, "{flag} has no mount(8) option name in the helper");
        }
    }

    #[test]
    fn source_and_options_become_flags() {
        let translated = translate(
            "local=/mnt/a,remote=/mnt/b",
            &strings(&[
                "rw,_netdev,nofail,x-systemd.automount,mode=async,allow_other,remote_timeout=2s",
            ]),
        )
        .unwrap();
        assert_eq!(translated.local, PathBuf::from("/mnt/a"));
        assert_eq!(translated.remote, PathBuf::from("/mnt/b"));
        assert_eq!(
            translated.flags,
            strings(&["--mode", "async", "--allow-other", "--remote-timeout", "2s"])
        );
    }

    #[test]
    fn mount_fuse3_additions_dropped() {
        let translated = translate("local=/a,remote=/b", &strings(&["dev,suid,defaults"])).unwrap();
        assert!(translated.flags.is_empty());
    }

    #[test]
    fn unknown_option_rejected_with_the_known_ones() {
        let err = translate("local=/a,remote=/b", &strings(&["compress=zstd"])).unwrap_err();
        assert!(err.contains("unknown option \"compress=zstd\""), "{err}");
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn missing_remote_rejected() {
        let err = translate("local=/a", &[]).unwrap_err();
        assert!(err.contains("missing remote=DIR"), "{err}");
    }

    #[test]
    fn value_and_switch_misuse_rejected() {
        assert!(translate("local=/a,remote=/b", &strings(&["mode"])).is_err());
        assert!(translate("local=/a,remote=/b", &strings(&["allow_other=1"])).is_err());
        assert!(translate("local=/a,remote=/b", &strings(&["ro"])).is_err());
    }

    #[test]
    fn args_parse_in_mount_order() {
        let args: Vec<OsString> = ["local=/a,remote=/b", "/data", "-o", "rw,mode=sync", "-n"]
            .iter()
            .map(OsString::from)
            .collect();
        let (source, mountpoint, options) = parse_args(&args).unwrap();
        assert_eq!(source, "local=/a,remote=/b");
        assert_eq!(mountpoint, PathBuf::from("/data"));
        assert_eq!(options, strings(&["rw,mode=sync"]));
        assert!(is_mount_convention(&args));
    }
}
