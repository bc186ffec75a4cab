#!/usr/bin/env bash
# One setup step for developers, CI and the container image: Debian packages, the
# virtualenv (which sees Debian's bcc), and the host preparation bcc needs
# (tracefs mounted, kernel headers linked). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runtime packages: bcc (Python bindings + libbcc), bpftool (the tests' oracle and a
# user's cross-check) and the Debian kernel headers bcc compiles against.
RUNTIME_PKGS=(python3-bpfcc bpftool linux-headers-amd64)
# Test/bench packages: a workload generator, a peer probe to compare with, Prometheus
# (promtool and a real server for the live tests) and Alertmanager; bcc's own tools
# (bpfcc-tools) as foreign programs; for `make image` and its test: podman, runc (crun
# cannot start containers here), debootstrap (the local base image) and strace
# (deploy/image_headers.py).
DEV_PKGS=(stress-ng bpftrace prometheus prometheus-alertmanager wrk bpfcc-tools podman runc debootstrap strace tmux)

want=("${RUNTIME_PKGS[@]}")
[ "${1:-}" = "--runtime-only" ] || want+=("${DEV_PKGS[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm for tests/test_grafana_schema.py: use any already on PATH (e.g.
# NodeSource's), else Debian's.
if [ "${1:-}" != "--runtime-only" ] && ! command -v npm >/dev/null; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install Debian packages: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# bcc is pure Python over libbcc: expose only the bcc package from Debian's
# dist-packages, not everything else installed there.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-bcc
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc
echo "$(pwd)/.venv/debian-bcc" > "$site/debian-bcc.pth"

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    extra=".[dev]"
    [ "${1:-}" = "--runtime-only" ] && extra="."
    .venv/bin/pip install -q --disable-pip-version-check -e "$extra"
    touch "$stamp"
fi

# Mount tracefs/debugfs and link the Debian headers for the running kernel. The same
# code runs at daemon start-up (linnix_exporter/kernel/host.py).
if [ "$(id -u)" -eq 0 ]; then
    .venv/bin/python -m linnix_exporter.kernel.host
else
    echo "setup: not root; host preparation (tracefs, headers) is left to the daemon" >&2
fi
