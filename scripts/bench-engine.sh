#!/usr/bin/env bash
# Runs the engine benchmarks (guest/engine-bench) and the fio runs they are compared with, and
# writes the results to docs/benchmarks/engine.md.
#
# Usage: scripts/bench-engine.sh [--dir DIR] [--out FILE] [--runs N]
#   --dir DIR   file system under test: file devices and fio's file go here
#               (default /var/tmp/lcfs-bench; it is created, and emptied of our files at exit)
#   --out FILE  report to write (default docs/benchmarks/engine.md)
#   --runs N    sequential-write runs of lcfs and fio, alternating (default 3)
#
# Needs cargo, and fio (installed with apt-get if missing). Takes about two minutes on a
# 2-core machine with a fast disk; the 1 GiB sequential runs dominate on slower disks.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=/var/tmp/lcfs-bench
OUT=$ROOT/docs/benchmarks/engine.md
RUNS=3

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
        --out) OUT=${2:?--out needs a file}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$RUNS" in '' | *[!0-9]* | 0) echo "--runs must be a positive number" >&2; exit 2 ;; esac

START=$SECONDS
log() { printf '==> %s\n' "$*" >&2; }

if ! command -v fio >/dev/null 2>&1; then
    log "installing fio"
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y fio || { $SUDO apt-get update && $SUDO apt-get install -y fio; }
fi

log "building lcfs-engine-bench"
(cd "$ROOT" && cargo build --release -p lcfs-engine-bench)
BIN=$ROOT/target/release/lcfs-engine-bench

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
cleanup() {
    rm -rf "$WORK"
    rm -f "$DIR/fio.dat" "$DIR/fio-sync.dat" "$DIR"/lcfs-*.img
}
trap cleanup EXIT

# Runs one benchmark; its result lines go to the results file (and the terminal).
bench() {
    log "lcfs-engine-bench --dir $DIR $*"
    "$BIN" --dir "$DIR" "$@" | tee -a "$RESULTS"
}

# Runs fio with JSON output and records its result under the given name.
fio_run() {
    local name=$1 json=$2 run=$3
    shift 3
    log "fio $*"
    fio "$@" --output-format=json --output="$json"
    local run_arg=()
    [ -z "$run" ] || run_arg=(--run "$run")
    "$BIN" import-fio "$json" --bench "$name" "${run_arg[@]}" --command "fio $*" | tee -a "$RESULTS"
}

# The latency of one fdatasync on this file system: the floor under every durable operation.
# Measured before and after the benchmarks, as other load on the disk moves it.
fdatasync_latency() {
    rm -f "$DIR/fio-sync.dat"
    fio_run fio-fdatasync "$WORK/fio-sync-$1.json" "$1" \
        --name=fdatasync --rw=write --bs=4k --size=2M --fdatasync=1 --filename="$DIR/fio-sync.dat"
    rm -f "$DIR/fio-sync.dat"
}
fdatasync_latency 1

# 1. Commit: on a real file (durable commit includes fdatasync) and in memory (engine cost).
bench commit --device file
bench commit --device mem

# 2. Layer creation on a parent with 100k files.
bench create-layer --device file
bench create-layer --device mem

# 3. Lookup at depth 200 vs depth 1.
bench lookup-depth --device mem

# 4. Sequential write, lcfs and fio alternating (and alternating who goes first). Each run
# deletes its own previous file immediately before writing a new one, and an untimed warm-up
# run of each comes first, so both always write into memory the page cache just gave back:
# on VMs that return freed memory to the host after a few seconds (virtio-balloon free page
# reporting), writing into returned memory is several times slower, and a run that happened to
# get it would measure the hypervisor, not the writer. The last lcfs image stays for step 5.
lcfs_write() {
    local run=$1
    if [ "$run" -eq 0 ]; then
        log "warm-up: lcfs-engine-bench seq-write (not recorded)"
        "$BIN" --dir "$DIR" seq-write --keep >/dev/null
    else
        bench seq-write --keep --run "$run"
    fi
}
fio_write() {
    local run=$1
    local args=(--name=seqwrite --rw=write --bs=1M --size=1G --end_fsync=1 --filename="$DIR/fio.dat")
    rm -f "$DIR/fio.dat"
    if [ "$run" -eq 0 ]; then
        log "warm-up: fio ${args[*]} (not recorded)"
        fio "${args[@]}" --output-format=json --output="$WORK/fio-warmup.json"
    else
        fio_run fio-seq-write "$WORK/fio-$run.json" "$run" "${args[@]}"
    fi
}
sync
for run in $(seq 0 "$RUNS"); do
    if [ $((run % 2)) -eq 1 ]; then
        lcfs_write "$run"
        fio_write "$run"
    else
        fio_write "$run"
        lcfs_write "$run"
    fi
done
rm -f "$DIR/fio.dat"

# 5. Sequential read from the page cache of the file the last lcfs run left.
bench seq-read
rm -f "$DIR/lcfs-seq.img"

# 6. Write amplification of random 4 KiB overwrites of an inherited file.
bench rand-overwrite --device mem

# 7. What the activity counters cost: a small-file workload counting and not counting.
bench counters --device mem

fdatasync_latency 2

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
fs=$(df -PT "$DIR" | awk 'NR == 2 { print $2 " on " $1 " (mounted at " $7 ")" }')
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then rev="$rev + uncommitted changes"; fi
elapsed=$((SECONDS - START))

"$BIN" report --results "$RESULTS" --out "$OUT" \
    --meta "generated=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "Reproduce=\`scripts/bench-engine.sh --dir $DIR --runs $RUNS\` (${elapsed} s for the whole run, build included)" \
    --meta "CPU=$(nproc) cores available (nproc), ${cpu:-unknown model}" \
    --meta "Memory=${mem:-unknown}" \
    --meta "Kernel=$(uname -sr)" \
    --meta "File system of --dir ($DIR)=$fs" \
    --meta "Toolchain=$(rustc --version 2>/dev/null || echo unknown)" \
    --meta "fio=$(fio --version 2>/dev/null || echo unknown)" \
    --meta "Source=$rev"
log "wrote $OUT in $((SECONDS - START)) s"
