#!/usr/bin/env bash
# Installs the Debian packages that dualfs's demo and tests use, when any is missing.
set -euo pipefail

packages=(fuse3 attr rsync sqlite3 git tar gzip xz-utils coreutils findutils procps stress-ng python3 python3-venv)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install a Rust toolchain (rustup, Rust 1.85 or newer) first" >&2
    exit 1
fi
