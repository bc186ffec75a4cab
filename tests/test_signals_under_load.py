"""Signals while the node is busy: a stress-ng fork storm keeps the probes firing and a
scraper keeps reading /metrics when SIGTERM, SIGINT or SIGKILL arrives. tests/
test_shutdown.py checks the same exits on an idle node; here, under load:

- SIGTERM/SIGINT: exit 0 within seconds, none of the program ids seen while running is
  still loaded (bpftool), BPF stats as found (a fresh program's runs are not counted),
  the sysctl unchanged — and with --bpf.stats-method sysctl, put back; on a shared node
  "as found" is read from the kernel once other holders let go, or they are named and
  none is ours (statsprobe.assert_stats_off);
- SIGKILL: nothing of ours left, and with the fd method no stats left on and the sysctl
  as found."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from linnix_exporter.kernel.stats_markers import markers
from linnix_exporter.kernel.stats_switch import SYSCTL
from tests.kernel_helpers import Daemon, daemon, stop_process
from tests.support.statsprobe import assert_stats_off, free_window
from tests.test_daemon import our_ids
from tests.test_shutdown import wait_gone

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def fork_storm() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["stress-ng", "--fork", "2", "--timeout", "120s", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGTERM)


@dataclass
class Scrapes:
    ok: int = 0
    failed_at: list[float] = field(default_factory=list)  # monotonic time of each failure


@contextlib.contextmanager
def scraping(d: Daemon) -> Iterator[Scrapes]:
    """Scrape until the block ends, counting successes and when each failure happened."""
    seen = Scrapes()
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                d.metrics()
                seen.ok += 1
            except Exception:
                seen.failed_at.append(time.monotonic())
            time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()


def signal_under_load(sig: int, *args: str) -> tuple[int, set[int], float, int]:
    """Run the daemon, load it, signal it: (exit code, our program ids, seconds to exit,
    its pid)."""
    with daemon("--collect.interval", "1s", *args) as d:
        d.wait_ready()
        with fork_storm(), scraping(d) as scrapes:
            first = d.wait_tick(0)
            forks_before = first["linnix_process_forks_total{}"]
            time.sleep(3)
            m = d.wait_tick(first["linnix_exporter_collections_total{}"])
            ids = our_ids(m)
            assert len(ids) == 6, ids  # 4 probes + the stats and owners iterators
            # The storm is real and seen: thousands of forks per second.
            assert m["linnix_process_forks_total{}"] - forks_before > 1000
            assert scrapes.ok > 10
            t = time.monotonic()
            d.proc.send_signal(sig)
            code = d.proc.wait(timeout=30)
            took = time.monotonic() - t
        # Under the storm every scrape succeeded; only those after the signal may fail.
        assert [f for f in scrapes.failed_at if f < t] == [], "scrapes failed before the signal"
    return code, ids, took, d.proc.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_exit_under_load(sig: int) -> None:
    sysctl = SYSCTL.read_text().strip()
    code, ids, took, _ = signal_under_load(sig)
    assert code == 0
    assert took < 10, f"{took:.1f} s to exit"
    wait_gone(ids)
    assert_stats_off()
    assert SYSCTL.read_text().strip() == sysctl


def test_sysctl_method_restored_under_load() -> None:
    free_window("the sysctl must start at 0 to be seen restored", sysctl_only=True)
    sysctl = SYSCTL.read_text().strip()
    code, ids, _, pid = signal_under_load(signal.SIGTERM, "--bpf.stats-method", "sysctl")
    assert code == 0
    wait_gone(ids)
    assert SYSCTL.read_text().strip() == sysctl
    assert markers(pid=pid) == []
    assert_stats_off()


def test_sigkill_under_load_leaves_no_stats_on() -> None:
    sysctl = SYSCTL.read_text().strip()
    code, ids, _, pid = signal_under_load(signal.SIGKILL)
    assert code == -signal.SIGKILL
    wait_gone(ids)
    # The stats fd died with the process: stats off by themselves, sysctl never touched.
    assert_stats_off()
    assert SYSCTL.read_text().strip() == sysctl
    assert markers(pid=pid) == []
