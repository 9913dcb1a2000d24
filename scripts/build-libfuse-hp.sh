#!/usr/bin/env bash
# Builds passthrough_hp, libfuse's high-performance passthrough example, with FUSE over
# io_uring, for `scripts/bench-fuse.sh --libfuse-hp PATH`: a third FUSE peer that does almost
# no work of its own (each request becomes a system call or two on the backing directory), so
# it shows what the FUSE protocol itself costs on the machine.
#
# Usage: scripts/build-libfuse-hp.sh [--source DIR] [--out DIR]
#   --source DIR  an unpacked libfuse source tree, version 3.18 or later (io_uring support);
#                 without it the script runs `apt-get source fuse3` in a temporary directory,
#                 which needs a deb-src entry for a suite whose fuse3 is 3.18 or later
#                 (Debian trixie-backports, forky or sid)
#   --out DIR     where the binary goes (default /var/tmp/lcfs-libfuse-hp); its path is
#                 printed on the last line
#
# Runs as root (installs meson, ninja-build, g++, pkg-config, liburing-dev and libnuma-dev
# with apt-get if missing). libfuse is linked statically, so the binary runs without it.
set -euo pipefail
export LC_ALL=C

SOURCE=
OUT=/var/tmp/lcfs-libfuse-hp

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { printf 'build-libfuse-hp.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs build dependencies with apt-get)"

missing=()
for pair in meson:meson ninja:ninja-build g++:g++ pkg-config:pkg-config; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
for pair in liburing:liburing-dev numa:libnuma-dev; do
    pkg-config --exists "${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ -z "$SOURCE" ]; then
    (cd "$TMP" && apt-get source --download-only fuse3 >/dev/null 2>"$TMP/apt.err") ||
        die "apt-get source fuse3 failed (is there a deb-src entry?): $(tail -1 "$TMP/apt.err")"
    tarball=$(find "$TMP" -maxdepth 1 -name 'fuse3_*.orig.tar.*' ! -name '*.asc' | head -1)
    [ -n "$tarball" ] || die "apt-get source fuse3 downloaded no orig tarball"
    tar -xf "$tarball" -C "$TMP"
    SOURCE=$(find "$TMP" -mindepth 1 -maxdepth 1 -type d -name 'fuse-*' | head -1)
    [ -n "$SOURCE" ] || die "no fuse-* directory in $tarball"
fi
if [ ! -f "$SOURCE/meson.build" ] || [ ! -f "$SOURCE/example/passthrough_hp.cc" ]; then
    die "$SOURCE is not a libfuse source tree (no meson.build or example/passthrough_hp.cc)"
fi
version=$(sed -n "s/^ *version: *'\([0-9.]*\)'.*/\1/p" "$SOURCE/meson.build" | head -1)
case "$version" in
    '' | 3.1[0-7].* | 3.[0-9].* | [0-2].*) die "libfuse ${version:-of unknown version} in $SOURCE has no io_uring support; 3.18 or later is needed" ;;
esac

echo "==> building passthrough_hp from libfuse $version" >&2
meson setup "$TMP/build" "$SOURCE" -Ddefault_library=static -Dexamples=true -Dutils=false \
    -Dtests=false -Dbuildtype=release >"$TMP/meson.log" 2>&1 || { cat "$TMP/meson.log" >&2; die "meson setup failed"; }
grep -q '#define HAVE_URING' "$TMP/build/fuse_config.h" ||
    die "libfuse was configured without io_uring (liburing with SQE128 support and libnuma are needed)"
ninja -C "$TMP/build" example/passthrough_hp >"$TMP/ninja.log" 2>&1 || { tail -20 "$TMP/ninja.log" >&2; die "build failed"; }
mkdir -p "$OUT"
install -m 0755 "$TMP/build/example/passthrough_hp" "$OUT/passthrough_hp"
echo "$version" >"$OUT/passthrough_hp.version"
echo "$OUT/passthrough_hp"
