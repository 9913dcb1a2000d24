#!/usr/bin/env bash
# Builds lcfsd, formats a device file and checks it: the main job until the daemon serves
# (see README.md). DEVICE and SIZE may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-/var/tmp/lcfs/disk.img}
SIZE=${SIZE:-10G}

cargo build --release --locked -p lcfsd
mkdir -p "$(dirname "$DEVICE")"
if [ -e "$DEVICE" ]; then
    echo "$DEVICE exists; checking it instead of formatting"
else
    ./target/release/lcfsd format --device "$DEVICE" --size "$SIZE"
fi
./target/release/lcfsd fsck --device "$DEVICE"
