# linnix-exporter container image: Debian's bcc + the exporter in a virtualenv.
#
#   docker build -t linnix-exporter:0.1.0 .
#   docker run --rm --pid=host --cap-drop ALL --cap-add BPF --cap-add PERFMON \
#     --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH \
#     --read-only --tmpfs /tmp --tmpfs /lib/modules \
#     -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
#     -p 10924:10924 linnix-exporter:0.1.0
#
# `make image` builds this file on machines without a registry (scripts/image.sh).
# Kubernetes manifests: deploy/kubernetes/ (DaemonSet, PodMonitor, ...).
# What takes the space, and why each part is there: docs/image.md.

# ---------------------------------------------------------------- build stage
# Debian's packages are installed here, as on a developer's machine; the run stage takes
# only the files the exporter runs with. What stays behind: the kernel headers package
# (which pulls gcc through linux-compiler-gcc-*) but the few header files bcc reads,
# python3-venv, pip, apt, dpkg, the shell and the rest of the base system.
FROM debian:bookworm-slim AS build

# The runtime packages are RUNTIME_PKGS of scripts/setup.sh (tests/test_deploy.py keeps
# the two lists equal), plus python3-venv to build the virtualenv and ca-certificates,
# whose bundle the image carries (OTLP over https:// to a collector with a public
# certificate needs no mounted file).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3-bpfcc \
        bpftool \
        linux-headers-amd64 \
        python3-venv \
        ca-certificates \
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
# pip and setuptools leave the venv afterwards: nothing installs at run time.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linnix_exporter ./linnix_exporter
COPY bpf ./bpf
RUN /opt/linnix-exporter/bin/pip install /src \
 && /opt/linnix-exporter/bin/python -c 'import bcc, linnix_exporter' \
 && /opt/linnix-exporter/bin/pip uninstall -y -q pip setuptools

# The image's root filesystem, assembled from this stage (deploy/image/rootfs.sh says
# what goes in). Kernel headers: uname -r in a container is the HOST's kernel, whose
# headers are not in the image. bcc compiles against the Debian headers instead: at
# start-up the daemon (linnix_exporter/kernel/host.py) links /lib/modules/$(uname -r)/build
# to them. That is enough because the probes read struct offsets from the host's BTF
# (/sys/kernel/btf/vmlinux), never from the headers; and only the header files the
# compile reads are kept (deploy/image/kernel-headers.txt).
COPY deploy/image /src/image
RUN bash /src/image/rootfs.sh /rootfs

# ---------------------------------------------------------------- run stage
# Only what runs: no shell, apt, dpkg or compilers (docs/image.md: what takes the space).
FROM scratch

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="linnix-exporter" \
      org.opencontainers.image.description="Prometheus/OTLP exporter that measures what eBPF costs a Linux node, with the Linnix process probes" \
      org.opencontainers.image.source="https://github.com/linnix/linnix-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=build /rootfs /

# The root filesystem is read-only in the DaemonSet: no .pyc written at run time (the
# image carries them).
ENV PYTHONDONTWRITEBYTECODE=1
# Trusted CAs: Debian's bundle, which OpenSSL (OTLP over HTTP) finds at its default
# path, /usr/lib/ssl/cert.pem -> this file; gRPC is pointed at the same file rather than
# the copy grpcio carries, so one bundle decides for both (mount another over it, or
# set OTEL_EXPORTER_OTLP_CERTIFICATE, for a private CA).
ENV GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=/etc/ssl/certs/ca-certificates.crt

# Root: loading BPF programs, BPF_ENABLE_STATS and listing every program on the node
# need CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; naming the programs' owners needs
# CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (give the container only those five).
USER root
EXPOSE 10924

# For Docker/Podman only (Kubernetes ignores it and uses the probes of the DaemonSet).
# Python's urllib, since the image has no shell or curl; assumes the default listen port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/linnix-exporter/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10924/healthz', timeout=4)"]

ENTRYPOINT ["/opt/linnix-exporter/bin/linnix-exporter", "run"]
