"""The "statistics" collector: whether BPF statistics are on, how (method, or sampled),
and what they cost every program run (stats_control.StatsController, or a bare
kernel/stats_switch.StatsSwitch). Our own bookkeeping, no kernel read; it is still
timed and may fail alone. Disabled, its figures are not served; the state is still
read, because the rates scale sampled counts by it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import F, Figure, FigureMaker
from linnix_exporter.snapshot import NS, SAMPLED, StatsState
from linnix_exporter.tick import STATISTICS, Tick

NAME = STATISTICS


class StatsSource(Protocol):
    def state(self, now: float | None = None) -> StatsState: ...


FAMILIES = (
    F(
        "linnix_bpf_stats_enabled",
        "linnix.bpf.stats.enabled",
        "gauge",
        "1",
        "1 if the kernel is accumulating BPF run-time statistics; method says how they were "
        "turned on (enable_stats_fd, sysctl, already_on, off), or sampled while they are "
        "on only for a window of each interval (--bpf.stats-mode).",
        ("method",),
        ("linnix.stats.method",),
    ),
    F(
        "linnix_bpf_stats_run_cost_seconds",
        "linnix.bpf.stats.run_cost",
        "gauge",
        "s",
        "What BPF statistics add to every run of every program while they are on, "
        "calibrated on this host (BPF_PROG_TEST_RUN, statistics off/on); source: "
        "measured, or estimated from the clock while statistics are held on. Absent "
        "until calibrated.",
        ("source",),
        ("linnix.stats.cost_source",),
    ),
    F(
        "linnix_bpf_stats_overhead_seconds_total",
        "linnix.bpf.stats.overhead",
        "counter",
        "s",
        "CPU time BPF statistics cost all programs on the node since the exporter "
        "started: runs counted x the calibrated cost, whoever turned statistics on.",
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    if not tick.ok(STATISTICS):
        return
    st = tick.snapshot.stats
    yield fig(
        "linnix_bpf_stats_enabled",
        1 if st.enabled else 0,
        SAMPLED if st.mode == SAMPLED else st.method,
    )
    if st.run_cost_ns is not None:
        yield fig("linnix_bpf_stats_run_cost_seconds", st.run_cost_ns / NS, st.cost_source)
    yield fig("linnix_bpf_stats_overhead_seconds_total", tick.stats_overhead_seconds_total)
