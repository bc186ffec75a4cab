"""The container image's start-up under the DaemonSet's limits and others: time to
ready, CPU, RSS and the memory cgroup's peaks, from a cold page cache.

    python -m bench.image_startup [ROUNDS]     (root; after `make image`)

Each round starts the image as tests/test_image.py does (the DaemonSet's capabilities,
mounts, arguments; runc), with the limits of one row, after dropping the image's files
from the page cache (as on a node that never ran it); the rows are interleaved round by
round, so that they share the machine's state. Raw output: bench/results/.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.common import header
from tests.kernel_helpers import proc_stat_cpu_seconds, proc_status
from tests.test_image import (
    IMAGE,
    CgroupSampler,
    evict_page_cache,
    exporter_container,
    memory_cgroup,
    podman,
)

ROWS = (
    {"cpu": "200m", "memory": "256Mi"},  # the DaemonSet's
    {"cpu": "200m", "memory": "1Gi"},
    {"cpu": "2", "memory": "256Mi"},
    {"cpu": "2", "memory": "1Gi"},
)
MIB = 2**20


def one(rootfs: Path, limits: dict[str, str]) -> str:
    evict_page_cache(rootfs)
    started = time.monotonic()
    with exporter_container(IMAGE, limits=limits) as c:
        pid = c.host_pid
        cgroup = memory_cgroup(pid)
        sampler = CgroupSampler(cgroup)
        c.wait_ready(timeout=120)
        ready = time.monotonic() - started
        anon = sampler.stop()
        cpu = proc_stat_cpu_seconds(pid)
        rss = proc_status(pid, "VmRSS") * 1024
        peak = int((cgroup / "memory.max_usage_in_bytes").read_text())
        failcnt = int((cgroup / "memory.failcnt").read_text())
        c.stop()
    return (
        f"| {limits['cpu']} | {limits['memory']} | {ready:.1f} s | {cpu:.2f} s "
        f"| {rss / MIB:.0f} MiB | {anon / MIB:.0f} MiB | {peak / MIB:.0f} MiB | {failcnt} |"
    )


def main(argv: list[str]) -> None:
    rounds = int(argv[0]) if argv else 3
    print(header(f"python -m bench.image_startup {rounds}"))
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).strip()
    print(f"image: {IMAGE}, {size} bytes")
    print(
        "ready: podman run to /readyz 200; CPU: daemon + reaped children (/proc/PID/stat); "
        "anonymous peak: cgroup memory.stat rss sampled every 20 ms; total peak: "
        "memory.max_usage_in_bytes (page cache included); failcnt: times the limit was hit"
    )
    print(
        "| CPU limit | memory limit | ready | CPU | daemon RSS | anonymous peak | total peak "
        "| failcnt |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rootfs = Path(podman("image", "mount", IMAGE).strip())
    try:
        for _ in range(rounds):
            for limits in ROWS:
                print(one(rootfs, limits), flush=True)
    finally:
        subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True, check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
