"""Served figures against readings the test takes itself, over the same interval:
bpftool (every program's run time and runs), /proc/PID/task/*/schedstat (the daemon's
CPU, the scheduler's own ns), /proc/stat `processes` (tasks created), wait4 rusage (CPU
of exited tasks). docs/verification.md lists each figure with its test and tolerance.

How an interval is bracketed: the daemon ticks every INTERVAL on monotonic deadlines, so
its next ticks are predictable from the served tick's time. The test takes a reading
(bpftool, schedstat, /proc/stat) WINDOW before and after each of two consecutive ticks,
and scrapes between them. A tick reads the kernel between its start and its end, both
inside [served timestamp - collect duration, served timestamp + collect duration]; when
the readings fall outside that span on the right sides, each served counter's change
over the interval lies between (after-tick reading before - before-tick reading after)
and (after-tick reading after - before-tick reading before). That is exact, not a
tolerance: the width is whatever ran during the two windows (the ticks themselves, other
load on the node). An attempt whose readings missed their tick (a late wake-up on a busy
node), or whose daemon threads changed, is repeated; the bounds are never widened.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_helpers import (
    Daemon,
    KeepAlive,
    bpftool_progs,
    daemon,
    forks,
    held_ids,
    proc_stat_processes,
    task_cpu_ns,
)

pytestmark = pytest.mark.kernel

INTERVAL = 2.0  # --collect.interval of the daemon under test
WINDOW = 0.25  # a reading this long before and after a predicted tick
ATTEMPTS = 5
WORK_SECONDS = 0.6  # of the 1.5 s between the reading windows
NS = 1e9
PROBE_NAMES = {"linnix_fork", "linnix_exec", "linnix_exit", "linnix_free"}


@dataclass(frozen=True)
class Reading:
    """Outside readings at one moment: all taken between mono0/wall0 and mono1/wall1."""

    mono0: float
    wall0: float
    progs: dict[int, dict[str, Any]]  # bpftool prog show, by id
    cpu_ns: int  # the daemon's threads, schedstat
    tids: frozenset[int]
    processes: int  # /proc/stat
    mono1: float
    wall1: float


def read_outside(pid: int) -> Reading:
    mono0, wall0 = time.monotonic(), time.time()
    processes = proc_stat_processes()
    progs = bpftool_progs()
    cpu_ns, tids = task_cpu_ns(pid)
    return Reading(mono0, wall0, progs, cpu_ns, tids, processes, time.monotonic(), time.time())


@dataclass(frozen=True)
class Interval:
    """Two consecutive served ticks and the readings around each."""

    a_lo: Reading  # before the first tick
    a_hi: Reading  # after it
    b_lo: Reading  # before the second
    b_hi: Reading  # after it
    first: dict[str, float]  # served after the first tick
    second: dict[str, float]  # served after the second
    forks: int  # processes the test forked (and reaped) between the ticks

    def bracket(self, value: Callable[[Reading], float]) -> tuple[float, float]:
        """Bounds on what a cumulative quantity grew by between the two ticks."""
        return value(self.b_lo) - value(self.a_hi), value(self.b_hi) - value(self.a_lo)

    def served_delta(self, key: str) -> float:
        return self.second[key] - self.first[key]


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def brackets_tick(lo: Reading, hi: Reading, served: dict[str, float]) -> bool:
    stamp = served["linnix_exporter_last_collect_timestamp_seconds{}"]
    took = served["linnix_exporter_collect_duration_seconds{}"]
    return lo.wall1 < stamp - took and hi.wall0 > stamp + took


def measure(d: Daemon, s: KeepAlive, during: Callable[[], int]) -> Interval:
    """Bracket two consecutive ticks; `during` runs between them (a workload that
    returns how many processes it forked)."""
    pid = d.proc.pid
    missed: list[str] = []
    for _ in range(ATTEMPTS):
        last = s.metrics()
        tick = last["linnix_exporter_last_collect_timestamp_seconds{}"] + INTERVAL
        while tick - WINDOW < time.time() + 0.05:
            tick += INTERVAL
        sleep_until(tick - WINDOW)
        a_lo = read_outside(pid)
        sleep_until(tick + WINDOW)
        a_hi = read_outside(pid)
        first = s.metrics()
        n = during()
        if time.time() > tick + INTERVAL - WINDOW:
            missed.append("the workload overran into the second window")
            continue
        sleep_until(tick + INTERVAL - WINDOW)
        b_lo = read_outside(pid)
        sleep_until(tick + INTERVAL + WINDOW)
        b_hi = read_outside(pid)
        second = s.metrics()
        seq = "linnix_exporter_collections_total{}"
        why = [
            what
            for what, ok in (
                ("not consecutive ticks", second[seq] == first[seq] + 1),
                ("first tick not bracketed", brackets_tick(a_lo, a_hi, first)),
                ("second tick not bracketed", brackets_tick(b_lo, b_hi, second)),
                ("a thread ended", a_lo.tids == a_hi.tids == b_lo.tids == b_hi.tids),
            )
            if not ok
        ]
        iv = Interval(a_lo, a_hi, b_lo, b_hi, first, second, n)
        why += [w for w in (unfit_for_totals(iv),) if w]
        if not why:
            return iv
        missed.append(", ".join(why))
    raise AssertionError(f"no interval was bracketed in {ATTEMPTS} attempts: {missed}")


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Daemon, KeepAlive]]:
    # Every comm listed, so a test's own comm is never folded into [other].
    # Statistics always on: in auto mode a busy node could switch to sampled, whose ratios
    # are scaled from the on-window (tested in test_stats_cost.py). Ticks on a timer: the
    # readings bracket ticks the daemon takes on its own, not ones a scrape would cause
    # (on-demand ticking is tested in test_tick.py and test_idle_cost.py).
    with daemon(
        "--collect.mode",
        "timer",
        "--collect.interval",
        f"{INTERVAL:g}s",
        "--probes.top-comms",
        "1000",
        "--bpf.stats-mode",
        "always",
    ) as d:
        d.wait_ready()
        s = d.session()  # opened before any reading: its thread lives through them all
        s.metrics()
        yield d, s
        s.close()
        assert d.stop() == 0


@pytest.fixture(scope="module")
def interval(served: tuple[Daemon, KeepAlive]) -> Interval:
    """One bracketed interval with forks of ours and gzip scrapes in it (for at most
    WORK_SECONDS, so a loaded node does not push them into the next reading window):
    the probes and the daemon have work that surely falls inside it, beside the ticks."""
    d, s = served

    def work() -> int:
        end = time.monotonic() + WORK_SECONDS
        n = 0
        while n < 500 and time.monotonic() < end:
            forks(10)
            n += 10
        for _ in range(10):
            s.get(headers={"Accept-Encoding": "gzip"})
        return n

    return measure(d, s, work)


def probe_ids(d: Daemon) -> set[int]:
    """Our probes, found from outside: programs the daemon holds (fdinfo), by name."""
    progs = bpftool_progs()
    return {i for i in held_ids(d.proc.pid) if progs.get(i, {}).get("name") in PROBE_NAMES}


def online_cpus() -> int:
    n = 0
    for part in Path("/sys/devices/system/cpu/online").read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


# ---- the overhead terms ------------------------------------------------------------
# Each term of linnix_overhead_ratio: the served ratio gauge, and the bounds on its
# numerator (ns over the interval) from outside readings. A new term (e.g. the cost of
# the statistics switch) is one more entry here; the overhead check sums them all.


def probes_ns(iv: Interval, ids: set[int]) -> tuple[float, float]:
    return iv.bracket(lambda r: sum(r.progs[i]["run_time_ns"] for i in ids))


def exporter_ns(iv: Interval, ids: set[int]) -> tuple[float, float]:
    # getrusage (what the daemon serves) is in whole µs per mode: each of the two served
    # values can sit up to 2 µs under the scheduler's ns, so their difference +-2 µs.
    lo, hi = iv.bracket(lambda r: r.cpu_ns)
    return lo - 2_000, hi + 2_000


def stats_ns(iv: Interval, ids: set[int]) -> tuple[float, float]:
    """What statistics cost: every program's runs over the interval (bpftool, bounded as
    for the node totals) x the served per-run cost. The cost is the daemon's calibration
    (checked against a syscall-tracer A/B in test_stats_cost.py); the runs are outside
    readings. We turned statistics on (the fd), so the term is ours."""
    cost_ns = next(v for k, v in iv.second.items() if k.startswith(STATS_COST)) * NS
    lo, hi = bpf_total_bounds(iv, "run_cnt")
    return lo * cost_ns, hi * cost_ns


STATS_COST = "linnix_bpf_stats_run_cost_seconds{"

TERMS: dict[str, tuple[str, Callable[[Interval, set[int]], tuple[float, float]]]] = {
    "probes": ("linnix_probes_cpu_ratio{}", probes_ns),
    "exporter": ("linnix_exporter_cpu_ratio{}", exporter_ns),
    "stats": ("linnix_overhead_component_ratio{component=stats}", stats_ns),
}


def node_seconds(iv: Interval) -> float:
    """The served interval x online CPUs (the interval itself is checked separately)."""
    return iv.second["linnix_overhead_interval_seconds{}"] * online_cpus()


def test_interval_and_cpus_are_the_measured_ones(interval: Interval) -> None:
    iv = interval
    dt = iv.second["linnix_overhead_interval_seconds{}"]
    # Each tick's clock read lies between the readings around it.
    assert iv.b_lo.mono1 - iv.a_hi.mono0 <= dt <= iv.b_hi.mono0 - iv.a_lo.mono1
    assert iv.second["linnix_node_cpus{}"] == online_cpus()


def test_each_overhead_term_against_outside_readings(
    served: tuple[Daemon, KeepAlive], interval: Interval
) -> None:
    ids = probe_ids(served[0])
    assert len(ids) == 4
    denom = node_seconds(interval) * NS
    for name, (gauge, bounds) in TERMS.items():
        lo, hi = bounds(interval, ids)
        ratio = interval.second[gauge]
        assert lo / denom <= ratio <= hi / denom, (name, lo / denom, ratio, hi / denom)
    # The probes did run in it (each of our forks runs fork, exit and free).
    assert interval.forks >= 10 and probes_ns(interval, ids)[0] > 0


def test_overhead_ratio_is_the_sum_of_the_terms(
    served: tuple[Daemon, KeepAlive], interval: Interval
) -> None:
    ids = probe_ids(served[0])
    bounds = [f(interval, ids) for _, f in TERMS.values()]
    denom = node_seconds(interval) * NS
    lo, hi = sum(b[0] for b in bounds) / denom, sum(b[1] for b in bounds) / denom
    assert lo <= interval.second["linnix_overhead_ratio{}"] <= hi
    core = interval.second["linnix_overhead_core_ratio{}"]
    cpus = online_cpus()
    assert lo * cpus <= core <= hi * cpus


def test_exporter_cpu_counter_against_schedstat(interval: Interval) -> None:
    served = sum(
        interval.served_delta(f"linnix_exporter_cpu_seconds_total{{mode={m}}}")
        for m in ("user", "system")
    )
    lo, hi = exporter_ns(interval, set())
    assert lo <= served * NS <= hi, (lo, served * NS, hi)
    assert served > 0


def unfit_for_totals(iv: Interval) -> str:
    """A program that has run and was unloaded around the second tick: the daemon may
    have counted runs of it that no reading saw. Such an interval is measured again."""
    gone = [i for i, p in iv.b_lo.progs.items() if i not in iv.b_hi.progs and p.get("run_cnt")]
    return f"programs {gone} unloaded at the second tick" if gone else ""


def bpf_total_bounds(iv: Interval, field: str) -> tuple[int, int]:
    """Bounds on what the daemon adds to its all-programs total over the interval.
    Programs in all four readings: their bracket. A program loaded in the interval is
    counted by the daemon from 0 or from its first tick, so between 0 and its last
    reading. One that was gone before the second tick is not counted at all."""
    readings = (iv.a_lo, iv.a_hi, iv.b_lo, iv.b_hi)
    stable = set.intersection(*(set(r.progs) for r in readings))
    lo, hi = iv.bracket(lambda r: sum(r.progs[i].get(field, 0) for i in stable))
    new = [p.get(field, 0) for i, p in iv.b_hi.progs.items() if i not in iv.a_lo.progs]
    return int(lo), int(hi) + sum(new)


@pytest.mark.parametrize(
    ("served_key", "field"),
    [
        ("linnix_bpf_run_time_seconds_total{}", "run_time_ns"),
        ("linnix_bpf_runs_total{}", "run_cnt"),
    ],
)
def test_bpf_totals_against_bpftool_sums(interval: Interval, served_key: str, field: str) -> None:
    """Every program on the node, summed by the test from bpftool."""
    scale = NS if field == "run_time_ns" else 1
    lo, hi = bpf_total_bounds(interval, field)
    served = round(interval.served_delta(served_key) * scale)
    assert lo <= served <= hi, (lo, served, hi)
    ratio = interval.second["linnix_bpf_cpu_ratio{}"]
    if field == "run_time_ns":
        denom = node_seconds(interval) * NS
        assert lo / denom <= ratio <= hi / denom


def test_program_count_against_bpftool(interval: Interval) -> None:
    """Programs loaded at the second tick: at least those in both readings around it, at
    most those in either."""
    lo, hi = set(interval.b_lo.progs), set(interval.b_hi.progs)
    assert len(lo & hi) <= interval.second["linnix_bpf_programs{}"] <= len(lo | hi)


@pytest.mark.parametrize(
    ("family", "field", "scale"),
    [
        ("linnix_bpf_program_run_time_seconds_total", "run_time_ns", NS),
        ("linnix_bpf_program_runs_total", "run_cnt", 1),
        ("linnix_bpf_program_recursion_misses_total", "recursion_misses", 1),
    ],
)
def test_listed_program_counters_against_bpftool(
    interval: Interval, family: str, field: str, scale: float
) -> None:
    """Each listed program's counter is its kernel counter at the tick: between bpftool's
    reads just before and just after that tick (bpftool omits a zero recursion_misses)."""
    checked = 0
    for key, value in interval.second.items():
        if not key.startswith(family + "{id=") or "name=[other]" in key:
            continue
        prog_id = int(key.split("id=")[1].split(",")[0])
        if prog_id not in interval.b_lo.progs or prog_id not in interval.b_hi.progs:
            continue  # loaded or unloaded around the tick
        lo = interval.b_lo.progs[prog_id].get(field, 0)
        hi = interval.b_hi.progs[prog_id].get(field, 0)
        assert lo <= round(value * scale) <= hi, (key, lo, value, hi)
        checked += 1
    assert checked >= 5  # our four probes and the iterator at least


def test_program_cpu_ratio_against_bpftool(
    served: tuple[Daemon, KeepAlive], interval: Interval
) -> None:
    denom = node_seconds(interval) * NS
    for prog_id in probe_ids(served[0]):
        (key,) = [
            k
            for k in interval.second
            if k.startswith(f"linnix_bpf_program_cpu_ratio{{id={prog_id},")
        ]
        lo, hi = probes_ns(interval, {prog_id})
        assert lo / denom <= interval.second[key] <= hi / denom, key


def test_forks_against_proc_stat(interval: Interval) -> None:
    """Tasks created, threads included, as /proc/stat `processes` counts them."""
    lo, hi = interval.bracket(lambda r: r.processes)
    served = interval.served_delta("linnix_process_forks_total{}")
    assert lo <= served <= hi, (lo, served, hi)
    assert served >= interval.forks  # ours


def test_exits_against_the_exit_probes_own_runs(
    served: tuple[Daemon, KeepAlive], interval: Interval
) -> None:
    """/proc has no count of exits; the kernel's own count of the exit program's runs
    (bpftool run_cnt) is one, independent of the map the figure is read from."""
    progs = bpftool_progs()
    (exit_id,) = [i for i in probe_ids(served[0]) if progs[i]["name"] == "linnix_exit"]
    lo, hi = interval.bracket(lambda r: r.progs[exit_id]["run_cnt"])
    served_exits = interval.served_delta("linnix_process_exits_total{}")
    assert lo <= served_exits <= hi, (lo, served_exits, hi)
    assert served_exits >= interval.forks  # our forks' children


def test_execs_against_the_exec_probes_own_runs(
    served: tuple[Daemon, KeepAlive], interval: Interval
) -> None:
    """Successful execs: the exec program runs once per sched_process_exec."""
    progs = bpftool_progs()
    (exec_id,) = [i for i in probe_ids(served[0]) if progs[i]["name"] == "linnix_exec"]
    lo, hi = interval.bracket(lambda r: r.progs[exec_id]["run_cnt"])
    served_execs = interval.served_delta("linnix_process_execs_total{}")
    assert lo <= served_execs <= hi, (lo, served_execs, hi)


# ---- CPU of exited tasks ------------------------------------------------------------

BURNERS = 4
# wait4 gives utime and stime in whole µs (each truncated: up to 2 µs under the kernel's
# ns per process). The probe reads the task's runtime when it is freed, after its final
# switch away: a parent that reaps the zombie before that switch misses the last few µs
# of do_exit (exit_notify to the switch). Measured here (2026-11-30, three runs): 0.9-1.3
# µs per process over wait4; 50 µs allows for that exit path being preempted once on a
# loaded node. The exit path after the tracepoint (exit_mm...) is hundreds of µs for
# these processes: a figure read too early falls below the lower bound.
UNDER_NS = 2_000
OVER_NS = 50_000


def test_exited_task_cpu_against_wait4(served: tuple[Daemon, KeepAlive], tmp_path: Path) -> None:
    _, s = served
    comm = f"lnx{os.getpid() % 100000:05d}cpu"  # 13 chars: the kernel keeps 15
    exe = tmp_path / comm
    exe.symlink_to(os.path.realpath(sys.executable))  # comm = the link's name
    total_ns = 0
    for _ in range(BURNERS):
        pid = os.posix_spawn(str(exe), [comm, "-S", "-c", "sum(range(3_000_000))"], {})
        _, status, ru = os.wait4(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        total_ns += round((ru.ru_utime + ru.ru_stime) * 1e6) * 1000
    key = f"linnix_exited_task_cpu_seconds_total{{comm={comm}}}"
    # Freed an RCU grace period after the reap (ms; up to ~10 s with lazy RCU): wait for
    # every task's CPU to be served, then check it is not more than it may be.
    deadline = time.monotonic() + 40
    while True:
        got = round(s.metrics().get(key, 0) * NS)
        if got >= total_ns - BURNERS * UNDER_NS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert total_ns - BURNERS * UNDER_NS <= got <= total_ns + BURNERS * OVER_NS, (
        got,
        total_ns,
        (got - total_ns) / BURNERS,
    )
    assert total_ns > BURNERS * 20_000_000  # each burned real CPU (>= 20 ms)
    # The comm is ours alone: exactly our processes, each exec'd and exited once, and
    # none of them forked.
    m = s.metrics()
    assert m[f"linnix_process_comm_execs_total{{comm={comm}}}"] == BURNERS
    assert m[f"linnix_process_comm_exits_total{{comm={comm}}}"] == BURNERS
    assert m[f"linnix_process_comm_forks_total{{comm={comm}}}"] == 0


# ---- every program changing each tick (issue 20) ----------------------------------------

CROWD = 300  # trivial programs of ours, every one run between the two measured ticks


@pytest.fixture(scope="module")
def crowded_interval() -> Iterator[Interval]:
    """A daemon at the default listing (top 50) with CROWD more programs, all of them run
    (BPF_PROG_TEST_RUN) between the two bracketed ticks: every program's counters move,
    so no tick can reuse anything from the one before."""
    from tests.support import trivial_prog

    fds = trivial_prog.load_many(CROWD, prefix="lnx_orc")
    try:
        with daemon(
            "--collect.mode",
            "timer",
            "--collect.interval",
            f"{INTERVAL:g}s",
            "--bpf.stats-mode",
            "always",
        ) as d:
            d.wait_ready()
            s = d.session()
            s.metrics()

            def run_all() -> int:
                for i, fd in enumerate(fds):
                    trivial_prog.run(fd, repeat=1 + i % 7)  # run counts that differ
                return 0

            yield measure(d, s, run_all)
            s.close()
            assert d.stop() == 0
    finally:
        trivial_prog.close_all(fds)


@pytest.mark.parametrize(
    ("served_key", "field"),
    [
        ("linnix_bpf_run_time_seconds_total{}", "run_time_ns"),
        ("linnix_bpf_runs_total{}", "run_cnt"),
    ],
)
def test_every_program_changing_totals_against_bpftool(
    crowded_interval: Interval, served_key: str, field: str
) -> None:
    """With every program's counters moving each tick, the node totals (column sums in
    rates.TableDeltas) stay within bpftool's sums around the ticks."""
    iv = crowded_interval
    scale = NS if field == "run_time_ns" else 1
    lo, hi = bpf_total_bounds(iv, field)
    served = round(iv.served_delta(served_key) * scale)
    assert lo <= served <= hi, (lo, served, hi)
    # Our programs alone ran 1..7 times each between the ticks: the runs cover them.
    if field == "run_cnt":
        assert served >= sum(1 + i % 7 for i in range(CROWD))


@pytest.mark.parametrize(
    ("family", "field", "scale"),
    [
        ("linnix_bpf_program_run_time_seconds_total", "run_time_ns", NS),
        ("linnix_bpf_program_runs_total", "run_cnt", 1),
    ],
)
def test_every_program_changing_listed_counters_against_bpftool(
    crowded_interval: Interval, family: str, field: str, scale: float
) -> None:
    """Each listed program's counter (a row built on demand from the tick's records) is
    its kernel counter at the tick, and the rest are counted as unlisted."""
    iv = crowded_interval
    checked = 0
    for key, value in iv.second.items():
        if not key.startswith(family + "{id=") or "name=[other]" in key:
            continue
        prog_id = int(key.split("id=")[1].split(",")[0])
        if prog_id not in iv.b_lo.progs or prog_id not in iv.b_hi.progs:
            continue
        lo = iv.b_lo.progs[prog_id].get(field, 0)
        hi = iv.b_hi.progs[prog_id].get(field, 0)
        assert lo <= round(value * scale) <= hi, (key, lo, value, hi)
        checked += 1
    assert checked >= 45  # the default top 50, less any loaded or unloaded around the tick
    assert iv.second["linnix_bpf_unlisted_programs{}"] >= CROWD - 50
