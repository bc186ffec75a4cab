#!/usr/bin/env bash
# `make image`: build the container image from ./Dockerfile with podman, on a machine
# that reaches no container registry (only its Debian mirror and PyPI).
#
#   scripts/image.sh [build]        build $IMAGE (default localhost/linnix-exporter:VERSION)
#   scripts/image.sh run ARGS...    podman run ARGS, with what this VM kind needs to start
#                                   a container at all (see run_container below); other
#                                   podman commands (logs, stop, rm) need nothing more
#
# With a registry, none of this is needed: `docker build -t linnix-exporter .` or
# `podman build -t linnix-exporter .` (README, "Deployment").
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' linnix_exporter/__init__.py)
IMAGE=${IMAGE:-localhost/linnix-exporter:$VERSION}
# The Dockerfile says FROM debian:bookworm-slim; podman resolves that short name to
# this local image before it would try a registry.
BASE=localhost/debian:bookworm-slim
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BUILD_CA=/etc/linnix-build-ca.crt

die() {
    echo "image: $*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null || die "$1 is missing: apt-get install $2 (scripts/setup.sh installs it)"
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\/\?\)$/\1/p' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$uri" ] || uri=$(sed -n 's/^deb[[:space:]]\+\(http[^[:space:]]*\/debian\/\?\)[[:space:]].*/\1/p' \
        /etc/apt/sources.list 2>/dev/null | head -n1)
    echo "${DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian}}"
}

# A local stand-in for the registry's debian:bookworm-slim: debootstrap's minbase with
# what the slim image also leaves out (documentation, manual pages, translations, apt's
# caches and lists), and this machine's Debian sources so that apt-get in the build
# reaches the same mirror.
make_base() {
    need debootstrap debootstrap
    local root mirror
    root=$(mktemp -d /var/tmp/linnix-base.XXXXXX)
    # shellcheck disable=SC2064  # expand now: the trap outlives this function's locals
    trap "rm -rf '$root'" EXIT
    mirror=$(debian_mirror)
    echo "image: no $BASE here: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; die "debootstrap failed"; }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/lib/apt/lists/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/*
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
        : >"$root/etc/apt/sources.list"
    fi
    tar -C "$root" -c . | podman import -q - "$BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
}

build() {
    need podman podman
    podman image exists "$BASE" || make_base
    # --isolation chroot: the build's RUN steps need no OCI runtime (see run_container).
    # pip needs this machine's pip.conf and CA bundle; they are mounted for the build
    # only and do not end up in the image. The bundle goes beside, not over, the
    # build stage's own: the ca-certificates package (pulled by python3-venv) rewrites
    # /etc/ssl/certs/ca-certificates.crt when it is installed.
    local mounts=() conf
    conf=$(mktemp /var/tmp/linnix-pip.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -f '$conf'" EXIT
    if [ -f /etc/pip.conf ]; then
        sed "s#^\([[:space:]]*cert[[:space:]]*=\).*#\1 $BUILD_CA#" /etc/pip.conf >"$conf"
        mounts+=(-v "$conf:/etc/pip.conf:ro")
    fi
    [ -f "$CA_BUNDLE" ] && mounts+=(-v "$CA_BUNDLE:$BUILD_CA:ro")
    local start=$SECONDS
    podman build --format docker --isolation chroot --network host --pull=never "${mounts[@]}" \
        --build-arg "VERSION=$VERSION" -t "$IMAGE" .
    local bytes
    bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
    echo "image: $IMAGE built in $((SECONDS - start)) s, $((bytes / 1000000)) MB"
    rm -f "$conf"
    trap - EXIT
}

# Starting a container on this VM kind, as root without CAP_SYS_RESOURCE on a hybrid
# cgroup host (v1 controllers, v2 at /sys/fs/cgroup/unified):
# - crun (podman's default) refuses while the v2 hierarchy has any controller ("cgroups
#   in hybrid mode not supported"); it has one here (hugetlb, mounted nowhere in v1).
#   runc places the container in the v1 controllers (memory, cpu, pids, ...) instead.
# - podman asks for RLIMIT_NOFILE and RLIMIT_NPROC of 2^20 unless told otherwise, after
#   lowering its own RLIMIT_NPROC to kernel.pid_max; raising a hard limit needs
#   CAP_SYS_RESOURCE. Ask for the largest values that need no raise: the current hard
#   limits, NPROC capped at pid_max.
run_container() {
    need podman podman
    need runc runc
    local nofile nproc pid_max
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max)
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
    exec podman --runtime runc run --ulimit "nofile=$nofile:$nofile" \
        --ulimit "nproc=$nproc:$nproc" "$@"
}

case "${1:-build}" in
    build) build ;;
    run) shift && run_container "$@" ;;
    *) die "usage: scripts/image.sh [build | run PODMAN-RUN-ARGS...]" ;;
esac
