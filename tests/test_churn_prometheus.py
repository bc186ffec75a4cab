"""Program churn under a real Prometheus: a loader thread loads and unloads trivial BPF
programs at >= 100 loads/s (each one run with BPF_PROG_TEST_RUN so its counters move) for
~20 s while Prometheus scrapes the exporter every second. Then, from Prometheus itself:
every scrape succeeded, no node-level counter ever went down (resets, idelta), no ratio
went negative, the churn programs had their own series, and once churn stops and one
more scrape happens no series of a churn program is left. bpftool confirms nothing of
the churn is still loaded."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.kernel_helpers import Daemon, bpftool_progs, daemon
from tests.support import trivial_prog
from tests.support.promstack import Prometheus
from tests.support.statsprobe import prog_test_run

pytestmark = pytest.mark.kernel

PREFIX = "lnx_pc"  # churn program names: lnx_pc<n>
RATE_GOAL = 100.0  # loads per second, at least
TARGET_RATE = 150.0
LIVE = 300  # programs alive at once: each lives ~2 s, so every one is in >= 1 collection
CHURN_SECONDS = 20.0
JOB = "linnix-exporter"


class Loader:
    def __init__(self) -> None:
        self.loads = 0
        self.unloads = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._t.start()

    def _run(self) -> None:
        live: collections.deque[int] = collections.deque()
        t0 = time.monotonic()
        try:
            while not self._stop.is_set():
                fd = trivial_prog.load(f"{PREFIX}{self.loads}")
                prog_test_run(fd, 10)  # run_cnt/run_time move only if it runs
                live.append(fd)
                self.loads += 1
                if len(live) > LIVE:
                    os.close(live.popleft())
                    self.unloads += 1
                ahead = t0 + self.loads / TARGET_RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except BaseException as e:  # reported by stop(): a dead loader must fail the test
            self.error = e
        finally:
            self.elapsed = time.monotonic() - t0
            while live:
                os.close(live.popleft())
                self.unloads += 1

    def stop(self) -> None:
        self._stop.set()
        self._t.join()
        if self.error is not None:
            raise self.error


def value(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def churn_left() -> list[int]:
    return [i for i, p in bpftool_progs().items() if p.get("name", "").startswith(PREFIX)]


def test_churn_under_prometheus(tmp_path: Path) -> None:
    assert not churn_left(), "churn programs of an earlier run still loaded"
    with daemon(
        "--collect.interval", "1s", "--no-probes.enabled", "--bpf.top-programs", "2000"
    ) as d:  # fmt: skip
        d.wait_ready()
        prom = Prometheus(tmp_path, [f"127.0.0.1:{d.port}"], [], None, job=JOB)
        try:
            prom.wait_query(f'up{{job="{JOB}"}} == 1', timeout=30)
            run_churn_and_check(d, prom)
        finally:
            prom.stop()
        assert d.stop(signal.SIGTERM) == 0


def run_churn_and_check(d: Daemon, prom: Prometheus) -> None:
    loader = Loader()
    start = time.time()
    loader.start()
    time.sleep(CHURN_SECONDS)
    loader.stop()
    rate = loader.loads / loader.elapsed
    print(f"churn: {loader.loads} loads, {loader.unloads} unloads, {rate:.0f}/s")
    assert rate >= RATE_GOAL, f"only {rate:.0f} loads/s"
    assert loader.unloads == loader.loads

    # Gone from the kernel (freed shortly after the last fd closes), then a collection
    # after that, then one Prometheus scrape of it.
    deadline = time.monotonic() + 10
    while churn_left():
        assert time.monotonic() < deadline, f"churn programs still loaded: {churn_left()[:5]}"
        time.sleep(0.1)
    gone = time.time()
    d.wait_tick_after(gone)
    deadline = time.monotonic() + 10
    while value(prom, "max(linnix_exporter_last_collect_timestamp_seconds)") <= gone:
        assert time.monotonic() < deadline, "Prometheus did not scrape a post-churn tick"
        time.sleep(0.2)

    window = f"{int(time.time() - start) + 2}s"
    # Every scrape succeeded, about one per second.
    assert value(prom, f'min_over_time(up{{job="{JOB}"}}[{window}])') == 1
    scrapes = value(prom, f'count_over_time(up{{job="{JOB}"}}[{window}])')
    assert scrapes >= CHURN_SECONDS * 0.8, scrapes
    targets = json.loads(urllib.request.urlopen(prom.url + "/api/v1/targets", timeout=10).read())[
        "data"
    ]["activeTargets"]
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    assert value(prom, f"min_over_time(scrape_samples_scraped[{window}])") > 0

    # The churn programs got their own series (they were not all folded into [other]).
    seen = value(
        prom,
        f'count(count_over_time(linnix_bpf_program_runs_total{{name=~"{PREFIX}.*"}}[{window}]))',
    )
    assert seen >= 0.5 * loader.loads, (seen, loader.loads)
    # Counters never went down; ratios never negative.
    for counter in (
        "linnix_bpf_runs_total",
        "linnix_bpf_run_time_seconds_total",
        "linnix_exporter_collections_total",
        "linnix_exporter_cpu_seconds_total",
    ):
        assert value(prom, f"sum(resets({counter}[{window}]))") == 0, counter
        low = value(prom, f"min(min_over_time(idelta({counter}[3s])[{window}:1s]))")
        assert low >= 0, (counter, low)
    for per_program in (
        "linnix_bpf_program_runs_total",
        "linnix_bpf_program_run_time_seconds_total",
    ):
        assert value(prom, f"sum(resets({per_program}[{window}]))") == 0, per_program
    for ratio in ("linnix_bpf_cpu_ratio", "linnix_bpf_program_cpu_ratio", "linnix_overhead_ratio"):
        assert value(prom, f"min(min_over_time({ratio}[{window}]))") >= 0, ratio
    # The runs were seen: the node total grew by at least 10 runs per program seen.
    grown = value(prom, f"increase(linnix_bpf_runs_total[{window}])")
    assert grown >= 10 * seen * 0.9, (grown, seen)

    # No series of a churn program left after that one more scrape.
    for family in (
        "linnix_bpf_program_runs_total",
        "linnix_bpf_program_run_time_seconds_total",
        "linnix_bpf_program_recursion_misses_total",
        "linnix_bpf_program_cpu_ratio",
        "linnix_bpf_program_owner_info",
    ):
        left = prom.query(f'{family}{{name=~"{PREFIX}.*"}}')
        assert left == [], (family, left[:3])
    assert not [k for k in d.metrics() if f"name={PREFIX}" in k]
    assert not churn_left()
