#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond the Rust toolchain: pjdfstest (the POSIX file
# system test suite) and the unprivileged user it switches to; containerd, runc and
# busybox-static from Debian's packages (the snapshotter's tests run a private containerd and
# build their images from busybox). Safe to run again.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2

missing=()
for pair in containerd:containerd ctr:containerd runc:runc containerd-shim-runc-v2:containerd busybox:busybox-static; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# busybox-static, not a dynamically linked busybox: the test images have no libc.
if [ -x /bin/busybox ] && ldd /bin/busybox >/dev/null 2>&1; then
    missing+=(busybox-static)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's containerd package may try to start its service; the tests run their own.
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
fi

if ! command -v pjdfstest >/dev/null 2>&1; then
    cargo install --locked pjdfstest --version "$PJDFSTEST_VERSION"
fi
if ! id tests >/dev/null 2>&1; then
    useradd --no-create-home --user-group --shell /usr/sbin/nologin tests
fi
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
