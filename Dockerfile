# linnix-exporter container image: Debian's bcc + the exporter in a virtualenv.
#
#   docker build -t linnix-exporter:0.1.0 .
#   docker run --rm --pid=host --cap-add BPF --cap-add PERFMON --cap-add SYS_ADMIN \
#     -v /sys/kernel/tracing:/sys/kernel/tracing:ro -p 10924:10924 linnix-exporter:0.1.0
#
# Kubernetes manifests: deploy/kubernetes/ (DaemonSet, PodMonitor, ...).
FROM debian:bookworm-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="linnix-exporter" \
      org.opencontainers.image.description="Prometheus/OTLP exporter that measures what eBPF costs a Linux node, with the Linnix process probes" \
      org.opencontainers.image.source="https://github.com/linnix/linnix-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# The runtime packages are RUNTIME_PKGS of scripts/setup.sh (tests/test_deploy.py keeps
# the two lists equal), plus python3-venv to build the virtualenv.
#
# Kernel headers: uname -r in a container is the HOST's kernel, whose headers are not
# in the image. The image only needs linux-headers-amd64: at start-up the daemon
# (linnix_exporter/kernel/host.py) links /lib/modules/$(uname -r)/build to these
# Debian headers. That is enough because the probes read struct offsets from the
# host's BTF (/sys/kernel/btf/vmlinux), never from the headers.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3-bpfcc \
        bpftool \
        linux-headers-amd64 \
        python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The venv sees Debian's bcc exactly as scripts/setup.sh arranges it: only the bcc
# package of /usr/lib/python3/dist-packages, through a .pth file (the PyPI package
# called "bcc" is an unrelated library).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/linnix-exporter \
 && mkdir -p /opt/linnix-exporter/debian-bcc \
 && ln -sfn /usr/lib/python3/dist-packages/bcc /opt/linnix-exporter/debian-bcc/bcc \
 && site="$(/opt/linnix-exporter/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && echo /opt/linnix-exporter/debian-bcc > "$site/debian-bcc.pth"

# A regular (non-editable) install: the wheel carries bpf/ as linnix_exporter/_bpf.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linnix_exporter ./linnix_exporter
COPY bpf ./bpf
RUN /opt/linnix-exporter/bin/pip install /src \
 && /opt/linnix-exporter/bin/python -c 'import bcc, linnix_exporter' \
 && rm -rf /src
WORKDIR /

# Root: loading BPF programs, BPF_ENABLE_STATS and listing every program on the node
# need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (give the container only those).
USER root
EXPOSE 10924

# For Docker/Podman only (Kubernetes ignores it and uses the probes of the DaemonSet).
# Python's urllib, since the slim image has no curl; assumes the default listen port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/linnix-exporter/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10924/healthz', timeout=4)"]

ENTRYPOINT ["/opt/linnix-exporter/bin/linnix-exporter", "run"]
