#!/usr/bin/env bash
# Fetches containerd from another Debian suite (trixie: 1.7, sid: 2.x) into DEST without
# installing it, for testing lcfs against several containerd versions on one machine:
# DEST/bin holds containerd, ctr and containerd-shim-runc-v2 (the distribution's runc stays in
# use; newer suites' runc needs a newer glibc). Uses this machine's apt mirror through a private
# apt directory, so the system's apt configuration is not touched.
#
# Usage: scripts/fetch-containerd.sh SUITE DEST
#   then: PATH=DEST/bin:$PATH cargo test -p lcfsd --test containerd
set -euo pipefail
SUITE=${1:?usage: fetch-containerd.sh SUITE DEST}
DEST=${2:?usage: fetch-containerd.sh SUITE DEST}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'fetch-containerd.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib/rootfs.sh
. "$ROOT/scripts/lib/rootfs.sh"

mirror=$(apt_mirror)
[ -n "$mirror" ] || die "no Debian mirror in this machine's apt configuration"
apt=$DEST/apt
rm -rf "$apt" "$DEST/root" "$DEST/bin"
mkdir -p "$apt/etc/apt/sources.list.d" "$apt/etc/apt/preferences.d" "$apt/etc/apt/trusted.gpg.d" \
    "$apt/state/lists/partial" "$apt/cache/archives/partial" "$DEST/root" "$DEST/bin" "$DEST/debs"
echo "deb $mirror $SUITE main" >"$apt/etc/apt/sources.list"
cp -a /etc/apt/trusted.gpg.d/. "$apt/etc/apt/trusted.gpg.d/" 2>/dev/null || true
opts=(-o "Dir::Etc=$apt/etc/apt" -o "Dir::State=$apt/state" -o "Dir::Cache=$apt/cache"
    -o Debug::NoLocking=1 -o "APT::Architecture=$(dpkg --print-architecture)")
log "reading the package lists of $SUITE"
apt-get "${opts[@]}" -qq update
rm -f "$DEST"/debs/containerd_*.deb
(cd "$DEST/debs" && apt-get "${opts[@]}" -qq download containerd 2>/dev/null)
deb=$(ls "$DEST"/debs/containerd_*.deb)
dpkg -x "$deb" "$DEST/root"
for b in containerd ctr containerd-shim-runc-v2; do
    [ -x "$DEST/root/usr/bin/$b" ] || die "$deb has no usr/bin/$b"
    ln -sf "../root/usr/bin/$b" "$DEST/bin/$b"
done
log "$("$DEST/bin/containerd" --version) in $DEST/bin"
