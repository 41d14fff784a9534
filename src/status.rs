//! `dualfs status PATH`: reads the virtual sync-state attributes of a path on a mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cli::StatusArgs;
use crate::fs::xattr::{PATH_ATTRIBUTES, ROOT_ATTRIBUTES};

/// Names a file type that carries no sync-state attributes.
fn describe(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "device node"
    }
}

/// Reads one attribute; `Ok(None)` when the path does not have it.
fn read_attribute(path: &Path, name: &str) -> Result<Option<String>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let c_name = CString::new(name)?;
    let mut buf = vec![0u8; 4096];

    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let len = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            Some(libc::ENOTSUP) => bail!(
                "{} is not on a dualfs mount (its filesystem has no user.dualfs attributes)",
                path.display()
            ),
            _ => Err(err).with_context(|| format!("reading {name} of {} failed", path.display())),
        };
    }
    buf.truncate(len as usize);
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    // Linux keeps user.* attributes off everything but files and directories, so the state
    // of a FIFO, socket or device node cannot be read, while a symlink's would be its target's.
    let metadata = std::fs::symlink_metadata(&args.path)
        .with_context(|| format!("cannot read {}", args.path.display()))?;
    if !metadata.is_file() && !metadata.is_dir() {
        let kind = describe(metadata.file_type());
        bail!(
            "{} is a {kind}, and Linux allows user.* attributes only on files and directories; \
             run dualfs status on its directory instead",
            args.path.display()
        );
    }
    let mut values = Vec::new();
    for name in PATH_ATTRIBUTES.iter().chain(ROOT_ATTRIBUTES) {
        if let Some(value) = read_attribute(&args.path, name)? {
            values.push((name.trim_start_matches("user.dualfs."), value));
        }
    }
    if values.is_empty() {
        bail!(
            "{} is not on a dualfs mount (no user.dualfs.state attribute)",
            args.path.display()
        );
    }

    if args.json {
        let mut object = serde_json::Map::new();
        object.insert(
            "path".into(),
            serde_json::Value::String(args.path.display().to_string()),
        );
        for (key, value) in &values {
            let json = match value.parse::<u64>() {
                Ok(number) if key.starts_with("pending") => serde_json::Value::from(number),
                _ => serde_json::Value::String(value.clone()),
            };
            object.insert((*key).to_string(), json);
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!("{:<14} {}", "path:", args.path.display());
        for (key, value) in &values {
            println!("{:<14} {}", format!("{key}:"), value);
        }
    }
    Ok(ExitCode::SUCCESS)
}
