"""The exporter's own CPU and RSS against /proc/PID/stat and /proc/PID/status."""

from __future__ import annotations

import os
import subprocess
import sys

from linnix_exporter.kernel.self_usage import read_self_usage
from tests.kernel_helpers import proc_stat_cpu_seconds

TICK = 1 / os.sysconf("SC_CLK_TCK")


def burn(seconds: float) -> None:
    import time

    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_agrees_with_proc_stat() -> None:
    burn(0.3)
    before = proc_stat_cpu_seconds(os.getpid())
    ours = read_self_usage()
    after = proc_stat_cpu_seconds(os.getpid())
    # /proc/PID/stat counts in clock ticks; each of 4 fields may round down a tick.
    assert before - 4 * TICK <= ours.cpu_seconds <= after + 4 * TICK
    assert ours.cpu_seconds >= 0.3


def test_reaped_child_cpu_is_included() -> None:
    """The bcc compile child's CPU is part of what the exporter costs."""
    before = read_self_usage().cpu_seconds
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nt=time.process_time()+0.5\nwhile time.process_time()<t: pass",
        ],
        check=True,
    )
    grew = read_self_usage().cpu_seconds - before
    assert grew >= 0.45


def test_rss_agrees_with_proc_status() -> None:
    ours = read_self_usage().rss_bytes
    with open("/proc/self/status") as f:
        vmrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert abs(ours - vmrss) <= 256 * 1024
