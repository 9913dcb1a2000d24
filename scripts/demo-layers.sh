#!/usr/bin/env bash
# A tour of lcfsd without containerd, as root: builds lcfsd, starts it on a sparse device
# file, creates a layer through the API, writes into it through the mount, commits it, creates
# a child that sees the parent's files, then stops the daemon and checks the device.
# DEVICE, SIZE, MOUNTPOINT and SOCKET may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-/var/tmp/lcfs/disk.img}
SIZE=${SIZE:-10G}
MOUNTPOINT=${MOUNTPOINT:-/var/tmp/lcfs/mnt}
SOCKET=${SOCKET:-/var/tmp/lcfs/api.sock}
LCFSD=./target/release/lcfsd

cargo build --release --locked -p lcfsd
mkdir -p "$(dirname "$DEVICE")"
"$LCFSD" run --device "$DEVICE" --size "$SIZE" --mountpoint "$MOUNTPOINT" --api-socket "$SOCKET" \
    2> "$(dirname "$DEVICE")/lcfsd.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$LCFSD" layer list --api-socket "$SOCKET" >/dev/null 2>&1 && break
    sleep 0.1
done

stamp=$(date +%s)
"$LCFSD" layer create "base-$stamp" --api-socket "$SOCKET"
echo "hello from lcfs" > "$MOUNTPOINT/base-$stamp/hello.txt"
"$LCFSD" layer commit "base-$stamp" "base-$stamp-committed" --api-socket "$SOCKET"
"$LCFSD" layer create "child-$stamp" --parent "base-$stamp-committed" --api-socket "$SOCKET"
echo "child sees: $(cat "$MOUNTPOINT/child-$stamp/hello.txt")"
"$LCFSD" layer list --api-socket "$SOCKET"

kill -TERM $daemon
wait $daemon
trap - EXIT
"$LCFSD" fsck --device "$DEVICE"
cat <<TXT

device:     $DEVICE
mountpoint: $MOUNTPOINT (unmounted now; start again with:
            $LCFSD run --device $DEVICE --mountpoint $MOUNTPOINT --api-socket $SOCKET)
log:        $(dirname "$DEVICE")/lcfsd.log
TXT
