#!/usr/bin/env bash
# The project's test command (README.md; `.ci/run` calls exactly this). On a fresh Debian or
# Ubuntu machine with only a Rust toolchain, as root, it first installs what the tests need
# (scripts/install-test-deps.sh: packages, pjdfstest, the unprivileged user `tests`, the
# rustfmt and clippy components), then runs every check and test:
#
#   1. formatting and clippy;
#   2. unit, model-based, crash, bad-input and end-to-end tests (real FUSE mounts, served over
#      io_uring where the kernel offers it, and a real containerd from the distribution);
#   3. the FUSE end-to-end tests and pjdfstest once more over /dev/fuse, the path of older
#      kernels;
#   4. the snapshotter against newer containerd releases: 1.7 (Debian trixie) and 2.x (sid),
#      fetched from Debian without installing them, cached under /var/tmp;
#   5. the README's quick start on this machine: installs, runs again, uninstalls.
#
# Knobs for longer randomized runs: LCFS_MODEL_SEQUENCES, LCFS_MODEL_OPS, LCFS_CRASH_CASES,
# LCFS_KILL_CASES, LCFS_STRESS_GENERATIONS, LCFS_STRESS_OPS, LCFS_STRESS_SEED (see
# guest/engine/tests/). LCFS_TEST_SKIP_QUICKSTART=1 leaves out step 5, for
# machines where the quick start must not touch the system's containerd.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

step "installing what the tests need"
scripts/install-test-deps.sh
echo "$(cargo --version), $(nproc) cores, kernel $(uname -r)"

step "formatting and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and end-to-end tests"
cargo test --workspace --locked

step "FUSE end-to-end tests and pjdfstest over /dev/fuse"
LCFS_TEST_NO_URING=1 cargo test -p lcfs-fuse --locked

for suite in trixie sid; do
    step "the snapshotter against containerd from Debian $suite"
    scripts/fetch-containerd.sh "$suite" "/var/tmp/lcfs-containerd-$suite"
    PATH="/var/tmp/lcfs-containerd-$suite/bin:$PATH" cargo test --locked -p lcfsd --test containerd
done

if [ "${LCFS_TEST_SKIP_QUICKSTART:-}" != 1 ]; then
    step "the quick start"
    scripts/test-quickstart.sh
fi

step "all tests passed in $(( $(date +%s) - start )) s"
