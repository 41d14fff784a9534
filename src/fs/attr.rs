//! Conversion of backing attributes into the attributes the kernel is given.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use super::inode::ROOT;
use crate::backend::{Side, Stat};

/// Remote-only entries get inode numbers with the top bit set, so they never collide with
/// the local tree's numbers, which they would otherwise share a namespace with.
const REMOTE_INO_BIT: u64 = 1 << 63;

/// Stands in for a backing inode number 1 below the root (a tmpfs root mounted inside a
/// tree), because FUSE reserves node id 1 for the mount root.
const INO_ONE_STAND_IN: u64 = (1 << 62) | 1;

/// The inode number shown by `stat` and `readdir` for a backing file below the root; fuser
/// also uses it as the node id.
pub fn visible_ino(side: Side, ino: u64) -> u64 {
    let ino = if ino == ROOT { INO_ONE_STAND_IN } else { ino };
    match side {
        Side::Local => ino,
        Side::Remote => ino | REMOTE_INO_BIT,
    }
}

pub fn file_type_of_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn file_type_of_dirent(d_type: u8) -> Option<FileType> {
    Some(match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_REG => FileType::RegularFile,
        _ => return None,
    })
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

/// Converts backing attributes; `id` is the node id (the inode number the kernel shows).
pub fn to_file_attr(id: u64, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type_of_mode(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Converts a time for utimensat: `None` leaves it unchanged.
pub fn to_timespec(time: Option<fuser::TimeOrNow>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(fuser::TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(fuser::TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(before) => {
                let d = before.duration();
                let mut sec = -(d.as_secs() as i64);
                let mut nsec = d.subsec_nanos() as i64;
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_times_round_trip() {
        let t = UNIX_EPOCH - Duration::new(10, 250_000_000);
        let ts = to_timespec(Some(fuser::TimeOrNow::SpecificTime(t)));
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-11, 750_000_000));
        assert_eq!(time(ts.tv_sec, ts.tv_nsec), t);
    }

    #[test]
    fn remote_inodes_do_not_collide_with_local() {
        assert_ne!(visible_ino(Side::Local, 5), visible_ino(Side::Remote, 5));
    }
}
