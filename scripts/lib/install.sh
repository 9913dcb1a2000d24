# Shared by scripts/quickstart.sh and scripts/uninstall.sh: where the Linux installation of
# lcfs lives, and how lcfsd and containerd are started and stopped, with systemd where it runs
# and as plain processes otherwise.

LCFSD_BIN=/usr/local/bin/lcfsd
STATE_DIR=/var/lib/lcfs
DEVICE=$STATE_DIR/disk.img
MOUNTPOINT=$STATE_DIR/mnt
RUN_DIR=/run/lcfs
API_SOCKET=$RUN_DIR/api.sock
SNAPSHOTTER_SOCKET=$RUN_DIR/snapshotter.sock
PID_FILE=$RUN_DIR/lcfsd.pid
CONTAINERD_PID_FILE=$RUN_DIR/containerd.pid
LOG_FILE=/var/log/lcfsd.log
CONTAINERD_LOG_FILE=/var/log/containerd.log
UNIT_FILE=/etc/systemd/system/lcfsd.service
CONTAINERD_CONFIG=/etc/containerd/config.toml
CONTAINERD_SOCKET=/run/containerd/containerd.sock
IMAGE=lcfs.local/busybox:latest
BLOCK_BEGIN='# >>> lcfs snapshotter: added by scripts/quickstart.sh, removed by scripts/uninstall.sh'
BLOCK_END='# <<< lcfs snapshotter'

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

has_systemd() { [ -d /run/systemd/system ]; }

ctr_() { ctr --address "$CONTAINERD_SOCKET" "$@"; }

# Runs the command until it succeeds, for up to $2 seconds.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what is not ready after ${secs}s (logs: $LOG_FILE, $CONTAINERD_LOG_FILE, or journalctl)"
}

lcfsd_args() {   # size
    printf '%s\n' run --device "$DEVICE" --size "$1" --mountpoint "$MOUNTPOINT" \
        --api-socket "$API_SOCKET" --snapshotter-socket "$SNAPSHOTTER_SOCKET" \
        --containerd-root "$(containerd_root)"
}

# containerd's root directory (its content store is below it): the top-level `root` of its
# config, or containerd's default.
containerd_root() {
    local root=
    [ -r "$CONTAINERD_CONFIG" ] &&
        root=$(awk '/^[[:space:]]*\[/ { exit } /^[[:space:]]*root[[:space:]]*=/ {
            sub(/^[^=]*=[[:space:]]*/, ""); gsub(/["\047]/, ""); sub(/[[:space:]]*(#.*)?$/, ""); print; exit }' \
            "$CONTAINERD_CONFIG")
    printf '%s\n' "${root:-/var/lib/containerd}"
}

lcfsd_unit() {   # size
    cat <<UNIT
[Unit]
Description=lcfs: layer-cloning file system for containers
Documentation=https://github.com/lcfs/lcfs
After=local-fs.target
Before=containerd.service

[Service]
Type=simple
ExecStart=$LCFSD_BIN $(lcfsd_args "$1" | paste -sd' ')
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
}

lcfsd_answers() { "$LCFSD_BIN" layer list --api-socket "$API_SOCKET"; }

# The pid of the plain lcfsd process this installation started, if it runs.
plain_lcfsd_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

lcfsd_running() {
    if has_systemd; then systemctl is-active --quiet lcfsd.service; else plain_lcfsd_pid >/dev/null; fi
}

start_plain_lcfsd() {   # size
    mkdir -p "$RUN_DIR"
    local args
    mapfile -t args < <(lcfsd_args "$1")
    setsid "$LCFSD_BIN" "${args[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
}

stop_plain_lcfsd() {
    local pid i
    pid=$(plain_lcfsd_pid) || return 0
    kill -TERM "$pid"
    for i in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "lcfsd (pid $pid) did not stop within 60 s"
    rm -f "$PID_FILE"
}

containerd_answers() { ctr_ version; }

# containerd 2.x reads config version 3, 1.x version 2.
containerd_config_version() {
    case "$(containerd --version | awk '{ print $3 }')" in
        v1.* | 1.*) echo 2 ;;
        *) echo 3 ;;
    esac
}

# lcfs's block for containerd's config. containerd 2.x also needs the plugin's platform, and
# its transfer service (behind `ctr images import` and pulls) unpacks only into the snapshotters
# its unpack_config lists; listing any replaces the default, so overlayfs is listed too unless
# the rest of the config already has an unpack_config.
config_block() {
    printf '%s\n[proxy_plugins.lcfs]\n  type = "snapshot"\n  address = "%s"\n' "$BLOCK_BEGIN" "$SNAPSHOTTER_SOCKET"
    if [ "$(containerd_config_version)" -ge 3 ]; then
        local platform snapshotters=(lcfs)
        platform=linux/$(dpkg --print-architecture)
        printf '  platform = "%s"\n' "$platform"
        # containerd 2.x also takes lcfs's Diff service, which unpacks lcfs snapshots in
        # process instead of through the mount.
        printf '[proxy_plugins.lcfs-diff]\n  type = "diff"\n  address = "%s"\n  platform = "%s"\n' \
            "$SNAPSHOTTER_SOCKET" "$platform"
        local rest
        rest=$(remove_config_block <"$CONTAINERD_CONFIG" 2>/dev/null || true)
        grep -q unpack_config <<<"$rest" || snapshotters+=(overlayfs)
        for s in "${snapshotters[@]}"; do
            local differ=walking
            [ "$s" = lcfs ] && differ=lcfs-diff
            printf "[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n  platform = \"%s\"\n  snapshotter = \"%s\"\n  differ = \"%s\"\n" \
                "$platform" "$s" "$differ"
        done
        # Client-side unpacks (Docker's containerd image store) go through the diff service;
        # lcfs-diff declines every mount that is not an lcfs snapshot's, and walking takes it.
        grep -q 'io.containerd.service.v1.diff-service' <<<"$rest" ||
            printf "[plugins.'io.containerd.service.v1.diff-service']\n  default = [\"lcfs-diff\", \"walking\"]\n"
    fi
    printf '%s\n' "$BLOCK_END"
}

# lcfs's block as it stands in the file $1 (empty if absent).
config_block_in() {
    [ -r "$1" ] || return 0
    awk -v begin="$BLOCK_BEGIN" -v end="$BLOCK_END" '$0 == begin { on = 1 } on { print } $0 == end { on = 0 }' "$1"
}

# Standard input without lcfs's block and the blank line put before it.
remove_config_block() {
    awk -v begin="$BLOCK_BEGIN" -v end="$BLOCK_END" '
        $0 == begin { skip = 1; if (have && prev != "") print prev; have = 0; next }
        skip { if ($0 == end) skip = 0; next }
        { if (have) print prev; prev = $0; have = 1 }
        END { if (have) print prev }'
}

# The pid of the containerd serving the default socket.
containerd_pid() {
    ss -xlpn 2>/dev/null | awk -v s="$CONTAINERD_SOCKET" '$5 == s' |
        sed -n 's/.*"containerd",pid=\([0-9]*\).*/\1/p' | head -1
}

restart_containerd() {
    if has_systemd; then
        systemctl enable --quiet containerd.service 2>/dev/null || true
        systemctl restart containerd.service
        return
    fi
    local pid i
    pid=$(containerd_pid)
    if [ -n "$pid" ]; then
        kill -TERM "$pid"
        for i in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    mkdir -p "$RUN_DIR"
    setsid containerd --config "$CONTAINERD_CONFIG" >>"$CONTAINERD_LOG_FILE" 2>&1 </dev/null &
    echo $! >"$CONTAINERD_PID_FILE"
}
