#!/usr/bin/env bash
# Builds dualfs, mounts it over two fresh directories, unpacks a real source tree through the
# mount, then prints the sync state of a few paths and compares the remote tree with the local
# one. Needs root (for mount(2) and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh must run as root: dualfs mounts with mount(2) and /dev/fuse" >&2
    exit 1
fi
bash scripts/install-deps.sh
cargo build --release --quiet
dualfs=$PWD/target/release/dualfs

work=$(mktemp -d /tmp/dualfs-demo.XXXXXX)
mkdir "$work/local" "$work/remote" "$work/mnt"
"$dualfs" mount --local "$work/local" --remote "$work/remote" "$work/mnt" 2>"$work/dualfs.log" &
daemon=$!

cleanup() {
    if kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        wait "$daemon" || true
    fi
    if mountpoint -q "$work/mnt"; then umount -l "$work/mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 100); do
    if grep -q " $work/mnt .* fuse.dualfs " /proc/self/mountinfo; then break; fi
    if ! kill -0 "$daemon" 2>/dev/null; then cat "$work/dualfs.log" >&2; exit 1; fi
    sleep 0.1
done

# The largest crate that cargo downloaded for this build is a real source tree, usually of
# hundreds of files (a .crate file is a tar.gz).
crate=$(ls -S "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/*.crate | sed -n 1p)
echo "== unpacking $(basename "$crate") into the mount"
tar -xzf "$crate" -C "$work/mnt"
tree=$(basename "$crate" .crate)
echo "   $(find "$work/mnt/$tree" | wc -l) entries written"

for _ in $(seq 600); do
    [[ $(getfattr --absolute-names --only-values -n user.dualfs.state "$work/mnt") == synced ]] && break
    sleep 0.1
done

echo "== sync state of the mount root"
"$dualfs" status "$work/mnt"
echo "== sync state of a file, as JSON"
"$dualfs" status --json "$work/mnt/$tree/Cargo.toml"
echo "== getfattr on a directory"
getfattr --absolute-names -n user.dualfs.state "$work/mnt/$tree"

echo "== unmounting (SIGTERM)"
kill -TERM "$daemon"
wait "$daemon"

echo "== comparing the remote tree with the local tree"
listing() {
    (cd "$1" && find . -path ./.dualfs -prune -o -printf '%p %y %m %U %G %s %T@ %l\n' | sort)
}
if diff <(listing "$work/local") <(listing "$work/remote") >/dev/null &&
    diff -r --no-dereference --exclude=.dualfs "$work/local" "$work/remote" >/dev/null; then
    echo "identical: $(listing "$work/remote" | wc -l) entries (names, types, modes, owners, sizes, mtimes, contents)"
else
    echo "the trees differ:" >&2
    diff <(listing "$work/local") <(listing "$work/remote") | head -20 >&2
    exit 1
fi
