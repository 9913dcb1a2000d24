#!/usr/bin/env bash
# The Linux quick start, as root on Debian or Ubuntu: builds and installs lcfsd, installs
# containerd (and runc, busybox-static) from the distribution if missing, starts lcfsd on a
# sparse device file (a systemd unit where systemd runs, a plain process otherwise), adds lcfs
# as a proxy snapshotter to containerd's config without touching the rest, restarts containerd
# if its config changed, imports a small busybox image built here, runs a container on lcfs,
# and prints what it did and where everything lives. Running it again changes nothing that is
# already in place. scripts/uninstall.sh undoes it.
#
# Environment: LCFS_SIZE (device size when it is created, default 20G).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/install.sh
. "$ROOT/scripts/lib/install.sh"

SIZE=${LCFS_SIZE:-20G}
CHANGED=()
changed() { CHANGED+=("$*"); log "$*"; }

[ "$(id -u)" -eq 0 ] || die "run as root: it installs packages, a service and containerd's config"
command -v apt-get >/dev/null || die "this quick start is for Debian or Ubuntu (apt-get not found)"
command -v cargo >/dev/null || die "cargo is not installed; install a Rust toolchain (1.95 or later) first"

# 1. Packages -------------------------------------------------------------------------------
missing=()
for pair in containerd:containerd ctr:containerd runc:runc python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    missing+=(busybox-static)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    changed "installed ${missing[*]} from the distribution"
fi

# 2. lcfsd ----------------------------------------------------------------------------------
log "building lcfsd (cargo build --release)"
# The binary's path comes from cargo itself, so a CARGO_TARGET_DIR of the user's is honoured.
built=$( (cd "$ROOT" && cargo build --release --locked -p lcfsd --message-format=json-render-diagnostics) \
    2> >(grep -v '^\s*\(Compiling\|Finished\|Downloaded\|Downloading\)' >&2) |
    grep -o '"executable":"[^"]*/lcfsd"' | tail -n 1 | cut -d '"' -f 4) || true
[ -n "$built" ] && [ -x "$built" ] || die "cargo build --release -p lcfsd did not produce lcfsd (its errors are above)"
binary_changed=false
if ! cmp -s "$built" "$LCFSD_BIN"; then
    install -m 0755 "$built" "$LCFSD_BIN"
    binary_changed=true
    changed "installed $LCFSD_BIN"
fi
mkdir -p "$STATE_DIR"

if has_systemd; then
    unit=$(lcfsd_unit "$SIZE")
    if [ "$(cat "$UNIT_FILE" 2>/dev/null)" != "$unit" ]; then
        printf '%s\n' "$unit" >"$UNIT_FILE"
        systemctl daemon-reload
        changed "wrote $UNIT_FILE"
        binary_changed=true
    fi
    systemctl enable --quiet lcfsd.service
    if ! systemctl is-active --quiet lcfsd.service; then
        systemctl start lcfsd.service
        changed "started lcfsd.service"
    elif $binary_changed; then
        systemctl restart lcfsd.service
        changed "restarted lcfsd.service"
    fi
else
    if lcfsd_running && $binary_changed; then
        stop_plain_lcfsd
        changed "stopped the old lcfsd"
    fi
    if ! lcfsd_running; then
        start_plain_lcfsd "$SIZE"
        changed "started lcfsd (pid $(cat "$PID_FILE"), log $LOG_FILE)"
    fi
fi
wait_for "lcfsd" 30 lcfsd_answers

# 3. containerd -----------------------------------------------------------------------------
config_changed=false
mkdir -p "$(dirname "$CONTAINERD_CONFIG")"
if [ ! -e "$CONTAINERD_CONFIG" ]; then
    printf 'version = %s\n' "$(containerd_config_version)" >"$CONTAINERD_CONFIG"
    touch "$STATE_DIR/created-containerd-config"
    changed "created $CONTAINERD_CONFIG"
fi
if [ "$(config_block_in "$CONTAINERD_CONFIG")" != "$(config_block)" ]; then
    if remove_config_block <"$CONTAINERD_CONFIG" | grep -q '^[[:space:]]*\[proxy_plugins\.lcfs\]'; then
        die "$CONTAINERD_CONFIG already defines [proxy_plugins.lcfs] outside lcfs's block; remove it and run again"
    fi
    tmp=$(mktemp "$CONTAINERD_CONFIG.XXXXXX")
    { remove_config_block <"$CONTAINERD_CONFIG"; printf '\n%s\n' "$(config_block)"; } >"$tmp"
    chmod --reference="$CONTAINERD_CONFIG" "$tmp"
    mv "$tmp" "$CONTAINERD_CONFIG"
    config_changed=true
    changed "added the lcfs proxy snapshotter to $CONTAINERD_CONFIG"
fi
if $config_changed || ! containerd_answers; then
    restart_containerd
    changed "restarted containerd"
fi
wait_for "containerd" 30 containerd_answers
# containerd dials the snapshotter lazily and with backoff; wait until it reaches lcfs.
wait_for "containerd's connection to lcfs" 30 ctr_ snapshots --snapshotter lcfs ls

# 4. An image and a container ---------------------------------------------------------------
if ! ctr_ images ls -q | grep -qx "$IMAGE"; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
    chmod 1777 "$work/rootfs/tmp"
    cp /bin/busybox "$work/rootfs/bin/busybox"
    for applet in sh ls cat echo df mount stat uname; do ln -s busybox "$work/rootfs/bin/$applet"; done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$work/rootfs/etc/passwd"
    printf 'root:x:0:\n' >"$work/rootfs/etc/group"
    tar --numeric-owner --owner=0 --group=0 --mtime=@1700000000 -C "$work/rootfs" -cf "$work/layer.tar" .
    python3 "$ROOT/scripts/lib/oci-image.py" "$work/image.tar" "$IMAGE" '["/bin/sh"]' "$work/layer.tar"
    ctr_ images import --snapshotter lcfs "$work/image.tar" >/dev/null
    changed "imported $IMAGE (busybox from Debian's busybox-static) into containerd, unpacked on lcfs"
fi
log "running a container on lcfs"
output=$(ctr_ run --rm --snapshotter lcfs "$IMAGE" "lcfs-quickstart-$$" /bin/sh -c \
    'echo "hello from a container whose root file system is on lcfs"; df -h / | tail -1')

# 5. What happened --------------------------------------------------------------------------
echo
if [ "${#CHANGED[@]}" -eq 0 ]; then
    echo "Nothing changed: everything was already in place."
else
    echo "What this run did:"
    printf '  - %s\n' "${CHANGED[@]}"
fi
cat <<TXT

The container said:
$(printf '%s\n' "$output" | sed 's/^/  /')

Where everything lives:
  lcfsd            $LCFSD_BIN ($(if has_systemd; then echo "systemd unit $UNIT_FILE"; else echo "plain process, pid $(cat "$PID_FILE"), log $LOG_FILE"; fi))
  device           $DEVICE (sparse file)
  layers           $MOUNTPOINT/<layer> (the FUSE mount)
  lcfs API         $API_SOCKET     (lcfsd layer list --api-socket $API_SOCKET)
  snapshotter      $SNAPSHOTTER_SOCKET
  containerd       $CONTAINERD_CONFIG (lcfs's block is marked; the rest is untouched)

Try:
  ctr run --rm --snapshotter lcfs $IMAGE demo /bin/sh -c 'ls /'
  ctr snapshots --snapshotter lcfs ls
Undo with scripts/uninstall.sh (add --purge to delete the device too).
TXT
