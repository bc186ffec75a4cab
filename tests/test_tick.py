"""The tick with fake sources: collectors fail alone, totals stay exact across a failed
read, and on-demand ticking shares one tick between concurrent consumers. The sources
themselves are tested on the real kernel (test_probes, test_progstats, test_self_usage)."""

from __future__ import annotations

import threading
import time

import pytest

from linnix_exporter.cli import build_parser
from linnix_exporter.config import run_config
from linnix_exporter.figures import Figure, figures
from linnix_exporter.kernel.bpf_syscall import RawProg
from linnix_exporter.snapshot import Owner, ProbeCounts, SelfUsage, StatsState
from linnix_exporter.state import Exporter, OnDemand, Sources, Tick, Timer
from tests.fixtures import probes as probe_counts

BOOT = 5_000_000_000  # load times below this were loaded before the first read


class Programs:
    method = "syscall"

    def __init__(self) -> None:
        self.run_time = {7: 1000, 9: 50}  # prog id -> cumulative run_time_ns
        self.fail = False
        self.reads = 0
        self.delay = 0.0

    def read(self) -> list[RawProg]:
        self.reads += 1
        time.sleep(self.delay)
        if self.fail:
            raise OSError(9, "Bad file descriptor")
        return [
            RawProg(5, i, bytes([i]) * 8, 1000, f"prog{i}".encode(), rt, rt // 10, 0)
            for i, rt in sorted(self.run_time.items())
        ]

    def close(self) -> None:
        pass


class Owners:
    def __init__(self) -> None:
        self.fail = False

    def read(self, ids: frozenset[int]) -> dict[int, tuple[Owner, ...]]:
        if self.fail:
            raise PermissionError(13, "Permission denied")
        return {7: (Owner(4242, "agent"),)}

    def close(self) -> None:
        pass


class Self:
    def __init__(self) -> None:
        self.cpu = 1.0
        self.fail = False

    def read(self) -> SelfUsage:
        if self.fail:
            raise OSError(24, "Too many open files")
        return SelfUsage(self.cpu * 0.5, self.cpu * 0.5, 20 << 20)

    def close(self) -> None:
        pass


class Probes:
    program_ids = frozenset({9})

    def __init__(self) -> None:
        self.fail = False
        self.forks = 10

    def read(self) -> ProbeCounts:
        if self.fail:
            raise RuntimeError("reading the probe maps: Bad file descriptor")
        return probe_counts(self.forks)

    def close(self) -> None:
        pass


class Stats:
    def state(self, now: float | None = None) -> StatsState:
        return StatsState(True, "enable_stats_fd")


def make(interval: str = "10s") -> tuple[Exporter, Programs, Owners, Self, Probes]:
    cfg = run_config(build_parser().parse_args(["run", "--collect.interval", interval]), {})
    progs, owners, me, probes = Programs(), Owners(), Self(), Probes()
    src = Sources(progs, owners, me, Stats(), lambda: 2, probes)
    return Exporter(cfg, src), progs, owners, me, probes


def served(tick: Tick) -> dict[str, float]:
    out = {}
    for f in figures(tick, 0):
        if isinstance(f, Figure):
            out[f.family.prom + "{" + ",".join(f.labels) + "}"] = f.value
    return out


def names(tick: Tick) -> set[str]:
    return {k.split("{")[0] for k in served(tick)}


def test_failing_probe_read_leaves_the_rest_served() -> None:
    ex, _, _, _, probes = make()
    ex.tick()
    probes.fail = True
    t = ex.tick()
    m = served(t)
    assert m["linnix_exporter_collector_success{probes}"] == 0
    for c in ("programs", "owners", "self"):
        assert m[f"linnix_exporter_collector_success{{{c}}}"] == 1
        assert m[f"linnix_exporter_collector_duration_seconds{{{c}}}"] >= 0
    got = names(t)
    assert "linnix_process_forks_total" not in got  # the failed collector's figures
    assert {
        "linnix_bpf_program_run_time_seconds_total",
        "linnix_exporter_cpu_seconds_total",
        "linnix_bpf_program_owner_info",
        "linnix_overhead_ratio",
    } <= got
    probes.fail = False
    probes.forks = 25
    m = served(ex.tick())
    assert m["linnix_exporter_collector_success{probes}"] == 1
    assert m["linnix_process_forks_total{}"] == 25


def test_failed_program_read_keeps_totals_exact_and_skips_its_ratios() -> None:
    ex, progs, _, _, _ = make()
    ex.tick()
    progs.run_time[7] += 300
    t1 = ex.tick()
    assert t1.bpf_run_time_ns_total == 300
    progs.fail = True
    progs.run_time[7] += 4000  # runs while the read fails
    t2 = ex.tick()
    got = names(t2)
    assert served(t2)["linnix_exporter_collector_success{programs}"] == 0
    assert "linnix_bpf_run_time_seconds_total" not in got
    assert "linnix_bpf_program_runs_total" not in got
    assert "linnix_bpf_cpu_ratio" not in got and "linnix_overhead_ratio" not in got
    assert "linnix_exporter_cpu_ratio" in got  # self is fine
    progs.fail = False
    progs.run_time[7] += 20
    t3 = ex.tick()
    # Nothing lost, nothing counted twice: 300 + 4000 + 20.
    assert served(t3)["linnix_bpf_run_time_seconds_total{}"] == pytest.approx(4320e-9)
    # The delta spans two intervals: no ratio from it this tick, the next one is fine.
    assert "linnix_bpf_cpu_ratio" not in names(t3)
    assert "linnix_bpf_cpu_ratio" in names(ex.tick())


def test_failed_owner_scan_drops_only_owner_labels() -> None:
    ex, _, owners, _, _ = make()
    owners.fail = True
    t = ex.tick()
    m = served(t)
    assert m["linnix_exporter_collector_success{owners}"] == 0
    assert "linnix_bpf_program_owner_info" not in names(t)
    assert "linnix_bpf_program_runs_total{7,prog7,tracepoint,0707070707070707,false}" in m


def test_failed_self_read_omits_only_self_figures() -> None:
    ex, _, _, me, _ = make()
    ex.tick()
    me.fail = True
    t = ex.tick()
    got = names(t)
    assert served(t)["linnix_exporter_collector_success{self}"] == 0
    assert "linnix_exporter_cpu_seconds_total" not in got
    assert "linnix_exporter_cpu_ratio" not in got and "linnix_overhead_ratio" not in got
    assert "linnix_bpf_cpu_ratio" in got


def test_on_demand_ticks_only_when_stale_and_shares_one_tick() -> None:
    ex, progs, _, _, _ = make("300ms")
    ex.tick()  # start-up
    assert ex.current() is ex.latest and progs.reads == 1  # fresh: no read
    time.sleep(0.35)
    progs.delay = 0.2  # a slow read: every consumer arrives while it runs
    got: list[Tick | None] = []
    threads = [threading.Thread(target=lambda: got.append(ex.current())) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert progs.reads == 2  # one tick for eight consumers
    assert {t.seq for t in got if t is not None} == {2}
    assert len(got) == 8


def test_first_on_demand_ratio_waits_one_second() -> None:
    ex, progs, _, _, _ = make("10s")
    ex.tick()
    ex.current()
    assert progs.reads == 1  # right after start-up: not over milliseconds
    time.sleep(1.05)
    t = ex.current()
    assert t is not None and t.seq == 2 and t.rates is not None
    assert t.rates.interval_seconds >= 1.0
    assert ex.current() is t  # the interval (10 s) applies from then on


def test_run_sleeps_until_stopped_on_demand_and_ticks_on_a_timer() -> None:
    ex, progs, _, _, _ = make("100ms")
    ex.tick()
    stop = threading.Event()
    th = threading.Thread(target=ex.run, args=(stop, OnDemand()))
    th.start()
    time.sleep(0.5)
    assert progs.reads == 1  # nothing ticks on its own
    stop.set()
    ex.kick()  # as the daemon's signal handler does: the loop sleeps until kicked
    th.join(2)
    assert not th.is_alive()
    stop.clear()
    th = threading.Thread(target=ex.run, args=(stop, Timer(0.1)))
    th.start()
    time.sleep(0.75)
    stop.set()
    ex.kick()  # as the daemon's signal handler does: the loop sleeps until kicked
    th.join(2)
    # The first tick ~0.1 s after start-up, then every 0.1 s: 6-7 in 0.75 s; a loaded
    # machine may delay wake-ups but never adds any.
    assert 4 <= progs.reads - 1 <= 8
    assert not ex.on_demand
