#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond the Rust toolchain: pjdfstest (the POSIX file
# system test suite) and the unprivileged user it switches to; containerd, runc and
# busybox-static from Debian's packages (the snapshotter's tests run a private containerd and
# build their images from busybox); rustfmt and clippy where the toolchain lacks them. Safe to
# run again; installs nothing that is already there. scripts/test.sh runs it first.
set -euo pipefail

die() { printf 'install-test-deps.sh: %s\n' "$*" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed: this project needs a Rust toolchain (1.95 or later), e.g. from rustup"
[ "$(id -u)" = 0 ] ||
    die "run as root (sudo $0): the tests mount FUSE file systems and run containerd, and this installs packages"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: the tests expect a Debian or Ubuntu machine"

# rustfmt and clippy come with rustup's default profile; a minimal toolchain lacks them.
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $component is missing and rustup is not there to add it"
        rustup component add "$component"
    fi
done

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
