"""The container image, built by `make image` and run for real with podman.

The container gets what the DaemonSet gives the pod (deploy/kubernetes/daemonset.yaml,
read here): host PID namespace, its capabilities (all others dropped), read-only root,
the host's /sys/kernel/btf and /sys/kernel/tracing read-only, the host's
/run/linnix-exporter, container-local /lib/modules and /tmp, and its CPU and memory
limits. runc starts it (crun cannot on these VMs: scripts/image.sh says why). What
differs from a cluster: docs/image.md.

Checked against independent sources: bpftool for program statistics and ids, the host's
/proc for owners and memory, the container's memory cgroup for its peak.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from linnix_exporter import __version__
from linnix_exporter.config import DEFAULT_PORT
from linnix_exporter.kernel.stats_switch import SYSCTL
from tests.kernel_helpers import (
    REPO,
    Daemon,
    bpftool_progs,
    bpftrace_fork_counter,
    forks,
    proc_stat_cpu_seconds,
    proc_status,
)
from tests.support.statsprobe import assert_stats_off
from tests.test_daemon import our_ids
from tests.test_deploy import one, parse_quantity

# Building on a fresh machine debootstraps the base first (~2 min) and downloads the
# build stage's packages (~3 min on a slow mirror).
pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1500)]

IMAGE = f"localhost/linnix-exporter:{__version__}"
SIZE_LIMIT = 350e6  # bytes; issue 14
NOBODY = 65534


def podman(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"podman {' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


@pytest.fixture(scope="module")
def image() -> str:
    started = time.monotonic()
    out = subprocess.run(
        ["make", "-s", "image"], cwd=REPO, capture_output=True, text=True, timeout=1400
    )
    assert out.returncode == 0, f"make image failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    print(f"make image: {time.monotonic() - started:.0f} s\n{out.stdout.strip()[-200:]}")
    return IMAGE


# ---------------------------------------------------------------- what is inside


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    path = Path(podman("image", "mount", image).strip())
    try:
        yield path
    finally:
        podman("image", "unmount", image)


# What takes the space (docs/image.md): first matching path prefix wins.
PARTS = (
    ("LLVM 14 (libLLVM: bcc's BPF code generator)", ("usr/lib/x86_64-linux-gnu/libLLVM",)),
    (
        "clang 14 (libclang-cpp: bcc's C front end)",
        ("usr/lib/llvm-14/", "usr/lib/x86_64-linux-gnu/libclang-cpp"),
    ),
    ("ICU 72 (libxml2's; LLVM links libxml2)", ("usr/lib/x86_64-linux-gnu/libicu",)),
    ("Z3 (LLVM links it)", ("usr/lib/x86_64-linux-gnu/libz3",)),
    (
        "bcc (libbcc and its Python package)",
        ("usr/lib/x86_64-linux-gnu/libbcc", "usr/lib/python3/"),
    ),
    (
        "Python 3.11: interpreter, standard library, .pyc",
        ("usr/bin/python3", "usr/lib/python3.11/", "etc/python3"),
    ),
    ("grpcio (OTLP over gRPC)", ("opt/linnix-exporter/lib/python3.11/site-packages/grpc",)),
    (
        "OpenTelemetry SDK and exporters, protobuf",
        (
            "opt/linnix-exporter/lib/python3.11/site-packages/opentelemetry",
            "opt/linnix-exporter/lib/python3.11/site-packages/google",
            "opt/linnix-exporter/lib/python3.11/site-packages/protobuf",
        ),
    ),
    (
        "linnix-exporter itself",
        ("opt/linnix-exporter/lib/python3.11/site-packages/linnix_exporter",),
    ),
    ("other Python dependencies (prometheus-client, PyYAML, bcrypt, ...)", ("opt/",)),
    (
        "other shared libraries (glibc, libstdc++, OpenSSL, libelf, ...)",
        ("usr/lib/x86_64-linux-gnu/", "usr/lib64/"),
    ),
    ("bpftool", ("usr/sbin/bpftool",)),
    ("kernel headers bcc reads (deploy/image/kernel-headers.txt)", ("usr/src/",)),
    ("dpkg status, copyright files, /etc", ("",)),
)


def contents(rootfs: Path) -> dict[str, int]:
    """Bytes per part of PARTS (regular files' sizes)."""
    out = dict.fromkeys((name for name, _ in PARTS), 0)
    for p in rootfs.rglob("*"):
        if p.is_file() and not p.is_symlink():
            rel = str(p.relative_to(rootfs))
            name = next(n for n, prefixes in PARTS if rel.startswith(prefixes))
            out[name] += p.stat().st_size
    return out


def test_image_size(image: str, rootfs: Path) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
    parts = contents(rootfs)
    print(f"\n{image}: {size / 1e6:.0f} MB\n| part | MB |\n|---|---:|")
    for name, n in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {n / 1e6:.1f} |")
    print(f"| total (files) | {sum(parts.values()) / 1e6:.1f} |")
    assert size <= SIZE_LIMIT, f"{size / 1e6:.0f} MB > {SIZE_LIMIT / 1e6:.0f} MB"


def test_image_holds_only_what_runs(rootfs: Path) -> None:
    files = [p for p in rootfs.rglob("*") if p.is_file() or p.is_symlink()]
    rel = {str(p.relative_to(rootfs)) for p in files}
    # No shell, package manager, compiler or linker.
    for tool in ("sh", "bash", "dash", "apt-get", "dpkg", "gcc", "cc", "clang", "ld", "pip"):
        for d in ("usr/bin", "usr/sbin", "opt/linnix-exporter/bin"):
            assert f"{d}/{tool}" not in rel, f"{d}/{tool} is in the image"
    # No documentation but copyright files, no manual pages or translations.
    docs = [r for r in rel if r.startswith("usr/share/doc/") and not r.endswith("/copyright")]
    assert docs == []
    assert not [r for r in rel if r.startswith(("usr/share/man/", "usr/share/locale/"))]
    # The headers are the listed few, not the packages' 60 MB.
    headers = [r for r in rel if r.startswith("usr/src/")]
    listed = [
        ln
        for ln in (REPO / "deploy/image/kernel-headers.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert len(headers) == len(listed)
    # What the entrypoint needs: the venv's python and the daemon, and bcc's library.
    assert "opt/linnix-exporter/bin/linnix-exporter" in rel
    assert "usr/lib/x86_64-linux-gnu/libbcc.so.0" in rel
    assert "usr/sbin/bpftool" in rel


def test_image_trusts_public_cas_without_a_mounted_file(image: str, rootfs: Path) -> None:
    """OTLP over https:// to a collector with a public certificate works out of the box:
    the image carries Debian's CA bundle where OpenSSL looks by default, and the TLS
    context the exporter builds for OTLP over HTTP (config.otlp_settings, no
    OTEL_EXPORTER_OTLP_CERTIFICATE) loads every certificate of it; gRPC is pointed at
    the same file. Run in the container with no network and nothing mounted."""
    bundle = (rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
    cas = bundle.count("-----BEGIN CERTIFICATE-----")
    assert cas >= 100, cas  # Debian bookworm's ca-certificates: ~140 roots
    probe = (
        "import json, os, ssl\n"
        "from linnix_exporter.config import otlp_settings\n"
        "s = otlp_settings({'OTEL_EXPORTER_OTLP_ENDPOINT': 'https://collector.example:4318'})\n"
        "grpc = os.environ['GRPC_DEFAULT_SSL_ROOTS_FILE_PATH']\n"
        "print(json.dumps([ssl.get_default_verify_paths().openssl_cafile,"
        " s.tls.cert_store_stats()['x509_ca'], s.tls.verify_mode == ssl.CERT_REQUIRED,"
        " open(grpc).read().count('BEGIN CERTIFICATE')]))"
    )
    out = subprocess.run(
        [str(REPO / "scripts/image.sh"), "run", "--rm", "--network", "none", "--entrypoint",
         "/opt/linnix-exporter/bin/python", image, "-c", probe],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    cafile, loaded, verifies, grpc_cas = json.loads(out.stdout.strip().splitlines()[-1])
    assert cafile == "/usr/lib/ssl/cert.pem"
    assert (loaded, verifies, grpc_cas) == (cas, True, cas)


# ---------------------------------------------------------------- the DaemonSet's pod


def daemonset_container() -> dict[str, Any]:
    ds = one("DaemonSet", "linnix-exporter")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (c,) = pod["containers"]
    c["_volumes"] = {v["name"]: v for v in pod["volumes"]}
    return dict(c)


# Host paths of a Kubernetes node that this machine has not (no kubelet runs here): an
# empty directory stands in, as on a node that runs no pods yet.
KUBELET_PATHS = {"/var/log/pods"}


def podman_run_args(c: dict[str, Any], name: str, stand_in: Path) -> list[str]:
    """`podman run` options that give the container what the DaemonSet gives the pod;
    `stand_in` is an empty directory for KUBELET_PATHS missing here."""
    sc = c["securityContext"]
    args = ["-d", "--name", name, "--pid=host", "--cap-drop=ALL"]
    args += [f"--cap-add={cap}" for cap in sc["capabilities"]["add"]]
    if sc["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    lim = c["resources"]["limits"]
    args += [
        f"--memory={int(parse_quantity(lim['memory']))}",
        f"--cpus={parse_quantity(lim['cpu'])}",
    ]
    for m in c["volumeMounts"]:
        vol = c["_volumes"][m["name"]]
        if "hostPath" in vol:
            ro = ":ro" if m.get("readOnly") else ""
            path = vol["hostPath"]["path"]
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                os.makedirs(path, exist_ok=True)  # as the kubelet does
            if not os.path.exists(path):
                assert path in KUBELET_PATHS, f"{path} is missing on this host"
                path = str(stand_in)
            args += ["-v", f"{path}:{m['mountPath']}{ro}"]
        else:
            assert "emptyDir" in vol, m
            args += ["--tmpfs", m["mountPath"]]
    # Kubernetes fills in the node's name and expands $(NODE_NAME); podman does not.
    node = socket.gethostname()
    for e in c["env"]:
        if "value" in e:
            value = e["value"].replace("$(NODE_NAME)", node)
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", e
            value = node
        args += ["-e", f"{e['name']}={value}"]
    return [*args, IMAGE, *(a.replace("$(NODE_NAME)", node) for a in c["args"])]


@dataclass
class Container(Daemon):
    """The exporter in a container, scraped on its own network namespace's address
    (as Prometheus scrapes the pod); `proc` follows its log."""

    name: str = ""
    ip: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def inspect(self, fmt: str) -> str:
        return podman("inspect", "--format", fmt, self.name).strip()

    @property
    def host_pid(self) -> int:
        return int(self.inspect("{{.State.Pid}}"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert sig == signal.SIGTERM, "podman stop sends the image's stop signal"
        podman("stop", "--time", str(int(timeout)), self.name, timeout=timeout + 30)
        return int(self.inspect("{{.State.ExitCode}}"))


@contextlib.contextmanager
def exporter_container(
    image: str, *extra: str, limits: dict[str, str] | None = None
) -> Iterator[Container]:
    """The image run as the DaemonSet runs the pod; `limits` replaces its resource
    limits (bench/image_startup.py compares others)."""
    name = f"linnix-exporter-test-{os.getpid()}"
    spec = daemonset_container()
    if limits:
        spec["resources"]["limits"] = limits
    stand_in = tempfile.TemporaryDirectory(prefix="linnix-kubelet-")
    args = podman_run_args(spec, name, Path(stand_in.name))
    out = subprocess.run(
        [str(REPO / "scripts/image.sh"), "run", *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"container did not start: {out.stderr.strip()}"
    logs = subprocess.Popen(
        ["podman", "logs", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        c = Container(logs, DEFAULT_PORT, name=name)
        c.ip = c.inspect("{{.NetworkSettings.IPAddress}}")
        assert c.ip, "no container address"
        yield c
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], capture_output=True, check=False)
        logs.kill()
        logs.wait()
        stand_in.cleanup()


def memory_cgroup(pid: int) -> Path:
    """The cgroup v1 memory directory a process is in (runc puts the container there)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    raise AssertionError(f"pid {pid} is in no v1 memory cgroup")


@contextlib.contextmanager
def nobody_holding_a_program() -> Iterator[tuple[int, int]]:
    """A foreign agent that is not root: loads a program as root, then becomes uid
    65534 and keeps only the fd. Its /proc/PID/fd is then nobody's (mode 0500): reading
    it takes CAP_DAC_READ_SEARCH, and CAP_SYS_PTRACE for another uid. Yields (pid, prog id)."""
    code = (
        "import ctypes, os, sys, time\n"
        "from tests.support import trivial_prog\n"
        "fd = trivial_prog.load('linnix_nobody')\n"
        f"os.setresgid({NOBODY}, {NOBODY}, {NOBODY}); os.setresuid({NOBODY}, {NOBODY}, {NOBODY})\n"
        "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/PID is ours\n"
        "print(fd, flush=True); time.sleep(600)\n"
    )
    before = set(bpftool_progs())
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout and proc.stdout.readline(), "holder failed"
        (prog_id,) = [
            i
            for i, p in bpftool_progs().items()
            if i not in before and p.get("name") == "linnix_nobody"
        ]
        assert os.stat(f"/proc/{proc.pid}/fd").st_uid == NOBODY
        yield proc.pid, prog_id
    finally:
        proc.kill()
        proc.wait()


def evict_page_cache(rootfs: Path) -> None:
    """Drop the page cache of the image's files (POSIX_FADV_DONTNEED, passed through
    overlayfs to the layer's files), so that the container's memory cgroup is charged
    for every page it reads, as on a node that never ran the image. Other files'
    cache, and pages a running process has mapped, stay."""
    for p in rootfs.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # a freshly built image's pages are dirty: not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class CgroupSampler:
    """Samples the container's anonymous memory (memory.stat `rss`: heap and stacks of
    the daemon and of its compile child) every 20 ms: cgroup v1 keeps a peak only for
    the total, which counts page cache too."""

    def __init__(self, cgroup: Path) -> None:
        self.stat = cgroup / "memory.stat"
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                for line in self.stat.read_text().splitlines():
                    if line.startswith("rss "):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_rss


def stats_running(prog_id: int) -> bool:
    """Are BPF statistics on (by anyone)? A foreign program's run_time_ns advances under
    forks only while they are."""
    before = bpftool_progs()[prog_id].get("run_time_ns", 0)
    forks(50)
    return bool(bpftool_progs()[prog_id].get("run_time_ns", 0) > before)


def owners(m: dict[str, float], prog_id: int) -> set[tuple[int, str, str]]:
    """(owner pid, comm, container id) of a program's owner_info series."""
    out = set()
    for k in m:
        if k.startswith("linnix_bpf_program_owner_info{"):
            labels = dict(re.findall(r"(\w+)=([^,}]*)", k.split("{", 1)[1]))
            if labels["id"] == str(prog_id):
                out.add((int(labels["owner_pid"]), labels["owner_comm"], labels["container_id"]))
    return out


def test_container_as_the_daemonset_runs_it(image: str, rootfs: Path) -> None:
    with (
        bpftrace_fork_counter() as (agent, foreign_id),
        nobody_holding_a_program() as (nobody_pid, nobody_prog),
    ):
        sysctl_before = Path(SYSCTL).read_text()
        evict_page_cache(rootfs)

        # Other sessions' programs may crowd ours out of the top 50 listed by default.
        names = f"^(linnix_nobody|{bpftool_progs()[foreign_id]['name']})$"
        started = time.monotonic()
        with exporter_container(image, "--collect.interval=1s", f"--bpf.include-name={names}") as c:
            pid = c.host_pid
            cgroup = memory_cgroup(pid)
            sampler = CgroupSampler(cgroup)
            # Time to ready: podman run to /readyz 200, the probes compiled in the
            # container under the DaemonSet's CPU limit, from a cold page cache.
            c.wait_ready(timeout=120)
            ready_s = time.monotonic() - started
            cpu_to_ready = proc_stat_cpu_seconds(pid)
            anon_peak = sampler.stop()
            m = c.wait_tick(0)
            ours = our_ids(m)
            assert ours and ours <= set(bpftool_progs())
            # Both programs were compiled from the image's few headers: the iterator
            # reads the statistics (auto would fall back to bpf() calls without it).
            assert m["linnix_bpf_read_method{method=iterator}"] == 1
            assert m["linnix_probes_attached{}"] == 1
            # The image's HEALTHCHECK (Docker/Podman) works in an image with no shell.
            health = subprocess.run(
                ["podman", "healthcheck", "run", c.name], capture_output=True, text=True
            )
            assert health.returncode == 0, health.stdout + health.stderr

            # /metrics against bpftool on the foreign program, bracketed in time:
            # bpftool before <= the tick's reading <= bpftool after.
            forks(200)
            b0 = bpftool_progs()[foreign_id]
            t0 = time.time()
            forks(200)
            m = c.wait_tick_after(t0)
            b1 = bpftool_progs()[foreign_id]
            key = f"id={foreign_id},name={b0['name']},ours=false,tag={b0['tag']},type=tracepoint"
            runs = m[f"linnix_bpf_program_runs_total{{{key}}}"]
            run_s = m[f"linnix_bpf_program_run_time_seconds_total{{{key}}}"]
            assert b0["run_cnt"] <= runs <= b1["run_cnt"]
            assert b1["run_cnt"] > b0["run_cnt"], "stats on: forks must count"
            # The metric is in seconds, printed with 10 significant digits at most.
            assert b0["run_time_ns"] * (1 - 1e-9) <= run_s * 1e9 <= b1["run_time_ns"] * (1 + 1e-9)

            # Owners are host PIDs: bpftrace (root with every capability: needs
            # CAP_SYS_PTRACE), the non-root holder (needs CAP_DAC_READ_SEARCH), and the
            # container's own daemon for our programs. Processes outside containers
            # have no container id; the daemon's is the one podman gave the container
            # (read from the host's /proc/PID/cgroup).
            assert owners(m, foreign_id) == {(agent.pid, "bpftrace", "")}
            assert {(p, cid) for p, _, cid in owners(m, nobody_prog)} == {(nobody_pid, "")}
            container_id = c.inspect("{{.Id}}")
            for prog_id in ours:
                assert (pid, container_id) in {(p, cid) for p, _, cid in owners(m, prog_id)}

            # Memory against the DaemonSet's figures: the daemon's RSS now within the
            # request; the container's anonymous memory (the daemon's and the compile
            # child's: what cannot be reclaimed) well under the limit. Page cache of the
            # libraries the compile maps is charged too and is reclaimed at the limit.
            rss = proc_status(pid, "VmRSS") * 1024
            peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
            failcnt = int((cgroup / "memory.failcnt").read_text())
            res = daemonset_container()["resources"]
            mib = 2**20
            print(
                f"ready in {ready_s:.1f} s ({cpu_to_ready:.2f} s CPU) under "
                f"{res['limits']['cpu']} CPU; daemon RSS {rss / mib:.0f} MiB; container "
                f"anonymous peak {anon_peak / mib:.0f} MiB (sampled), total peak "
                f"{peak / mib:.0f} MiB with page cache; limit hit {failcnt} times"
            )
            assert rss <= parse_quantity(res["requests"]["memory"])
            # The startup probe gives start-up its period x failures; keep 4x what was
            # measured (this machine's speed varies 2x and more between runs).
            startup = daemonset_container()["startupProbe"]
            assert ready_s * 4 < startup["periodSeconds"] * startup["failureThreshold"]
            assert anon_peak < parse_quantity(res["limits"]["memory"]) / 2

            assert c.stop() == 0
        # SIGTERM: none of the programs the container reported is loaded, and the
        # statistics are as found (the sysctl unchanged; running or not as before).
        deadline = time.monotonic() + 10
        while ours & set(bpftool_progs()):
            assert time.monotonic() < deadline, f"still loaded: {ours & set(bpftool_progs())}"
            time.sleep(0.2)
        assert Path(SYSCTL).read_text() == sysctl_before
        if sysctl_before.strip() == "1":
            assert stats_running(foreign_id)  # the sysctl, as found, keeps them on
        else:
            # Off, unless another process holds them now (a shared node's holders come
            # and go during the test): assert_stats_off names them, and none may be ours.
            assert_stats_off()
