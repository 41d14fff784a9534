#!/usr/bin/env bash
# Builds dualfs and installs it as /usr/local/bin/dualfs, with the mount(8) helper as
# /sbin/mount.fuse.dualfs, so `mount -t fuse.dualfs` and fstab lines work. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p dualfs -p mount-helper
install -m 755 target/release/dualfs /usr/local/bin/dualfs
install -m 755 target/release/mount-fuse-dualfs /sbin/mount.fuse.dualfs
echo "installed /usr/local/bin/dualfs and /sbin/mount.fuse.dualfs"
