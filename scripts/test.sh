#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit, model-based, crash,
# bad-input and end-to-end tests. Knobs for longer randomized runs: LCFS_MODEL_SEQUENCES,
# LCFS_MODEL_OPS, LCFS_CRASH_CASES, LCFS_KILL_CASES (see guest/engine/tests/).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The mount serves over io_uring where the kernel offers it; the same end-to-end tests (and
# pjdfstest) once more over /dev/fuse, the path of older kernels.
LCFS_TEST_NO_URING=1 cargo test -p lcfs-fuse --locked
