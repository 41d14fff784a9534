//! Acting with the caller's identity when creating entries.
//!
//! The daemon runs as root; new files, directories and links must still belong to the caller
//! and follow the backing's rules for set-group-ID directories. `setfsuid`/`setfsgid` change
//! the identity of the calling thread only (they are raw system calls, not broadcast to all
//! threads as `setuid` is), so other requests served in parallel are unaffected.
//!
//! NOTE: supplementary groups are not switched, so creating a set-group-ID file in a directory
//! whose group the caller belongs to only through a supplementary group clears the bit.

/// Restores the daemon's filesystem identity on drop.
pub struct CallerIdentity {
    switched: bool,
}

impl CallerIdentity {
    /// Switches the calling thread's filesystem uid and gid to the caller's.
    pub fn assume(uid: u32, gid: u32) -> CallerIdentity {
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        if !is_root || (uid == 0 && gid == 0) {
            return CallerIdentity { switched: false };
        }

        // SAFETY: setfsgid/setfsuid only change this thread's filesystem identity; the group
        // goes first because a non-root fsuid may no longer change it.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        CallerIdentity { switched: true }
    }
}

impl Drop for CallerIdentity {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: restores root's filesystem identity on this thread; the fsuid goes first
            // so that the capability to change the group is back.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}
