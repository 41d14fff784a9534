//! dualfs: a FUSE filesystem that applies every change to a local tree and mirrors it into a
//! remote tree, serving reads locally with a remote fallback.

pub mod backend;
pub mod cli;
pub mod fs;
pub mod helper;
pub mod metrics;
pub mod mount;
pub mod replication;
pub mod status;
pub mod supervisor;
pub mod verify;

/// The reserved folder at the local root that holds dualfs's own state; it is hidden and
/// unreachable through the mount, and never copied to the remote.
pub const STATE_DIR: &str = ".dualfs";
