#!/usr/bin/env bash
# Measures what a FUSE round trip costs lcfs when the request and its answer cross CPUs, the
# reason unpacking through the mount stays several times slower than kernel overlayfs, and
# writes the results to docs/benchmarks/fuse-wakeups.md.
#
# Usage: scripts/bench-fuse-wakeups.sh [--runs N] [--dir DIR] [--tarball-dir DIR] [--out FILE]
#   --runs N           repetitions, configurations alternating (default 3); medians reported
#   --dir DIR          storage for the run (default /var/tmp/lcfs-fuse-wakeups; emptied first)
#   --tarball-dir DIR  where bench-fuse.sh caches its Debian rootfs tarball (default
#                      /var/tmp/lcfs-fuse-bench); built with debootstrap if missing
#   --out FILE         report to write (default docs/benchmarks/fuse-wakeups.md)
#
# Runs as root on a machine with at least two CPUs. Each run unpacks the tarball (tar -x, as
# bench-fuse.sh's first step) into a fresh lcfs layer in each configuration:
#   free      nothing pinned (what bench-fuse.sh measures);
#   same-cpu  lcfsd's threads and tar on CPU 0;
#   cross-cpu lcfsd's threads on CPU 1, tar on CPU 0: every request and answer crosses;
#   haltpoll  nothing pinned, the guest's haltpoll idle governor polling 200 µs before it
#             halts a CPU (only where /sys/module/haltpoll exists; the old value is restored).
# Peers are compared in bench-fuse.sh; this script compares lcfs with itself.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=/var/tmp/lcfs-fuse-wakeups
TARBALL_DIR=/var/tmp/lcfs-fuse-bench
OUT=$ROOT/docs/benchmarks/fuse-wakeups.md
RUNS=3
SUITE=bookworm
INCLUDE=gcc,make,python3   # as bench-fuse.sh, so the cached tarball is shared
MIRROR=
HALTPOLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALTPOLL_NS=200000

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# shellcheck source=lib/rootfs.sh
. "$ROOT/scripts/lib/rootfs.sh"
parse_bench_args bench-fuse-wakeups.sh "$@"
[ "$(nproc)" -ge 2 ] || { echo "bench-fuse-wakeups.sh needs at least two CPUs" >&2; exit 2; }

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench-fuse-wakeups.sh: %s\n' "$*" >&2; exit 1; }

START=$SECONDS
LCFS_PID=
BOOTSTRAP_DIR=
HALTPOLL_SAVED=
RESULTS=$DIR/results.tsv
CONFIGS=(free same-cpu cross-cpu)
[ -w "$HALTPOLL" ] && HALTPOLL_SAVED=$(cat "$HALTPOLL") && CONFIGS+=(haltpoll)

cleanup() {
    set +e
    [ -n "$HALTPOLL_SAVED" ] && echo "$HALTPOLL_SAVED" >"$HALTPOLL"
    [ -n "$LCFS_PID" ] && kill -TERM "$LCFS_PID" 2>/dev/null && wait "$LCFS_PID"
    umount_below "$DIR"
    remove_bootstrap_dir
}
trap cleanup EXIT

log "building lcfsd"
(cd "$ROOT" && cargo build --release --locked -p lcfsd) >&2
umount_below "$DIR"
rm -rf --one-file-system "$DIR"
mkdir -p "$DIR/lcfs/mnt"
LCFSD=$ROOT/target/release/lcfsd
REV=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)
build_tarball_in "$TARBALL_DIR"

"$LCFSD" run --device "$DIR/lcfs/disk.img" --size 8G --mountpoint "$DIR/lcfs/mnt" \
    --api-socket "$DIR/lcfs/api.sock" 2>"$DIR/lcfs/lcfsd.log" &
LCFS_PID=$!
for _ in $(seq 100); do [ -S "$DIR/lcfs/api.sock" ] && break; sleep 0.1; done
[ -S "$DIR/lcfs/api.sock" ] || die "lcfsd did not start: $(tail -5 "$DIR/lcfs/lcfsd.log")"
layer() { "$LCFSD" layer "$@" --api-socket "$DIR/lcfs/api.sock" >/dev/null; }

# Unpacks the tarball into $1 with `taskset -c $2` (empty: unpinned); prints seconds.
unpack() {
    local pin=() t0 t1
    [ -n "$2" ] && pin=(taskset -c "$2")
    cat "$TARBALL" >/dev/null
    t0=$(date +%s%N)
    "${pin[@]}" tar --numeric-owner --same-owner -xpf "$TARBALL" -C "$1" || die "tar into $1 failed"
    t1=$(date +%s%N)
    awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }'
}

run_config() {   # run config
    local daemon_cpus=0-$(($(nproc) - 1)) tar_cpu='' seconds
    case "$2" in
        same-cpu) daemon_cpus=0 tar_cpu=0 ;;
        cross-cpu) daemon_cpus=1 tar_cpu=0 ;;
        haltpoll) echo "$HALTPOLL_NS" >"$HALTPOLL" ;;
    esac
    taskset -a -p -c "$daemon_cpus" "$LCFS_PID" >/dev/null
    layer create "w$1-$2"
    sync
    seconds=$(unpack "$DIR/lcfs/mnt/w$1-$2" "$tar_cpu")
    [ -n "$HALTPOLL_SAVED" ] && echo "$HALTPOLL_SAVED" >"$HALTPOLL"
    taskset -a -p -c "0-$(($(nproc) - 1))" "$LCFS_PID" >/dev/null
    layer remove "w$1-$2"
    printf '%s\t%s\t%s\n' "$1" "$2" "$seconds" >>"$RESULTS"
    log "run $1/$RUNS: $2: $seconds s"
}

: >"$RESULTS"
for run in $(seq "$RUNS"); do
    # Rotate the order so no configuration always follows the same one.
    n=${#CONFIGS[@]}
    for i in $(seq 0 $((n - 1))); do
        run_config "$run" "${CONFIGS[$(((i + run - 1) % n))]}"
    done
done

median() { awk -F'\t' -v c="$1" '$2 == c { print $3 }' "$RESULTS" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
free=$(median free)
row() {   # config description
    local m
    m=$(median "$1")
    printf '| %s | %s | %s s | %s |\n' "$1" "$2" "$m" \
        "$(awk -v a="$m" -v b="$free" 'BEGIN { printf "%.2f", a / b }')"
}
elapsed=$((SECONDS - START))
mkdir -p "$(dirname "$OUT")"
{
    cat <<MD
# FUSE wake-ups: what crossing CPUs costs lcfs's round trips

Produced by \`scripts/bench-fuse-wakeups.sh --runs $RUNS\` on $(date -u +%Y-%m-%d) at \`$REV\`
($(nproc) CPUs, kernel $(uname -r)); medians of $RUNS runs, configurations alternating; the
whole run took $((elapsed / 60)) min $((elapsed % 60)) s.

Each configuration unpacks the Debian rootfs tarball of \`bench-fuse.sh\` ($(basename "$TARBALL"))
with \`tar -xp\` into a fresh lcfs layer, through the FUSE mount.

| configuration | what is pinned | unpack | / free |
|---|---|---|---|
$(row free "nothing (as in bench-fuse.sh)")
$(row same-cpu "lcfsd and tar on CPU 0")
$(row cross-cpu "lcfsd on CPU 1, tar on CPU 0")
$([ -n "$HALTPOLL_SAVED" ] && row haltpoll "nothing; guest_halt_poll_ns=$HALTPOLL_NS (was $HALTPOLL_SAVED)")

## Every run

| run | configuration | seconds |
|---|---|---|
$(awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$RESULTS")
MD
} >"$OUT"
log "wrote $OUT"
