#!/usr/bin/env bash
# Measures lcfs (lcfsd's FUSE mount) side by side with kernel overlayfs and fuse-overlayfs in
# one run, and writes the results to docs/benchmarks/fuse.md.
#
# Usage: scripts/bench-fuse.sh [--runs N] [--dir DIR] [--out FILE] [--mirror URL] [--rev REV]
#                              [--libfuse-hp PATH]
#   --runs N      repetitions of the whole workload, peers alternating (default 3); medians
#                 are reported
#   --dir DIR     bench directory: all three peers' backing storage and the cached rootfs
#                 tarball live here (default /var/tmp/lcfs-fuse-bench)
#   --out FILE    report to write (default docs/benchmarks/fuse.md)
#   --mirror URL  Debian mirror for debootstrap (default: the first Debian URI of this
#                 machine's apt configuration); only used when the tarball is not cached yet
#   --rev REV     measure lcfsd built from commit REV (exported with git archive, built in
#                 DIR/build) instead of the working tree
#   --libfuse-hp PATH
#                 also measure libfuse's passthrough_hp (built by scripts/build-libfuse-hp.sh)
#                 as two more peers, both over io_uring: libfuse-hp with file data through
#                 the daemon, as lcfs, and libfuse-hp-pt with FUSE passthrough; they show
#                 what the FUSE protocol alone costs on the machine
# LCFSD_RUN_ARGS in the environment adds options to `lcfsd run` (e.g. --writeback-cache).
#
# Runs as root. Installs debootstrap, fuse-overlayfs and fio with apt-get if missing, builds
# lcfsd (and runs a private copy, so a rebuild during the run changes nothing), builds a Debian
# bookworm rootfs tarball with debootstrap on first use (cached in DIR), then runs the workload
# in each peer's writable directory. Once the tarball is cached a run of 3 takes about 6
# minutes on a 2-core VM. CPU used by other processes during each workload is reported, as it
# makes the numbers noisy.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=/var/tmp/lcfs-fuse-bench
OUT=$ROOT/docs/benchmarks/fuse.md
RUNS=3
MIRROR=
BUILD_REV=
SUITE=bookworm
# Added to debootstrap's default variant so the tree is the size of a typical build image
# (430 MB, 12,000 entries) rather than a minimal one (210 MB, 9,800).
INCLUDE=gcc,make,python3

BIG_MIB=1024       # size of the sequential-write file, MiB
SMALL_FILES=5000   # files created by the small-files step
SMALL_SIZE=1024    # bytes per small file
RANDREAD_SECS=10   # duration of the random-read step
LCFS_SIZE=20G      # size of lcfs's (sparse) device file
PEERS=(lcfs overlayfs fuse-overlayfs)
LIBFUSE_HP=        # passthrough_hp binary; adds the peers libfuse-hp and libfuse-hp-pt

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift 2 ;;
        --rev) BUILD_REV=${2:?--rev needs a commit}; shift 2 ;;
        --libfuse-hp) LIBFUSE_HP=${2:?--libfuse-hp needs the path of passthrough_hp}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$RUNS" in '' | *[!0-9]* | 0) echo "--runs must be a positive number" >&2; exit 2 ;; esac
if [ -n "$LIBFUSE_HP" ]; then
    [ -x "$LIBFUSE_HP" ] || { echo "--libfuse-hp: $LIBFUSE_HP is not an executable" >&2; exit 2; }
    LIBFUSE_HP=$(realpath "$LIBFUSE_HP")
    PEERS+=(libfuse-hp libfuse-hp-pt)
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "bench-fuse.sh must run as root (mounts, mknod, drop_caches)" >&2
    exit 2
fi

# shellcheck source=lib/rootfs.sh
. "$ROOT/scripts/lib/rootfs.sh"

START=$SECONDS
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-fuse.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# State and cleanup

LCFSD=   # a private copy of the lcfsd under test, in WORK
LCFS_TRANSPORT=   # how requests reached lcfsd in the last run (its log says)
REV=
REV_NOTE=
TARBALL=
SHM=
WORK=
BOOTSTRAP_DIR=
LCFS_PID=
FOVL_PID=
HP_PID=

# Unmounts everything mounted at or below $1, deepest first.

cleanup() {
    local rc=$?
    set +e
    if [ -n "$LCFS_PID" ] && kill -0 "$LCFS_PID" 2>/dev/null; then
        kill -TERM "$LCFS_PID"
        wait "$LCFS_PID"
    fi
    for m in "$DIR/overlayfs/mnt" "$DIR/fuse-overlayfs/mnt" "$DIR/lcfs/mnt" "$DIR/libfuse-hp/mnt"; do
        umount_below "$m"
    done
    if [ -n "$FOVL_PID" ]; then wait "$FOVL_PID" 2>/dev/null; fi
    if [ -n "$HP_PID" ]; then wait "$HP_PID" 2>/dev/null; fi
    remove_bootstrap_dir
    rm -rf --one-file-system "$DIR/overlayfs" "$DIR/fuse-overlayfs" "$DIR/lcfs" "$DIR/libfuse-hp"
    [ -z "$TARBALL" ] || rm -f "$TARBALL.partial"
    [ -z "$SHM" ] || rm -rf "$SHM"
    [ -z "$WORK" ] || rm -rf "$WORK"
    [ "$rc" -eq 0 ] || log "failed (exit $rc); mounts and bench files cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Prerequisites

install_missing() {
    local missing=() cmd pkg
    for pair in debootstrap:debootstrap fuse-overlayfs:fuse-overlayfs fio:fio; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }
}

# Builds lcfsd from the working tree (or from commit BUILD_REV), copies it to WORK and sets
# LCFSD and REV (the source measured).
build_lcfsd() {
    local commit src target
    if [ -n "$BUILD_REV" ]; then
        commit=$(git -C "$ROOT" rev-parse --verify "$BUILD_REV^{commit}") || die "no commit $BUILD_REV"
        REV=$(git -C "$ROOT" rev-parse --short "$commit")
        src=$DIR/build/src-$REV target=$DIR/build/target-$REV
        if [ ! -d "$src" ]; then
            mkdir -p "$src.partial"
            git -C "$ROOT" archive "$commit" | tar -x -C "$src.partial"
            mv "$src.partial" "$src"
        fi
        log "building lcfsd from commit $REV in $src"
        (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release --locked -p lcfsd)
        cp "$target/release/lcfsd" "$WORK/lcfsd"
        REV_NOTE=" (built from \`git archive\` of the commit, not from the working tree)"
    else
        log "building lcfsd"
        (cd "$ROOT" && cargo build --release -p lcfsd)
        cp "$ROOT/target/release/lcfsd" "$WORK/lcfsd"
        REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
        # This script and its report do not count as changes to what is measured.
        local dirty
        dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null |
            grep -v -e ' scripts/bench-fuse.sh$' -e " ${OUT#"$ROOT"/}\$" || true)
        [ -z "$dirty" ] || REV="$REV + uncommitted changes"
    fi
    LCFSD=$WORK/lcfsd
}

# ---------------------------------------------------------------------------------------------
# Helpers

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

ELAPSED=
# Runs a command and leaves its wall-clock time, in seconds, in ELAPSED.
# Returns the command's exit status.
timed() {
    local t0=$EPOCHREALTIME rc=0
    "$@" || rc=$?
    ELAPSED=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
    return "$rc"
}

# A step that fails is recorded as a note (and its time kept) rather than ending the run.
failed() { record "$RUN" "$PEER" note "step $1 failed (exit $2)"; }

# record RUN PEER KEY VALUE: one measurement (or note, which may contain spaces) for the report.
record() {
    printf '%s %s %s %s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
    log "run $1 $2: $3 = $4"
}

# values RUN PEER KEY (each an awk regex, "." for any): the recorded values, one a line.
values() {
    awk -v r="^($1)\$" -v p="^($2)\$" -v k="^($3)\$" '$1 ~ r && $2 ~ p && $3 ~ k {
        v = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", v); print v }' "$RESULTS"
}

# CPU seconds used so far by each user-space process outside this script (its own and that of
# the children it reaped), one "pid seconds" line each; kernel threads are left out.
others_cpu_snapshot() {
    awk -v self=$$ -v hz="$(getconf CLK_TCK)" '
        { pid = FILENAME; gsub(/[^0-9]/, "", pid); rest = $0; sub(/^.*\) /, "", rest)
          split(rest, f, " "); ppid[pid] = f[2]; t[pid] = (f[12] + f[13] + f[14] + f[15]) / hz }
        END { for (p in t) { q = p; skip = (p == 2)
                  while (!skip && q != "" && q != 0) { if (q == self || q == 2) skip = 1; q = ppid[q] }
                  if (!skip) printf "%s %.2f\n", p, t[p] } }' /proc/[0-9]*/stat 2>/dev/null || true
}
# CPU seconds other processes used since the snapshot in file $1.
others_cpu_since() {
    others_cpu_snapshot | awk 'NR == FNR { before[$1] = $2; next }
        { d = $2 - ($1 in before ? before[$1] : 0); if (d > 0) s += d } END { printf "%.1f", s }' "$1" -
}

mib_per_s() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.1f", m / s }'; }

peak_rss_mib() { awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------------------------------------
# Peers: <peer>_up prepares a fresh, empty writable directory and sets W to it; <peer>_down
# takes it down and deletes its backing storage. All backing storage is under $DIR.

overlayfs_up() {
    local b=$DIR/overlayfs
    rm -rf --one-file-system "$b"
    mkdir -p "$b/lower" "$b/upper" "$b/work" "$b/mnt"
    mount -t overlay overlay -o "lowerdir=$b/lower,upperdir=$b/upper,workdir=$b/work" "$b/mnt"
    W=$b/mnt
}
overlayfs_down() {
    umount "$DIR/overlayfs/mnt"
    rm -rf --one-file-system "$DIR/overlayfs"
}

fuse-overlayfs_up() {
    local b=$DIR/fuse-overlayfs i
    rm -rf --one-file-system "$b"
    mkdir -p "$b/lower" "$b/upper" "$b/work" "$b/mnt"
    # -f: stays in the foreground, so its process can be waited for (and its memory read).
    fuse-overlayfs -f -o "lowerdir=$b/lower,upperdir=$b/upper,workdir=$b/work" "$b/mnt" \
        2>"$WORK/fuse-overlayfs-run$RUN.log" &
    FOVL_PID=$!
    for i in $(seq 100); do
        mountpoint -q "$b/mnt" && break
        kill -0 "$FOVL_PID" 2>/dev/null || die "fuse-overlayfs exited: $(cat "$WORK/fuse-overlayfs-run$RUN.log")"
        sleep 0.1
    done
    mountpoint -q "$b/mnt" || die "fuse-overlayfs did not mount within 10 s"
    W=$b/mnt
}
fuse-overlayfs_down() {
    record "$RUN" fuse-overlayfs peak_rss_mib "$(peak_rss_mib "$FOVL_PID")"
    umount "$DIR/fuse-overlayfs/mnt"
    wait "$FOVL_PID" || log "fuse-overlayfs exited with $?"
    FOVL_PID=
    rm -rf --one-file-system "$DIR/fuse-overlayfs"
}

# libfuse's passthrough_hp over a plain directory, requests over io_uring, with the mount
# options lcfsd uses (the kernel checks permissions; device nodes and setuid allowed). $1 is
# the peer's name; libfuse-hp passes file data through the daemon (--nopassthrough, as lcfs
# must: its files live in one device), libfuse-hp-pt lets the kernel read and write the
# backing files directly (FUSE passthrough).
libfuse_hp_up() {
    local peer=$1 b=$DIR/libfuse-hp i mode=()
    [ "$peer" = libfuse-hp-pt ] || mode=(--nopassthrough)
    rm -rf --one-file-system "$b"
    mkdir -p "$b/src" "$b/mnt"
    "$LIBFUSE_HP" "${mode[@]}" --foreground -o io_uring -o default_permissions,allow_other,dev,suid \
        "$b/src" "$b/mnt" 2>"$WORK/$peer-run$RUN.log" &
    HP_PID=$!
    for i in $(seq 100); do
        mountpoint -q "$b/mnt" && break
        kill -0 "$HP_PID" 2>/dev/null || die "passthrough_hp exited: $(cat "$WORK/$peer-run$RUN.log")"
        sleep 0.1
    done
    mountpoint -q "$b/mnt" || die "passthrough_hp did not mount within 10 s"
    W=$b/mnt
}
libfuse_hp_down() {
    local peer=$1
    record "$RUN" "$peer" peak_rss_mib "$(peak_rss_mib "$HP_PID")"
    # Its io_uring queue threads are named fuse-ring-N; without them it served /dev/fuse.
    grep -qs '^fuse-ring' /proc/"$HP_PID"/task/*/comm ||
        record "$RUN" "$peer" note "passthrough_hp had no io_uring queue threads: requests came through /dev/fuse"
    umount "$DIR/libfuse-hp/mnt"
    wait "$HP_PID" || log "passthrough_hp exited with $?"
    HP_PID=
    rm -rf --one-file-system "$DIR/libfuse-hp"
}
libfuse-hp_up() { libfuse_hp_up libfuse-hp; }
libfuse-hp_down() { libfuse_hp_down libfuse-hp; }
libfuse-hp-pt_up() { libfuse_hp_up libfuse-hp-pt; }
libfuse-hp-pt_down() { libfuse_hp_down libfuse-hp-pt; }

lcfs_api() { "$LCFSD" layer "$@" --api-socket "$DIR/lcfs/api.sock"; }

lcfs_up() {
    local b=$DIR/lcfs i
    rm -rf --one-file-system "$b"
    mkdir -p "$b/mnt"
    "$LCFSD" run --device "$b/disk.img" --size "$LCFS_SIZE" --mountpoint "$b/mnt" \
        --api-socket "$b/api.sock" ${LCFSD_RUN_ARGS:-} 2>"$WORK/lcfsd-run$RUN.log" &
    LCFS_PID=$!
    for i in $(seq 300); do
        lcfs_api list >/dev/null 2>&1 && break
        kill -0 "$LCFS_PID" 2>/dev/null || die "lcfsd exited: $(tail -5 "$WORK/lcfsd-run$RUN.log")"
        sleep 0.1
    done
    lcfs_api list >/dev/null || die "lcfsd's API did not answer within 30 s"
    lcfs_api create bench >/dev/null
    W=$b/mnt/bench
    [ -d "$W" ] || die "layer directory $W missing after 'lcfsd layer create bench'"
}
lcfs_down() {
    local rc=0 b=$DIR/lcfs
    record "$RUN" lcfs peak_rss_mib "$(peak_rss_mib "$LCFS_PID")"
    timed lcfs_api remove bench >/dev/null || record "$RUN" lcfs note "lcfsd layer remove failed (exit $?)"
    record "$RUN" lcfs layer_remove_s "$ELAPSED"
    kill -TERM "$LCFS_PID"
    timed wait "$LCFS_PID" || rc=$?
    LCFS_PID=
    [ "$rc" -eq 0 ] || record "$RUN" lcfs note "lcfsd exited with $rc after SIGTERM"
    record "$RUN" lcfs shutdown_s "$ELAPSED"
    if grep -qiE 'error|panic|warn' "$WORK/lcfsd-run$RUN.log"; then
        log "lcfsd's log of run $RUN has errors or warnings:"
        grep -iE 'error|panic|warn' "$WORK/lcfsd-run$RUN.log" | head -20 >&2
        record "$RUN" lcfs note "lcfsd logged $(grep -ciE 'error|panic|warn' "$WORK/lcfsd-run$RUN.log") error or warning line(s), the first: $(grep -m1 -iE 'error|panic|warn' "$WORK/lcfsd-run$RUN.log" | cut -c1-200)"
    fi
    if "$LCFSD" fsck --device "$b/disk.img" >"$WORK/fsck-run$RUN.log" 2>&1; then
        record "$RUN" lcfs fsck clean
    else
        record "$RUN" lcfs fsck "problems (exit $?)"
        tail -20 "$WORK/fsck-run$RUN.log" >&2
    fi
    record "$RUN" lcfs device_used_mib "$(du -m "$b/disk.img" | cut -f1)"
    if grep -q 'FUSE requests arrive over io_uring' "$WORK/lcfsd-run$RUN.log"; then
        LCFS_TRANSPORT="io_uring (one queue per CPU)"
    else
        LCFS_TRANSPORT="/dev/fuse"
    fi
    rm -rf --one-file-system "$b"
}

# ---------------------------------------------------------------------------------------------
# Workload steps, each run in the writable directory W. Between steps the host is synced
# (untimed) so one step's writeback does not land in the next step's time.

step_unpack() {
    mkdir "$W/rootfs"
    cat "$TARBALL" >/dev/null   # the tarball is read from page cache, not from the disk
    local err=$WORK/tar-$PEER-run$RUN.err
    timed tar --xattrs --xattrs-include='*' --numeric-owner --same-owner -xpf "$TARBALL" -C "$W/rootfs" \
        2>"$err" || failed unpack $?
    record "$RUN" "$PEER" unpack "$ELAPSED"
    if [ -s "$err" ]; then
        cat "$err" >&2
        record "$RUN" "$PEER" note "tar -x printed $(wc -l <"$err") message(s), the first: $(head -1 "$err")"
    fi
    sync
}

step_statwalk() {
    drop_caches
    timed find "$W/rootfs" -printf '%s %m %n\n' >/dev/null || failed statwalk $?
    record "$RUN" "$PEER" statwalk "$ELAPSED"
}

# Untimed: the unpacked tree must be the same in every peer (names, types, modes, owners,
# sizes of non-directories, link counts, symlink targets, device numbers, xattrs). The listing
# is kept for the report, which compares it with kernel overlayfs's.
check_tree() {
    local entries want listing=$WORK/tree-$PEER-run$RUN.txt
    entries=$(find "$W/rootfs" -mindepth 1 | wc -l)
    want=$(($(cat "$TARBALL.entries") - 1))
    [ "$entries" -eq "$want" ] || record "$RUN" "$PEER" note "the tree has $entries entries, the tarball $want"
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$W/rootfs" >"$listing" <<'PY'
import os, stat, sys
root = sys.argv[1]
for d, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(dirs + files):
        p = os.path.join(d, name)
        st = os.lstat(p)
        size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
        nlink = 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink
        xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                        for k in os.listxattr(p, follow_symlinks=False))
        print(repr((os.path.relpath(p, root), oct(st.st_mode), st.st_uid, st.st_gid, size,
                    nlink, rdev, link, xattrs)))
PY
        record "$RUN" "$PEER" tree_digest "$(sha256sum <"$listing" | cut -c1-16)"
    fi
}

# For the report: how each peer's unpacked tree differs from kernel overlayfs's in run 1.
tree_differences() {
    local ref=$WORK/tree-overlayfs-run1.txt p r f n paths
    [ -s "$ref" ] || return 0
    for p in "${PEERS[@]}"; do
        for r in $(seq "$RUNS"); do
            f=$WORK/tree-$p-run$r.txt
            [ -s "$f" ] || continue
            n=$(diff "$ref" "$f" | grep -c '^>' || true)
            [ "$n" -gt 0 ] || continue
            paths=$(diff "$ref" "$f" | sed -n "s/^> ('\([^']*\)'.*/\1/p" | head -3 | paste -sd, -)
            echo "* $p, run $r: $n entries differ from overlayfs's (first: $paths); see the diff below"
            if [ ! -e "$WORK/diff-shown-$p" ]; then
                echo
                echo '  ```diff'
                diff "$ref" "$f" | grep '^[<>]' | head -6 | cut -c1-300 | sed 's/^/  /'
                echo '  ```'
                : >"$WORK/diff-shown-$p"
            fi
        done
    done
}

step_seqwrite() {
    timed dd if="$SHM/big.src" of="$W/big" bs=1M conv=fsync status=none || failed seqwrite $?
    record "$RUN" "$PEER" seqwrite "$(mib_per_s "$BIG_MIB" "$ELAPSED")"
    sync
}

step_seqread() {
    drop_caches
    timed dd if="$W/big" of=/dev/null bs=1M status=none || failed seqread $?
    record "$RUN" "$PEER" seqread "$(mib_per_s "$BIG_MIB" "$ELAPSED")"
}

step_randread() {
    local iops
    drop_caches
    # Terse format version 3: field 8 is the read IOPS.
    iops=$(fio --name=randread --filename="$W/big" --rw=randread --bs=4k --ioengine=psync \
        --time_based --runtime="$RANDREAD_SECS" --terse-version=3 --output-format=terse |
        awk -F';' '{ printf "%.0f", $8 }') || failed randread $?
    record "$RUN" "$PEER" randread "${iops:-nan}"
}

# Untimed: the file read back is the file written.
check_big() {
    cmp -s "$SHM/big.src" "$W/big" || record "$RUN" "$PEER" note "the 1 GiB file read back differs from what was written"
}

# One bash process (no fork per file): open, write 1 KiB, close, SMALL_FILES times.
SMALL_DATA=$(head -c "$SMALL_SIZE" /dev/zero | tr '\0' x)
small_files() {
    local i
    mkdir "$W/small" || return
    for ((i = 0; i < SMALL_FILES; i++)); do
        printf '%s' "$SMALL_DATA" >"$W/small/f$i" || return
    done
}
step_smallfiles() {
    timed small_files || failed smallfiles $?
    record "$RUN" "$PEER" smallfiles "$ELAPSED"
    sync
}

step_remove() {
    timed rm -rf "$W/rootfs" "$W/big" "$W/small" || failed remove $?
    record "$RUN" "$PEER" remove "$ELAPSED"
    [ -z "$(ls -A "$W")" ] || record "$RUN" "$PEER" note "the directory is not empty after rm -rf: $(ls -A "$W" | head -3 | paste -sd' ' -)"
    sync
}

workload() {
    log "run $RUN: $PEER in $W"
    step_unpack
    step_statwalk
    check_tree
    step_seqwrite
    step_seqread
    step_randread
    check_big
    step_smallfiles
    step_remove
}

# ---------------------------------------------------------------------------------------------
# Report

median() { # PEER KEY: median over runs of a numeric result
    awk -v p="$1" -v k="$2" '$2 == p && $3 == k { print $4 }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio_cell LCFS PEER TARGET: "0.42 (≤ 0.5 ✓)", "—" when there is no target.
ratio_cell() {
    awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN {
        r = a / b
        if (t == "") { printf "%.2f", r; exit }
        op = substr(t, 1, 2); lim = substr(t, 3) + 0
        ok = (op == "<=") ? (r <= lim) : (r >= lim)
        printf "%.2f (%s %s: %s)", r, (op == "<=" ? "≤" : "≥"), lim, (ok ? "pass" : "**fail**")
    }'
}
passes() { # LCFS PEER TARGET: exit 0 if the target is met (or there is none)
    [ -z "$3" ] && return 0
    awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN {
        r = a / b; op = substr(t, 1, 2); lim = substr(t, 3) + 0
        exit !((op == "<=") ? (r <= lim) : (r >= lim)) }'
}

fmt() { awk -v v="$1" -v u="$2" 'BEGIN { if (u == "IOPS") printf "%.0f", v; else if (u == "s") printf "%.2f", v; else printf "%.0f", v }'; }

# key|label|unit|target vs fuse-overlayfs|target vs overlayfs (ratios are lcfs/peer of the
# reported quantity: time for s, throughput for MiB/s and IOPS)
STEPS=(
    "unpack|1. unpack rootfs (tar -x)|s|<=0.5|<=1.5"
    "statwalk|2. stat walk, cold|s|<=0.5|<=2"
    "seqwrite|3. sequential write 1 GiB + fsync|MiB/s|>=2|>=0.8"
    "seqread|4. sequential read 1 GiB, cold|MiB/s||>=0.9"
    "randread|5. 4 KiB random read, cold|IOPS||>=0.9"
    "smallfiles|6. create 5,000 × 1 KiB files|s|<=0.5|<=1.5"
    "remove|7. rm -rf everything|s|<=0.5|<=1.5"
)

results_table() {
    local s key label unit tfo tovl l o f res
    echo "| step | lcfs | overlayfs | fuse-overlayfs | lcfs / fuse-overlayfs | lcfs / overlayfs | result |"
    echo "| --- | ---: | ---: | ---: | --- | --- | --- |"
    for s in "${STEPS[@]}"; do
        IFS='|' read -r key label unit tfo tovl <<<"$s"
        l=$(median lcfs "$key") o=$(median overlayfs "$key") f=$(median fuse-overlayfs "$key")
        res=pass
        passes "$l" "$f" "$tfo" && passes "$l" "$o" "$tovl" || res=FAIL
        printf '| %s | %s %s | %s %s | %s %s | %s | %s | %s |\n' "$label" \
            "$(fmt "$l" "$unit")" "$unit" "$(fmt "$o" "$unit")" "$unit" "$(fmt "$f" "$unit")" "$unit" \
            "$(ratio_cell "$l" "$f" "$tfo")" "$(ratio_cell "$l" "$o" "$tovl")" "$res"
    done
}

# With --libfuse-hp: the two passthrough_hp peers against overlayfs, the same ratios as lcfs's,
# so each target can be read as "does the FUSE protocol itself allow it here".
libfuse_table() {
    local s key label unit tovl l o h p
    echo "| step | lcfs | libfuse-hp | libfuse-hp-pt | lcfs / overlayfs | libfuse-hp / overlayfs | libfuse-hp-pt / overlayfs | lcfs / libfuse-hp |"
    echo "| --- | ---: | ---: | ---: | --- | --- | --- | --- |"
    for s in "${STEPS[@]}"; do
        IFS='|' read -r key label unit _ tovl <<<"$s"
        l=$(median lcfs "$key") o=$(median overlayfs "$key")
        h=$(median libfuse-hp "$key") p=$(median libfuse-hp-pt "$key")
        printf '| %s | %s %s | %s %s | %s %s | %s | %s | %s | %s |\n' "$label" \
            "$(fmt "$l" "$unit")" "$unit" "$(fmt "$h" "$unit")" "$unit" "$(fmt "$p" "$unit")" "$unit" \
            "$(ratio_cell "$l" "$o" "$tovl")" "$(ratio_cell "$h" "$o" "$tovl")" "$(ratio_cell "$p" "$o" "$tovl")" \
            "$(ratio_cell "$l" "$h" "")"
    done
}

runs_table() {
    local s key label unit p r v row
    printf '| step | peer |'; for r in $(seq "$RUNS"); do printf ' run %s |' "$r"; done; echo
    printf '| --- | --- |'; for r in $(seq "$RUNS"); do printf ' ---: |'; done; echo
    for s in "${STEPS[@]}"; do
        IFS='|' read -r key label unit _ _ <<<"$s"
        for p in "${PEERS[@]}"; do
            row="| ${label%, cold} ($unit) | $p |"
            for r in $(seq "$RUNS"); do
                v=$(awk -v r="$r" -v p="$p" -v k="$key" '$1 == r && $2 == p && $3 == k { print $4 }' "$RESULTS")
                row="$row $(fmt "${v:-nan}" "$unit") |"
            done
            echo "$row"
        done
    done
}

# Everything recorded besides the step results, per peer and run.
observations_table() {
    local spec key label p r v row any
    printf '| | peer |'; for r in $(seq "$RUNS"); do printf ' run %s |' "$r"; done; echo
    printf '| --- | --- |'; for r in $(seq "$RUNS"); do printf ' --- |'; done; echo
    for spec in "peak_rss_mib|daemon peak memory, VmHWM (MiB)" "tree_digest|digest of the unpacked tree" \
        "layer_remove_s|lcfsd layer remove of the emptied layer (s)" "shutdown_s|SIGTERM until lcfsd exited (s)" \
        "fsck|lcfsd fsck afterwards" "device_used_mib|device file allocated at the end (MiB)" \
        "other_cpu|CPU used by other processes during the peer's turn"; do
        IFS='|' read -r key label <<<"$spec"
        for p in "${PEERS[@]}"; do
            row="| $label | $p |" any=
            for r in $(seq "$RUNS"); do
                v=$(values "$r" "$p" "$key")
                [ -z "$v" ] || any=1
                row="$row ${v:-–} |"
            done
            [ -z "$any" ] || echo "$row"
        done
    done
}

notes_list() {
    local r p
    for r in $(seq "$RUNS"); do
        for p in "${PEERS[@]}"; do
            values "$r" "$p" note | sed "s/^/* run $r, $p: /"
        done
    done
}

# With --libfuse-hp: how the passthrough_hp peers were run, for the report.
libfuse_peers() {
    [ -n "$LIBFUSE_HP" ] || return 0
    cat <<EOF
* **libfuse-hp**: libfuse $(cat "$LIBFUSE_HP.version" 2>/dev/null || echo "(version unknown)")'s \`example/passthrough_hp --nopassthrough --foreground -o io_uring
  -o default_permissions,allow_other,dev,suid SRC MNT\` over an empty directory, built by
  \`scripts/build-libfuse-hp.sh\` (its defaults: writeback cache, entries and attributes cached
  for a day; it also answers FLUSH, one more request per close than lcfs, which declines it).
* **libfuse-hp-pt**: the same without \`--nopassthrough\`: FUSE passthrough, and so no
  writeback cache.
EOF
}

write_report() {
    local cpu mem fs elapsed tar_mib entries digests notes title_extra='' build_hp_line='' bench_line
    bench_line="scripts/bench-fuse.sh --runs $RUNS${BUILD_REV:+ --rev $REV}"
    if [ -n "$LIBFUSE_HP" ]; then
        title_extra=" (and libfuse's passthrough_hp)"
        build_hp_line="scripts/build-libfuse-hp.sh   # libfuse 3.18+ source: --source DIR, or a deb-src entry"$'\n'
        bench_line="$bench_line --libfuse-hp $LIBFUSE_HP"
    fi
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    fs=$(df -PT "$DIR" | awk 'NR == 2 { print $2 " on " $1 " (mounted at " $7 ")" }')
    fs="$fs, options $(findmnt -no OPTIONS -T "$DIR")"
    tar_mib=$(du -m --apparent-size "$TARBALL" | cut -f1)
    entries=$(cat "$TARBALL.entries")
    digests=$(awk '$3 == "tree_digest" { print $4 }' "$RESULTS" | sort -u | wc -l)
    elapsed=$((SECONDS - START))
    mkdir -p "$(dirname "$OUT")"
    {
        cat <<EOF
# FUSE benchmarks: lcfs against overlayfs and fuse-overlayfs$title_extra

Generated by \`scripts/bench-fuse.sh\`; do not edit by hand. Reproduce with:

\`\`\`sh
$build_hp_line$bench_line
\`\`\`

* Date: $RUN_DATE
* Source: $REV$REV_NOTE
* Runs: $RUNS, peers alternating (run *n* starts with a different peer: $ORDERS); medians below.
  The whole run took $((elapsed / 60)) min $((elapsed % 60)) s$BUILD_NOTE$TARBALL_NOTE.

## Results

Medians of $RUNS runs. Times in seconds (lower is better), throughput in MiB/s and IOPS
(higher is better). Ratios are lcfs / peer of the quantity shown, so for times a ratio below 1
means lcfs is faster, for throughput above 1.

EOF
        results_table
        cat <<EOF

Targets: unpack, small files and removal: lcfs time ≤ 0.5 × fuse-overlayfs's and ≤ 1.5 ×
overlayfs's (stat walk: ≤ 2 × overlayfs's); sequential write: ≥ 2 × fuse-overlayfs's
throughput and ≥ 0.8 × overlayfs's; sequential read and random-read IOPS: ≥ 0.9 × overlayfs's.

EOF
        if [ -n "$LIBFUSE_HP" ]; then
            cat <<EOF
### The FUSE protocol alone: libfuse's passthrough_hp

libfuse's own high-performance example, over io_uring, passes every request to a plain
directory on the same file system with a system call or two and keeps nothing of its own.
With file data through the daemon (**libfuse-hp**, as lcfs must: lcfs keeps every file in one
device) it shows what any FUSE file system pays here; with FUSE passthrough
(**libfuse-hp-pt**) the kernel reads and writes the backing files itself. Its ratios to
overlayfs are marked against lcfs's targets, medians as above:

EOF
            libfuse_table
            echo
        fi
        cat <<EOF
### Every run

EOF
        runs_table
        cat <<EOF

### Other observations (untimed)

The digest covers names, types, modes, owners, sizes (except directories'), link counts,
symlink targets, device numbers and xattrs of the unpacked tree: it should be the same for
every peer and run ($digests distinct value(s) seen). "CPU used by other processes" is what
user-space processes other than this script and its children (tar, dd, fio, the FUSE daemons)
used during a peer's turn (setup, workload, teardown); more than a few percent of the machine
means something else was running and that turn's numbers are noisy.

EOF
        observations_table
        echo
        notes=$(notes_list; tree_differences)
        if [ -n "$notes" ]; then
            echo "Problems seen (failed commands, tar messages, trees that differ):"
            echo
            echo "$notes"
        else
            echo "No problems seen: every command succeeded, tar printed nothing, the trees are equal."
        fi
        cat <<EOF

## The peers

All peers keep their backing storage in \`$DIR\`, on the same file system, and start empty
for every run.

* **lcfs**: \`lcfsd run --device $DIR/lcfs/disk.img --size $LCFS_SIZE --mountpoint … --api-socket … ${LCFSD_RUN_ARGS:-}\`
  (defaults: four FUSE threads per CPU, 4 to 32; writeback cache on; FUSE over io_uring where
  the kernel offers it; checkpoint every 5 s; requests in these runs came over ${LCFS_TRANSPORT:-an unknown transport}) on a fresh
  sparse device file, and one writable layer from \`lcfsd layer create bench\`; the workload
  runs in \`<mountpoint>/bench\`. Taken down with SIGTERM, waiting for the daemon to exit.
* **overlayfs** (kernel): \`mount -t overlay overlay -o lowerdir=L,upperdir=U,workdir=W MNT\`
  with an empty lower directory and default options.
* **fuse-overlayfs**: \`fuse-overlayfs -f -o lowerdir=L,upperdir=U,workdir=W MNT\`, same
  layout, default options.
$(libfuse_peers)

## How each step is measured

Wall-clock time of the command (bash \`\$EPOCHREALTIME\` before and after). After every writing
step the host is synced, untimed, so writeback of one step does not fall into the next.
"Cold" means \`sync; echo 3 > /proc/sys/vm/drop_caches\` first: that empties the kernel's
caches (page cache, dentries, inodes, including the host file system's caches under every
peer), but not what a FUSE daemon keeps in its own memory.

1. **Unpack**: \`tar --xattrs --xattrs-include='*' --numeric-owner --same-owner -xpf rootfs.tar -C DIR/rootfs\`
   (ownership, modes, xattrs, device nodes). The tarball (${tar_mib} MiB, $entries entries:
   Debian $SUITE, debootstrap's default variant plus \`--include=$INCLUDE\`, built once by
   this script and cached in \`$DIR\`; apt's lists, sources and debootstrap's log removed) is
   read into the page cache just before, so the step measures writing.
2. **Stat walk**, cold: \`find DIR/rootfs -printf '%s %m %n\n' > /dev/null\` (one lstat per
   entry).
3. **Sequential write**: \`dd if=SRC of=DIR/big bs=1M conv=fsync\`, $BIG_MIB MiB from a file of
   random bytes in tmpfs; the fsync at the end is timed. Reported as $BIG_MIB MiB / time.
4. **Sequential read**, cold: \`dd if=DIR/big of=/dev/null bs=1M\`; $BIG_MIB MiB / time.
5. **4 KiB random read**, cold: \`fio --name=randread --filename=DIR/big --rw=randread --bs=4k
   --ioengine=psync --time_based --runtime=$RANDREAD_SECS\` (one job, queue depth 1, buffered);
   fio's read IOPS. Afterwards, untimed, the file is compared with its source (\`cmp\`).
6. **Small files**: $SMALL_FILES files of $SMALL_SIZE bytes in one new directory, written by one
   bash process with its builtin \`printf '%s' "\$data" > DIR/small/fN\` (open, write, close per
   file, no fork; bash adds a few syscalls per file, the same for every peer).
7. **Removal**: \`rm -rf DIR/rootfs DIR/big DIR/small\`: the whole tree.

## Machine

* CPU: $(nproc) (nproc), ${cpu:-unknown model}
* Memory: $mem
* Kernel: $(uname -sr)
* Backing file system (\`$DIR\`): $fs

## Versions

* lcfsd: $("$LCFSD" --version 2>/dev/null || echo unknown), release build, $(rustc --version 2>/dev/null || echo "rustc unknown")
* $(fuse-overlayfs --version 2>&1 | grep -m1 '^fuse-overlayfs' || echo "fuse-overlayfs unknown")
* $(fusermount3 --version 2>&1 | head -1 || echo "fusermount3 unknown")
* fio: $(fio --version)
* $(tar --version | head -1)
* debootstrap: $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo unknown)
EOF
    } >"$OUT"
}

# ---------------------------------------------------------------------------------------------
# Main

install_missing
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
RESULTS=$WORK/results.txt
: >"$RESULTS"
t0=$SECONDS
build_lcfsd
BUILD_NOTE=
[ $((SECONDS - t0)) -lt 10 ] || BUILD_NOTE=", $((SECONDS - t0)) s of it building lcfsd"
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

t0=$SECONDS
build_tarball
TARBALL_NOTE=
[ $((SECONDS - t0)) -lt 10 ] || TARBALL_NOTE=", $((SECONDS - t0)) s of it building the rootfs tarball"

SHM=$(mktemp -d /dev/shm/lcfs-fuse-bench.XXXXXX)
head -c "$((BIG_MIB * 1048576))" /dev/urandom >"$SHM/big.src"

ORDERS=
for RUN in $(seq "$RUNS"); do
    ORDERS="$ORDERS${ORDERS:+; }run $RUN:"
    for i in $(seq 0 $((${#PEERS[@]} - 1))); do
        PEER=${PEERS[$(((RUN - 1 + i) % ${#PEERS[@]}))]}
        ORDERS="$ORDERS $PEER"
        others_cpu_snapshot >"$WORK/cpu-before.txt"
        wall0=$EPOCHREALTIME
        "${PEER}_up"
        workload
        "${PEER}_down"
        # Other processes on the machine make the numbers noisy: say how much CPU they used.
        record "$RUN" "$PEER" other_cpu "$(awk -v o="$(others_cpu_since "$WORK/cpu-before.txt")" \
            -v w0="$wall0" -v w1="$EPOCHREALTIME" -v n="$(nproc)" \
            'BEGIN { printf "%.1f s (%.0f%% of the machine over %.0f s)", o, 100 * o / ((w1 - w0) * n), w1 - w0 }')"
    done
done

write_report
log "wrote $OUT in $((SECONDS - START)) s"
echo
results_table
