#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond the Rust toolchain: pjdfstest (the POSIX file
# system test suite), and the unprivileged user it switches to. Safe to run again.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2

if ! command -v pjdfstest >/dev/null 2>&1; then
    cargo install --locked pjdfstest --version "$PJDFSTEST_VERSION"
fi
if ! id tests >/dev/null 2>&1; then
    useradd --no-create-home --user-group --shell /usr/sbin/nologin tests
fi
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
