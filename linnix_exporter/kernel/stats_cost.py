"""What BPF run-time statistics cost every program run, measured on this host.

While statistics are on, the kernel wraps every program run in two sched_clock() reads
and a per-CPU counter update (__bpf_prog_run in include/linux/filter.h, and the
trampoline's enter/exit for fentry/fexit programs). That time lies around the measured
span, so no program's run_time_ns contains it; every program on the node pays it, for
every run, while any holder keeps statistics on.

Calibration: BPF_PROG_TEST_RUN runs a two-instruction program `repeat` times through the
same bpf_prog_run() (net/bpf/test_run.c: bpf_test_run), and the kernel returns its own
mean ns per run. Run with statistics off, then on, alternated, the median difference is
the per-run cost. The trivial program is its own witness: its run_cnt must not move in
an "off" arm, or someone else holds statistics on and that round is discarded.

While we hold statistics on (always mode) we cannot switch them off without losing every
program's runs; then `estimate()` scales the last measured cost by this host's clock:
the cost is two clock reads and an update, and the trivial program's own
run_time_ns / run_cnt is about one clock read (its body is one instruction), read from
the kernel with statistics on. See docs/how-overhead-is-measured.md for the figures.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from linnix_exporter.kernel.bpf_syscall import (
    ProgReader,
    enable_stats,
    load_trivial_prog,
    prog_test_run,
)

# Measured here (bench/stats_cost.py, bench/results/stats_cost.txt): 7 rounds of 1,000,
# 10,000 and 100,000 runs gave 68-72 ns alike, three calibrations each, for 3, 11 and
# 91 ms of CPU. 10,000 keeps an interrupt inside an arm (10-50 us) to a few ns of its
# mean at ~11 ms a calibration (every 5 minutes: 0.004% of a core); a bad round (a
# reschedule, the machine's neighbours) moves one arm: the median of 7 ignores 3.
REPEAT = 10_000
ROUNDS = 7
MIN_VALID_ROUNDS = 4  # fewer valid "off" arms: someone else holds statistics on
# cost / the trivial program's own run_time_ns per run, measured here with statistics
# off/on (68-75 ns against 46-48 ns, 2026-11-30, bench/results/stats_cost.txt). Used
# only when no measurement was ever possible (statistics held on by someone else since
# before we started): the cost is two clock reads and an update, the trivial program's
# run time about one clock read, so the ratio follows the kernel's code, not the host.
DEFAULT_CLOCK_FACTOR = 1.5
PROG_NAME = "lnx_stats_cal"


@dataclass(frozen=True, slots=True)
class Calibration:
    cost_ns: float  # extra ns every program run pays while statistics are on
    source: str  # "measured" (off/on alternated) | "estimated" (scaled, stats held on)
    on_ns: float  # kernel mean ns per test run with statistics on (median)
    run_ns: float  # the trivial program's run_time_ns / run_cnt with statistics on
    off_ns: float | None = None  # the same with statistics off (measured only)
    rounds: int = 0  # valid rounds behind the medians
    cpu_seconds: float = 0.0  # thread CPU the calibration itself took
    at: float = 0.0  # time.monotonic() when it finished

    @property
    def clock_factor(self) -> float:
        """cost / the trivial program's own run time: what estimate() scales by."""
        return self.cost_ns / self.run_ns if self.run_ns > 0 else 0.0


class OwnStatsFd:
    """on()/off() with a BPF_ENABLE_STATS fd of our own, for callers without a switch
    (tests, bench): statistics go off when the fd closes, even if we die."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def on(self) -> None:
        if self._fd is None:
            self._fd = enable_stats()

    def off(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class StatsCalibrator:
    """Measures with the trivial program, loaded for each calibration and unloaded at its
    end: between two ticks, so no tick ever lists it (its runs are our own CPU, already
    in the exporter's term; counted again as program runs they would be twice ours)."""

    def __init__(self, repeat: int = REPEAT, rounds: int = ROUNDS) -> None:
        self.repeat = repeat
        self.rounds = rounds
        self._fd = -1
        self._reader = ProgReader()
        os.close(load_trivial_prog(PROG_NAME))  # fail now (exit early) if we cannot load

    @contextmanager
    def _loaded(self) -> Iterator[None]:
        self._fd = load_trivial_prog(PROG_NAME)
        try:
            yield
        finally:
            os.close(self._fd)
            self._fd = -1

    def counting(self) -> bool:
        """Is the kernel counting runs right now (whoever holds statistics on)? One test
        run of a fresh trivial program: its run_cnt moves only if they are on."""
        with self._loaded():
            prog_test_run(self._fd, 1)
            return self._counters()[1] > 0

    def _counters(self) -> tuple[int, int]:
        info = self._reader.info(self._fd)
        return info.run_time_ns, info.run_cnt

    def _on_arm(self) -> tuple[float, float]:
        """One test run with statistics on: (kernel ns/run, own run_time_ns/run_cnt)."""
        t0, c0 = self._counters()
        on_ns = prog_test_run(self._fd, self.repeat)
        t1, c1 = self._counters()
        return float(on_ns), (t1 - t0) / (c1 - c0) if c1 > c0 else 0.0

    def measure(self, on: Callable[[], None], off: Callable[[], None]) -> Calibration | None:
        """Statistics off/on alternated, `rounds` times; must be called with statistics
        off, and leaves them off. None if too few "off" arms were really off (another
        holder: sysctl, an enable-stats fd, a second exporter)."""
        with self._loaded():
            return self._measure(on, off)

    def _measure(self, on: Callable[[], None], off: Callable[[], None]) -> Calibration | None:
        cpu0 = time.thread_time()
        offs: list[float] = []
        ons: list[float] = []
        runs: list[float] = []
        for _ in range(self.rounds):
            _, c0 = self._counters()
            off_ns = prog_test_run(self._fd, self.repeat)
            _, c1 = self._counters()
            on()
            try:
                on_ns, run_ns = self._on_arm()
            finally:
                off()
            if c1 != c0 or run_ns <= 0:
                continue  # statistics were on during the "off" arm, or off in the "on" arm
            offs.append(float(off_ns))
            ons.append(on_ns)
            runs.append(run_ns)
        if len(offs) < MIN_VALID_ROUNDS:
            return None
        off_med, on_med = statistics.median(offs), statistics.median(ons)
        return Calibration(
            cost_ns=max(0.0, on_med - off_med),
            source="measured",
            on_ns=on_med,
            run_ns=statistics.median(runs),
            off_ns=off_med,
            rounds=len(offs),
            cpu_seconds=time.thread_time() - cpu0,
            at=time.monotonic(),
        )

    def estimate(self, last: Calibration | None) -> Calibration | None:
        """With statistics held on: the last measured cost scaled by how this host's
        clock read (the trivial program's own run time) has moved since (no measurement
        yet: DEFAULT_CLOCK_FACTOR). None if statistics turn out not to be on."""
        with self._loaded():
            return self._estimate(last)

    def _estimate(self, last: Calibration | None) -> Calibration | None:
        cpu0 = time.thread_time()
        ons: list[float] = []
        runs: list[float] = []
        for _ in range(self.rounds):
            on_ns, run_ns = self._on_arm()
            if run_ns > 0:
                ons.append(on_ns)
                runs.append(run_ns)
        if len(runs) < MIN_VALID_ROUNDS:
            return None
        run_med = statistics.median(runs)
        return Calibration(
            cost_ns=(last.clock_factor if last else DEFAULT_CLOCK_FACTOR) * run_med,
            source="estimated",
            on_ns=statistics.median(ons),
            run_ns=run_med,
            rounds=len(runs),
            cpu_seconds=time.thread_time() - cpu0,
            at=time.monotonic(),
        )
