# Shared by the benchmark scripts: the Debian rootfs tarball they unpack, built once with
# debootstrap and cached. Sourcing scripts define log and die, and set DIR (cache directory),
# SUITE, INCLUDE (extra packages) and MIRROR (empty: the machine's own apt mirror);
# build_tarball sets TARBALL and uses BOOTSTRAP_DIR for the cleanup of an interrupted build.

# The options these benchmarks share: sets RUNS, DIR, TARBALL_DIR and OUT from the arguments
# after the script's name, calls the script's usage function for --help and mistakes, and
# refuses to run without root.
parse_bench_args() {   # script-name args...
    local name=$1
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
            --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
            --tarball-dir) TARBALL_DIR=${2:?--tarball-dir needs a directory}; shift 2 ;;
            --out) OUT=${2:?--out needs a file}; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
        esac
    done
    case "$RUNS" in '' | *[!0-9]* | 0) echo "--runs must be a positive number" >&2; exit 2 ;; esac
    [ "$(id -u)" -eq 0 ] || { echo "$name must run as root" >&2; exit 2; }
}

# Builds (or finds) the tarball in the cache directory $1 instead of $DIR.
build_tarball_in() {   # cache-dir
    local DIR=$1
    mkdir -p "$DIR"
    build_tarball
}

# Removes what an interrupted build_tarball left; for the sourcing script's exit trap.
remove_bootstrap_dir() {
    if [ -n "${BOOTSTRAP_DIR:-}" ]; then
        umount_below "$BOOTSTRAP_DIR"
        rm -rf --one-file-system "$BOOTSTRAP_DIR"
    fi
}

# Unmounts everything at or below $1, deepest first.
umount_below() {
    local m
    findmnt -rn -o TARGET | awk -v p="$1" '$0 == p || index($0, p "/") == 1' | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}

# The first Debian archive URI of this machine's apt configuration (security archives skipped).
apt_mirror() {
    local uri= f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")
        [ -z "$uri" ] || break
    done
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -r "$f" ] || continue
            uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\// && $i !~ /security/) { print $i; exit } }' "$f")
            [ -z "$uri" ] || break
        done
    fi
    printf '%s' "$uri"
}

# Builds the rootfs tarball with debootstrap unless it is cached. The mirror's name is kept out
# of the image (sources.list, apt lists) and out of the output.
build_tarball() {
    TARBALL=$DIR/rootfs-$SUITE+${INCLUDE//,/+}.tar
    if [ -s "$TARBALL" ] && [ -s "$TARBALL.entries" ]; then
        log "using cached $TARBALL"
        return
    fi
    local mirror=${MIRROR:-$(apt_mirror)}
    [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; pass --mirror URL"
    BOOTSTRAP_DIR=$(mktemp -d "$DIR/debootstrap.XXXXXX")
    log "debootstrap --include=$INCLUDE $SUITE (default variant) from the mirror in the apt configuration into $BOOTSTRAP_DIR"
    debootstrap --include="$INCLUDE" "$SUITE" "$BOOTSTRAP_DIR/rootfs" "$mirror" 2>&1 |
        sed -u "s|$mirror|<mirror>|g" >&2
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "debootstrap failed"
    umount_below "$BOOTSTRAP_DIR/rootfs"
    local r=$BOOTSTRAP_DIR/rootfs
    rm -rf "$r/debootstrap" "$r/var/log/bootstrap.log" "$r/var/lib/apt/lists/"* \
        "$r/var/cache/apt/archives/"*.deb "$r/var/cache/apt/"*.bin
    printf '# emptied by the lcfs benchmark scripts\n' >"$r/etc/apt/sources.list"
    log "packing $TARBALL"
    tar --xattrs --xattrs-include='*' --numeric-owner -C "$r" -cf "$TARBALL.partial" .
    tar -tf "$TARBALL.partial" | wc -l >"$TARBALL.entries"
    mv "$TARBALL.partial" "$TARBALL"
    rm -rf --one-file-system "$BOOTSTRAP_DIR"
    BOOTSTRAP_DIR=
}

