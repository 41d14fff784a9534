//! faultfs: a passthrough FUSE filesystem that injects faults, for tests.
//!
//! It mirrors a backing directory and applies rules from a control file to each request:
//! fail it with an errno, delay it, hold it until the rule is removed, or act as a full
//! disk. It counts requests per operation so tests can check which calls reached it.
//! [`FaultFs`] mounts it inside a test process; the `faultfs` binary mounts it in the
//! foreground.

mod control;
mod fs;
mod guard;
pub mod mount;
mod nodes;
pub mod rules;

pub use control::{stats_path, Control, Counters};
pub use fs::Shared;
pub use guard::FaultFs;
pub use mount::{mount, unmount, MountOptions, Mounted};
pub use rules::Op;
