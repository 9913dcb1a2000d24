#!/usr/bin/env bash
# Undoes scripts/quickstart.sh, as root: removes the quick start's image from containerd,
# takes lcfs's block out of containerd's config (deleting the file if the quick start created
# it and nothing else was added) and restarts containerd, stops lcfsd and removes its service
# and binary. The device file stays unless --purge is given. Packages installed from the
# distribution (containerd, runc, busybox-static) stay installed.
#
# Usage: scripts/uninstall.sh [--purge]
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/install.sh
. "$ROOT/scripts/lib/install.sh"

PURGE=false
case "${1:-}" in
    "") ;;
    --purge) PURGE=true ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (use --purge to delete the device too)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "run as root"

if command -v ctr >/dev/null && containerd_answers >/dev/null 2>&1; then
    if ctr_ images ls -q | grep -qx "$IMAGE"; then
        ctr_ images rm --sync "$IMAGE" >/dev/null
        log "removed $IMAGE from containerd"
    fi
    left=$(ctr_ snapshots --snapshotter lcfs ls 2>/dev/null | tail -n +2 | wc -l)
    [ "$left" -eq 0 ] || log "containerd still has $left snapshots on lcfs (other images or containers); they go with lcfs"
fi

if [ -n "$(config_block_in "$CONTAINERD_CONFIG")" ]; then
    tmp=$(mktemp "$CONTAINERD_CONFIG.XXXXXX")
    remove_config_block <"$CONTAINERD_CONFIG" >"$tmp"
    chmod --reference="$CONTAINERD_CONFIG" "$tmp"
    mv "$tmp" "$CONTAINERD_CONFIG"
    log "removed lcfs's block from $CONTAINERD_CONFIG"
    if [ -e "$STATE_DIR/created-containerd-config" ] &&
        [ "$(cat "$CONTAINERD_CONFIG")" = "version = $(containerd_config_version)" ]; then
        rm -f "$CONTAINERD_CONFIG"
        log "removed $CONTAINERD_CONFIG (the quick start had created it)"
    fi
    rm -f "$STATE_DIR/created-containerd-config"
    if has_systemd || [ -n "$(containerd_pid)" ]; then
        restart_containerd
        log "restarted containerd"
    fi
fi

if has_systemd && [ -e "$UNIT_FILE" ]; then
    systemctl disable --now --quiet lcfsd.service || true
    rm -f "$UNIT_FILE"
    systemctl daemon-reload
    log "stopped lcfsd.service and removed $UNIT_FILE"
elif plain_lcfsd_pid >/dev/null; then
    stop_plain_lcfsd
    log "stopped lcfsd"
fi
if [ -e "$LCFSD_BIN" ]; then
    rm -f "$LCFSD_BIN"
    log "removed $LCFSD_BIN"
fi
rmdir "$RUN_DIR" 2>/dev/null || true

if $PURGE; then
    if mountpoint -q "$MOUNTPOINT"; then
        umount "$MOUNTPOINT" 2>/dev/null || umount -l "$MOUNTPOINT"
    fi
    rm -rf --one-file-system "$STATE_DIR"
    log "deleted $STATE_DIR (the device and everything on it)"
elif [ -e "$DEVICE" ]; then
    log "kept $DEVICE; delete it with scripts/uninstall.sh --purge"
fi
echo "lcfs is uninstalled."
