#!/usr/bin/env bash
# Checks the Linux quick start on this machine, as root (CI runs it after the tests): the quick
# start must run a container on lcfs, a second run must change nothing, and the uninstall must
# put containerd's config back byte for byte and leave no lcfsd behind. Where systemd does not
# run (CI), the unit the quick start would install is still checked with systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=/etc/containerd/config.toml

fail() { printf 'test-quickstart.sh: %s\n' "$*" >&2; exit 1; }
digest() { if [ -e "$CONFIG" ]; then sha256sum <"$CONFIG"; else echo absent; fi; }

before=$(digest)
first=$(scripts/quickstart.sh 2>&1) || fail "the quick start failed:
$first"
grep -q "hello from a container whose root file system is on lcfs" <<<"$first" ||
    fail "the quick start ran no container on lcfs:
$first"
grep -q 'snapshotter lcfs' <<<"$first" || fail "the quick start did not say how to use lcfs"
installed=$(digest)

second=$(scripts/quickstart.sh 2>&1) || fail "the second quick start failed:
$second"
grep -q "Nothing changed" <<<"$second" || fail "the second run changed something:
$second"
[ "$(digest)" = "$installed" ] || fail "the second run rewrote $CONFIG"

if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    # shellcheck source=lib/install.sh
    (. scripts/lib/install.sh && lcfsd_unit 20G) >"$unit_dir/lcfsd.service"
    verified=$(systemd-analyze verify "$unit_dir/lcfsd.service" 2>&1) ||
        fail "systemd-analyze rejects the lcfsd unit:
$verified"
    rm -rf "$unit_dir"
fi

scripts/uninstall.sh --purge || fail "the uninstall failed"
[ "$(digest)" = "$before" ] || fail "$CONFIG is not back as it was"
[ ! -e /usr/local/bin/lcfsd ] || fail "/usr/local/bin/lcfsd is still there"
! pgrep -x lcfsd >/dev/null || fail "an lcfsd still runs: $(pgrep -ax lcfsd)"
! grep -q ' /var/lib/lcfs/mnt ' /proc/mounts || fail "the lcfs mount is still there"
echo "quick start: installed, idempotent, uninstalled cleanly"
