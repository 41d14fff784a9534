#!/usr/bin/env bash
# Runs dualfs's test suite: unit tests, then integration tests that mount the real filesystem
# (root and /dev/fuse required) and compare the remote tree with the local one after each
# workload, then pjdfstest on a mount.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "test.sh must run as root: the integration tests mount FUSE filesystems" >&2
    exit 1
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo test --release --all-targets
