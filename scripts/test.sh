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
# The mount(8) tests run the helper binary, which cargo test does not build for them.
cargo build --release -p mount-helper
cargo test --release --workspace --all-targets

# The default mode is sync; async mode lets writers race ahead of the remote, which is where
# ordering bugs show, so the workloads and the restarts run in both.
DUALFS_TEST_MODE=async cargo test --release --test workloads --test semantics --test restart
