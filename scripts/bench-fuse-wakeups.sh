#!/usr/bin/env bash
# Measures what a FUSE round trip costs lcfs on this machine and where that cost comes from:
# the reason unpacking through the mount stays several times slower than kernel overlayfs.
# Writes the results to docs/benchmarks/fuse-wakeups.md.
#
# Usage: scripts/bench-fuse-wakeups.sh [--runs N] [--dir DIR] [--tarball-dir DIR] [--out FILE]
#   --runs N           repetitions, configurations alternating (default 3); the best and the
#                      median of each configuration are reported
#   --dir DIR          storage for the run (default /var/tmp/lcfs-fuse-wakeups; emptied first)
#   --tarball-dir DIR  where bench-fuse.sh caches its Debian rootfs tarball (default
#                      /var/tmp/lcfs-fuse-bench); built with debootstrap if missing
#   --out FILE         report to write (default docs/benchmarks/fuse-wakeups.md)
#
# Runs as root on a machine with at least two CPUs; installs linux-perf if perf is missing.
# Each run unpacks the tarball (tar -x, as bench-fuse.sh's first step) in each configuration:
#   overlayfs   kernel overlayfs, the peer of bench-fuse.sh;
#   tmpfs       a tmpfs: tar's system calls alone, no FUSE and no disk;
#   free        a fresh lcfs layer, nothing pinned (what bench-fuse.sh measures);
#   same-cpu    lcfsd's threads and tar on CPU 0;
#   cross-cpu   lcfsd's threads on CPU 1, tar on CPU 0: every request and answer crosses;
#   idle-queues nothing pinned, lcfsd's io_uring queue threads at SCHED_IDLE (an experiment:
#               an answer then leaves its caller on its CPU; see the contention check);
#   haltpoll    nothing pinned, the guest's haltpoll idle governor polling 200 µs before it
#               halts a CPU (only where /sys/module/haltpoll exists; the old value is restored).
# Each run also creates 50 files while a busy loop runs on every CPU, with the queue threads
# at their normal policy and at SCHED_IDLE. Once per invocation it times a round trip between
# two processes (`perf bench sched pipe`, on one CPU and unpinned) and counts the FUSE requests
# of one unpack (the fuse:fuse_request_send trace point).
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

usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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
CONFIGS=(overlayfs tmpfs free same-cpu cross-cpu idle-queues)
[ -w "$HALTPOLL" ] && HALTPOLL_SAVED=$(cat "$HALTPOLL") && CONFIGS+=(haltpoll)
HOGS=()
CONTENTION_FILES=50

cleanup() {
    set +e
    [ -n "$HALTPOLL_SAVED" ] && echo "$HALTPOLL_SAVED" >"$HALTPOLL"
    [ ${#HOGS[@]} -eq 0 ] || kill "${HOGS[@]}" 2>/dev/null
    [ -n "$LCFS_PID" ] && kill -TERM "$LCFS_PID" 2>/dev/null && wait "$LCFS_PID"
    umount_below "$DIR"
    remove_bootstrap_dir
}
trap cleanup EXIT

if ! perf version >/dev/null 2>&1; then
    log "installing linux-perf"
    apt-get install -y linux-perf >&2 || { apt-get update >&2 && apt-get install -y linux-perf >&2; }
fi

log "building lcfsd"
(cd "$ROOT" && cargo build --release --locked -p lcfsd) >&2
umount_below "$DIR"
rm -rf --one-file-system "$DIR"
mkdir -p "$DIR/lcfs/mnt" "$DIR/tmpfs" "$DIR/overlayfs"/{lower,upper,work,mnt}
LCFSD=$ROOT/target/release/lcfsd
REV=$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo unknown)
build_tarball_in "$TARBALL_DIR"

"$LCFSD" run --device "$DIR/lcfs/disk.img" --size 8G --mountpoint "$DIR/lcfs/mnt" \
    --api-socket "$DIR/lcfs/api.sock" 2>"$DIR/lcfs/lcfsd.log" &
LCFS_PID=$!
for _ in $(seq 100); do [ -S "$DIR/lcfs/api.sock" ] && break; sleep 0.1; done
[ -S "$DIR/lcfs/api.sock" ] || die "lcfsd did not start: $(tail -5 "$DIR/lcfs/lcfsd.log")"
layer() { "$LCFSD" layer "$@" --api-socket "$DIR/lcfs/api.sock" >/dev/null; }
ls "$DIR/lcfs/mnt" >/dev/null   # a first request, after which lcfsd says how requests arrive
if ! grep -q 'arrive over io_uring' "$DIR/lcfs/lcfsd.log"; then
    log "requests arrive over /dev/fuse: no io_uring queue threads, so no idle-queues configuration"
    kept=()
    for c in "${CONFIGS[@]}"; do [ "$c" = idle-queues ] || kept+=("$c"); done
    CONFIGS=("${kept[@]}")
fi

# Unpacks the tarball into $1 with `taskset -c $2` (empty: unpinned); prints seconds.
unpack() {
    local pin=() t0 t1
    [ -n "$2" ] && pin=(taskset -c "$2")
    cat "$TARBALL" >/dev/null
    t0=$(date +%s%N)
    "${pin[@]}" tar --xattrs --xattrs-include='*' --numeric-owner --same-owner -xpf "$TARBALL" -C "$1" ||
        die "tar into $1 failed"
    t1=$(date +%s%N)
    awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }'
}

# Threads of lcfsd serving io_uring queues, one id a line (none over /dev/fuse).
queue_threads() {
    local t
    for t in /proc/"$LCFS_PID"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in lcfs-uring-*) echo "${t##*/}" ;; esac
    done
}
queue_policy() {   # idle|other
    local t
    for t in $(queue_threads); do chrt "-${1:0:1}" -p 0 "$t" >/dev/null; done
}

# The directory a configuration unpacks into, made fresh; the matching teardown.
target_up() {   # run config
    case "$2" in
        overlayfs)
            mount -t overlay overlay -o "lowerdir=$DIR/overlayfs/lower,upperdir=$DIR/overlayfs/upper,workdir=$DIR/overlayfs/work" \
                "$DIR/overlayfs/mnt"
            echo "$DIR/overlayfs/mnt" ;;
        tmpfs)
            mount -t tmpfs -o size=2G tmpfs "$DIR/tmpfs"
            echo "$DIR/tmpfs" ;;
        *)
            layer create "w$1-$2"
            echo "$DIR/lcfs/mnt/w$1-$2" ;;
    esac
}
target_down() {   # run config
    case "$2" in
        overlayfs)
            umount "$DIR/overlayfs/mnt"
            rm -rf --one-file-system "$DIR/overlayfs/upper" "$DIR/overlayfs/work"
            mkdir "$DIR/overlayfs/upper" "$DIR/overlayfs/work" ;;
        tmpfs) umount "$DIR/tmpfs" ;;
        *) layer remove "w$1-$2" ;;
    esac
}

# Waits (up to a minute) until no task has waited for the disk for a while (the "some" line of
# /proc/pressure/io, averaged over 10 s, below 2%), so a step does not pay for the disk work
# of the one before, or for the host's.
settle() {
    local i
    [ -r /proc/pressure/io ] || return 0
    for i in $(seq 120); do
        awk '$1 == "some" { split($2, a, "="); exit !(a[2] < 2) }' /proc/pressure/io && return 0
        sleep 0.5
    done
    log "the disk did not settle within a minute ($(head -1 /proc/pressure/io)); measuring anyway"
}

run_config() {   # run config
    local daemon_cpus=0-$(($(nproc) - 1)) tar_cpu='' seconds dir
    case "$2" in
        same-cpu) daemon_cpus=0 tar_cpu=0 ;;
        cross-cpu) daemon_cpus=1 tar_cpu=0 ;;
        idle-queues) queue_policy idle ;;
        haltpoll) echo "$HALTPOLL_NS" >"$HALTPOLL" ;;
    esac
    taskset -a -p -c "$daemon_cpus" "$LCFS_PID" >/dev/null
    dir=$(target_up "$1" "$2")
    sync
    settle
    seconds=$(unpack "$dir" "$tar_cpu")
    sync
    [ -n "$HALTPOLL_SAVED" ] && echo "$HALTPOLL_SAVED" >"$HALTPOLL"
    queue_policy other
    taskset -a -p -c "0-$(($(nproc) - 1))" "$LCFS_PID" >/dev/null
    target_down "$1" "$2"
    printf '%s\t%s\t%s\n' "$1" "$2" "$seconds" >>"$RESULTS"
    log "run $1/$RUNS: $2: $seconds s"
}

# Creates CONTENTION_FILES files in a fresh layer while a busy loop runs on every CPU, the queue
# threads at policy $2; prints seconds.
contention() {   # run idle|other
    local d=$DIR/lcfs/mnt/c$1-$2 i t0 t1
    layer create "c$1-$2"
    queue_policy "$2"
    for i in $(seq 0 $(($(nproc) - 1))); do
        taskset -c "$i" sh -c 'while :; do :; done' &
        HOGS+=($!)
    done
    t0=$(date +%s%N)
    for i in $(seq "$CONTENTION_FILES"); do echo x >"$d/f$i"; done
    t1=$(date +%s%N)
    kill "${HOGS[@]}"
    wait "${HOGS[@]}" 2>/dev/null || true
    HOGS=()
    queue_policy other
    layer remove "c$1-$2"
    printf '%s\tcontention-%s\t%s\n' "$1" "$2" "$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }')" >>"$RESULTS"
    log "run $1/$RUNS: $CONTENTION_FILES files beside busy loops, queue threads $2: $(tail -1 "$RESULTS" | cut -f3) s"
}

: >"$RESULTS"
for run in $(seq "$RUNS"); do
    # Rotate the order so no configuration always follows the same one.
    n=${#CONFIGS[@]}
    for i in $(seq 0 $((n - 1))); do
        run_config "$run" "${CONFIGS[$(((i + run - 1) % n))]}"
    done
    if [ -n "$(queue_threads)" ]; then
        contention "$run" other
        contention "$run" idle
    fi
done

# A round trip between two processes, pinned to one CPU and left to the scheduler.
pipe_round_trip() {   # taskset-args...
    "$@" perf bench sched pipe -l 50000 2>/dev/null | awk '/usecs\/op/ { printf "%.1f", $1 }'
}
PIPE_ONE_CPU=$(pipe_round_trip taskset -c 0)
PIPE_FREE=$(pipe_round_trip)
log "pipe round trip: $PIPE_ONE_CPU µs on one CPU, $PIPE_FREE µs unpinned"

# FUSE requests of one unpack, by type.
layer create count
cat "$TARBALL" >/dev/null
perf record -q -e fuse:fuse_request_send -a -o "$DIR/requests.data" -- \
    tar --xattrs --xattrs-include='*' --numeric-owner --same-owner -xpf "$TARBALL" -C "$DIR/lcfs/mnt/count" 2>/dev/null
perf script -i "$DIR/requests.data" 2>/dev/null | grep -o 'opcode [0-9]* ([A-Z_]*)' | awk '{ print $3 }' |
    tr -d '()' | sort | uniq -c | sort -rn >"$DIR/requests.txt"
layer remove count
REQUESTS=$(awk '{ s += $1 } END { print s + 0 }' "$DIR/requests.txt")
log "one unpack: $REQUESTS FUSE requests"

median() { awk -F'\t' -v c="$1" '$2 == c { print $3 }' "$RESULTS" | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The best run: this VM's host takes time from it at random (steal, disk stalls), which only
# ever makes a run slower, so the best of several runs is the steadiest measure.
best() { awk -F'\t' -v c="$1" '$2 == c { print $3 }' "$RESULTS" | sort -n | head -1 | grep . || echo nan; }
free=$(best free)
overlay=$(best overlayfs)
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
row() {   # config description
    local b
    b=$(best "$1")
    printf '| %s | %s | %s s | %s s | %s | %s |\n' "$1" "$2" "$b" "$(median "$1")" "$(div "$b" "$overlay")" "$(div "$b" "$free")"
}
tmpfs=$(best tmpfs)
floor=$(awk -v t="$tmpfs" -v n="$REQUESTS" -v rt="$PIPE_ONE_CPU" 'BEGIN { printf "%.2f", t + n * rt / 1e6 }')
target=$(awk -v o="$overlay" 'BEGIN { printf "%.2f", 1.5 * o }')
elapsed=$((SECONDS - START))
mkdir -p "$(dirname "$OUT")"
{
    cat <<MD
# FUSE round trips: what they cost lcfs on this machine, and why

Produced by \`scripts/bench-fuse-wakeups.sh --runs $RUNS\` on $(date -u +%Y-%m-%d) at \`$REV\`
($(nproc) CPUs, kernel $(uname -r)); $RUNS runs, configurations alternating; the whole run
took $((elapsed / 60)) min $((elapsed % 60)) s. This VM's host takes time from it at random
(CPU steal, disk stalls: the same unpack into kernel overlayfs has taken from 1.1 s to 15 s
here), which only ever makes a run slower, so ratios are taken between each configuration's
best run; medians are shown beside them.

Each configuration unpacks the Debian rootfs tarball of \`bench-fuse.sh\` ($(basename "$TARBALL"))
with its \`tar -xp\` command; the lcfs configurations unpack into a fresh layer, through the
FUSE mount ($(grep -q 'arrive over io_uring' "$DIR/lcfs/lcfsd.log" && echo "requests over io_uring, a queue per CPU" || echo "requests over /dev/fuse")).

| configuration | what differs | unpack, best | median | best / overlayfs's | best / free's |
|---|---|---|---|---|---|
$(row overlayfs "kernel overlayfs, the peer")
$(row tmpfs "tmpfs: tar's system calls alone")
$(row free "lcfs, nothing pinned (as in bench-fuse.sh)")
$(row same-cpu "lcfs; lcfsd and tar on CPU 0")
$(row cross-cpu "lcfs; lcfsd on CPU 1, tar on CPU 0")
$(row idle-queues "lcfs; queue threads at SCHED_IDLE")
$([ -n "$HALTPOLL_SAVED" ] && row haltpoll "lcfs; guest_halt_poll_ns=$HALTPOLL_NS (was $HALTPOLL_SAVED)")

## A round trip, and how many an unpack needs

* A round trip between two processes through a pipe (\`perf bench sched pipe\`): **$PIPE_ONE_CPU µs**
  with both on CPU 0, **$PIPE_FREE µs** left to the scheduler (the wake-ups then cross CPUs).
* One unpack into lcfs sends **$REQUESTS FUSE requests**:
  $(awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }' "$DIR/requests.txt").
* A floor for any FUSE file system here: tar's own system calls (tmpfs, $tmpfs s) plus one
  same-CPU round trip per request ($REQUESTS × $PIPE_ONE_CPU µs) is **$floor s**, with no work
  done by the daemon; the target, 1.5 × overlayfs, is $target s.

## Queue threads at SCHED_IDLE beside busy CPUs

$CONTENTION_FILES files created (\`echo x > f\`) while a busy loop runs on every CPU, medians:

| queue threads | seconds |
|---|---|
| normal policy (lcfsd's) | $(median contention-other) s |
| SCHED_IDLE | $(median contention-idle) s |

## Every run

| run | configuration | seconds |
|---|---|---|
$(awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$RESULTS")
MD
} >"$OUT"
log "wrote $OUT"
