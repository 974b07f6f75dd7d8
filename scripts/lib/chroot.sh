# Fresh Debian 12 root file systems for the check scripts (scripts/check-*), run as root.
# Source it after `set -euo pipefail`; it defines functions and the cleanup trap.
#
#   chroot_base                 path of the cached base tarball (built with debootstrap if missing)
#   chroot_new                  unpack a fresh copy into $CHROOT, with this machine's apt
#                               configuration and pip CA bundle, and mount /proc, /sys, /dev
#   in_chroot CMD...            run CMD in it as root with a clean environment
#   chroot_cleanup              stop everything running in it, unmount, delete (also on exit)

if [ "$(id -u)" -ne 0 ]; then
    echo "$(basename "$0"): run it as root (it builds and mounts root file systems)" >&2
    exit 1
fi

CACHE_DIR=${ANGOSD_CI_CACHE:-/var/cache/angosd-ci}
WORK_DIR=${ANGOSD_CI_WORK:-/var/tmp}
SUITE=bookworm
CHROOTS=()
CHROOT=""
TEMP_PATHS=()  # deleted on exit, with the chroots
# Where pip's CA bundle goes inside the chroot: not /etc/ssl/certs, which Debian's
# ca-certificates package rewrites when a package pulls it in.
CHROOT_PIP_CERT=/usr/local/share/pip-ca-bundle.crt

log() { printf '%s %s: %s\n' "$(date -u +%H:%M:%S)" "$(basename "$0")" "$*" >&2; }

# The Debian mirror this machine's apt uses for $SUITE (deb822 .sources or one-line .list).
debian_mirror() {
    local files=() file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] && files+=("$file")
    done
    awk -v suite="$SUITE" '
        function emit() {
            if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ (" " suite " ") && uris != "") { print uris; exit }
            types = ""; uris = ""; suites = ""
        }
        FNR == 1 { emit() }
        FILENAME ~ /\.list$/ && $1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
            next
        }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { emit(); next }
            if ($1 == "Types:") types = $0
            if ($1 == "URIs:") uris = $2
            if ($1 == "Suites:") suites = $0 " "
        }
        END { emit() }
    ' "${files[@]}" 2>/dev/null | head -n 1 | sed 's:/*$::'
}

ensure_host_tools() {
    local missing=() tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; }
}

# The cached tarball of a plain Debian 12 (debootstrap's default: what the installer sets up
# before any task is chosen, so no sudo), built from this machine's mirror once per week
# and per mirror, so that reruns take seconds and security updates still arrive.
chroot_base() {
    local mirror key tarball build
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || { log "no $SUITE mirror in /etc/apt/sources.list{,.d}"; return 1; }
    key=$(printf '%s' "$mirror" | sha256sum | cut -c1-12)
    tarball="$CACHE_DIR/debian12-$key-$(date -u +%G-W%V).tar.zst"
    mkdir -p "$CACHE_DIR"
    (
        flock 9
        [ -s "$tarball" ] && exit 0
        ensure_host_tools debootstrap zstd
        build=$(mktemp -d "$WORK_DIR/angosd-debootstrap.XXXXXX")
        chmod 0755 "$build"
        trap 'umount_below "$build"; rm -rf --one-file-system "$build"' EXIT
        log "debootstrap $SUITE from $mirror (cached afterwards in $tarball)"
        local started=$SECONDS
        debootstrap --arch=amd64 "$SUITE" "$build" "$mirror" >"$build.log" 2>&1 ||
            { tail -n 20 "$build.log" >&2; rm -f "$build.log"; exit 1; }
        rm -f "$build.log"
        umount_below "$build"
        rm -rf "$build"/var/cache/apt/archives/*.deb
        log "debootstrap took $((SECONDS - started)) s"
        tar --numeric-owner --one-file-system -C "$build" -cf - . | zstd -q -T0 -3 -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        find "$CACHE_DIR" -maxdepth 1 -name "debian12-$key-*.tar.zst" ! -path "$tarball" -delete
    ) 9>"$CACHE_DIR/.lock"
    echo "$tarball"
}

# Unmount everything mounted at or below a directory, deepest first.
umount_below() {
    local dir mount
    dir=$(realpath "$1")
    awk -v dir="$dir" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
}

# Kill every process whose root directory is the chroot (the daemons started in it).
kill_in_chroot() {
    local root=$1 signal=${2:-TERM} proc pid
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ] && kill -s "$signal" "$pid" 2>/dev/null || true
    done
}

processes_in_chroot() {
    local root=$1 proc
    for proc in /proc/[0-9]*; do
        [ "$(readlink "$proc/root" 2>/dev/null)" = "$root" ] && echo "${proc#/proc/}"
    done
    return 0
}

chroot_cleanup() {
    local root waited
    for root in "${CHROOTS[@]}"; do
        [ -d "$root" ] || continue
        kill_in_chroot "$root" TERM
        for waited in $(seq 1 50); do
            [ -z "$(processes_in_chroot "$root")" ] && break
            sleep 0.2
        done
        kill_in_chroot "$root" KILL
        umount_below "$root"
        if awk -v dir="$root" 'index($5, dir) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
            log "still mounted below $root: not deleting it"
        else
            rm -rf --one-file-system "$root"
        fi
    done
    CHROOTS=()
    [ ${#TEMP_PATHS[@]} -eq 0 ] || rm -rf "${TEMP_PATHS[@]}"
    TEMP_PATHS=()
}

# A fresh copy of the base system in $CHROOT: this machine's apt sources (and the keyrings
# they name) and apt.conf.d as they are, its resolv.conf, and the CA bundle $PIP_CERT names
# (pip reaches PyPI only with it here). /proc, /sys and /dev are mounted.
chroot_new() {
    local tarball file keyring
    tarball=$(chroot_base)
    CHROOT=$(mktemp -d "$WORK_DIR/angosd-chroot.XXXXXX")
    CHROOTS+=("$CHROOT")
    # In memory: unpacking is quicker, and deleting it is one umount instead of a long rm -rf.
    mount -t tmpfs -o "size=${ANGOSD_CI_CHROOT_SIZE:-4g}" tmpfs "$CHROOT"
    zstd -q -dc "$tarball" | tar --numeric-owner -xpf - -C "$CHROOT"
    chmod 0755 "$CHROOT"  # the root directory of the system
    rm -f "$CHROOT"/etc/apt/sources.list "$CHROOT"/etc/apt/sources.list.d/*
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$CHROOT/etc/apt/"
    for file in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] && cp "$file" "$CHROOT/etc/apt/sources.list.d/"
    done
    for keyring in $(grep -ohE '(Signed-By:[[:space:]]*|signed-by=)/[^] ]+' \
            "$CHROOT"/etc/apt/sources.list "$CHROOT"/etc/apt/sources.list.d/* 2>/dev/null | sed 's/.*[:=][[:space:]]*//'); do
        [ -e "$CHROOT$keyring" ] || { [ -f "$keyring" ] && install -D -m 0644 "$keyring" "$CHROOT$keyring"; }
    done
    rm -rf "$CHROOT/etc/apt/apt.conf.d"
    cp -a /etc/apt/apt.conf.d "$CHROOT/etc/apt/apt.conf.d"
    cp -L /etc/resolv.conf "$CHROOT/etc/resolv.conf"
    if [ -n "${PIP_CERT:-}" ]; then
        install -D -m 0644 "$PIP_CERT" "$CHROOT$CHROOT_PIP_CERT"
    fi
    mount -t proc proc "$CHROOT/proc"
    mount --rbind /sys "$CHROOT/sys" && mount --make-rslave "$CHROOT/sys"
    mount --rbind /dev "$CHROOT/dev" && mount --make-rslave "$CHROOT/dev"
    mount -t tmpfs tmpfs "$CHROOT/run"
}

# Run a command in $CHROOT as root, with a login-like clean environment.
in_chroot() {
    local env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
               TERM="${TERM:-dumb}")
    [ -n "${PIP_CERT:-}" ] && env+=(PIP_CERT="$CHROOT_PIP_CERT")
    [ -n "${PIP_DEFAULT_TIMEOUT:-}" ] && env+=(PIP_DEFAULT_TIMEOUT="$PIP_DEFAULT_TIMEOUT")
    chroot "$CHROOT" /usr/bin/env -i "${env[@]}" "$@"
}

# Copy the checkout's committed tree (HEAD) plus uncommitted changes to tracked files into
# $CHROOT/$1 (git stash create makes a commit of the working tree without touching it).
copy_checkout() {
    local dest=$CHROOT$1 top tree
    top=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
    tree=$(git -C "$top" stash create 2>/dev/null)
    mkdir -p "$dest"
    git -C "$top" archive "${tree:-HEAD}" | tar -xf - -C "$dest"
}

# The one child process of PID (a command started in the background with in_chroot ... &
# runs as the child of a subshell; signals must go to the command itself).
child_of() {
    local children
    children=$(cat /proc/"$1"/task/*/children 2>/dev/null)
    [ "$(echo "$children" | wc -w)" -eq 1 ] || { log "process $1 has children '$children', expected one"; return 1; }
    echo $children
}

# A TCP port nobody listens on right now, on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait until URL answers (any HTTP status) or the process PID exits or TIMEOUT seconds pass.
wait_http() {
    local url=$1 pid=$2 timeout=$3 started=$SECONDS
    until curl -s -o /dev/null "$url"; do
        kill -0 "$pid" 2>/dev/null || { log "the process $pid exited before $url answered"; return 1; }
        [ $((SECONDS - started)) -lt "$timeout" ] || { log "$url did not answer in $timeout s"; return 1; }
        sleep 1
    done
}

# Push a freshly built image to the registry at HOSTPORT as REPO:1.0 with skopeo (from this
# machine, plain HTTP), pull it back, and compare: the manifest digest the registry serves and
# the pulled copy's must be the pushed one, and every pulled blob must match its digest.
skopeo_roundtrip() {
    local hostport=$1 repo=$2 images pushed served pulled blob
    images=$(mktemp -d)
    TEMP_PATHS+=("$images")
    pushed=$("$(dirname "${BASH_SOURCE[0]}")/../make-test-image" "$images/pushed" 1.0)
    skopeo copy -q --dest-tls-verify=false "oci:$images/pushed:1.0" "docker://$hostport/$repo:1.0"
    served=$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://$hostport/$repo:1.0")
    skopeo copy -q --src-tls-verify=false "docker://$hostport/$repo:1.0" "oci:$images/pulled:1.0"
    pulled=$(skopeo inspect --format '{{.Digest}}' "oci:$images/pulled:1.0")
    for blob in "$images"/pulled/blobs/sha256/*; do
        [ "$(sha256sum <"$blob" | cut -d' ' -f1)" = "$(basename "$blob")" ] || { log "pulled blob $blob is corrupt"; pulled=bad; }
    done
    if ! diff -q <(ls "$images/pushed/blobs/sha256") <(ls "$images/pulled/blobs/sha256") >/dev/null; then
        log "the pulled blobs are not the pushed ones"; pulled=bad
    fi
    rm -rf "$images"
    if [ "$pushed" = "$served" ] && [ "$pushed" = "$pulled" ]; then
        log "push and pull of $hostport/$repo:1.0 ok: $pushed"
    else
        log "digests differ: pushed $pushed, served $served, pulled $pulled"
        return 1
    fi
}

trap chroot_cleanup EXIT
trap 'exit 130' INT TERM
