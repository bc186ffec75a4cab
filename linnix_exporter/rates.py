"""All derived math: rates and overhead ratios from two consecutive snapshots.

Every ratio divides by the *measured* interval between the two reads (monotonic clock),
never the nominal tick. "Node" ratios divide by interval x online CPUs (0..1, share of
the whole machine); "core" ratios divide by the interval only (share of one core, can
exceed 1, as bpftop shows it).

The overhead has three terms: our probes' kernel run time, the exporter's CPU, and what
BPF statistics cost every program run while we hold them on (runs x calibrated cost).
In sampled mode run times and run counts advance only while statistics are on, so
run-time ratios divide by the time they were on (an estimate of the whole interval from
its sampled part), while the statistics term is exact: runs that happened with
statistics off paid nothing. See docs/how-overhead-is-measured.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from linnix_exporter.snapshot import KERNEL_FIELDS, NS, SAMPLED, ProgramStat, Snapshot


class ProgramDelta(NamedTuple):
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


_NONE = ProgramDelta(0, 0, 0)


@dataclass(frozen=True, slots=True)
class Rates:
    interval_seconds: float
    online_cpus: int
    programs: Mapping[int, ProgramDelta]  # by program id, programs in `cur` only
    bpf_run_time_ns: int  # every program on the host, over the interval
    bpf_runs: int
    probes_run_time_ns: int  # our probes only
    exporter_cpu_seconds: float
    # Seconds of the interval run times were counted in: the time statistics were on in
    # sampled mode; None: the whole interval (always mode).
    sampled_seconds: float | None = None
    stats_run_cost_ns: float = 0.0  # served cost per run (0 while unknown)
    stats_ours: bool = False  # we turned statistics on: their cost is our overhead

    def node_ratio(self, seconds: float) -> float:
        return seconds / (self.interval_seconds * self.online_cpus)

    def core_ratio(self, seconds: float) -> float:
        return seconds / self.interval_seconds

    @property
    def duty_ratio(self) -> float:
        """Share of the interval statistics were on (counted in)."""
        if self.sampled_seconds is None:
            return 1.0
        return min(1.0, self.sampled_seconds / self.interval_seconds)

    def _full_interval(self, run_time_ns: float) -> float:
        """Run time counted over the sampled seconds, scaled to the whole interval."""
        if self.sampled_seconds is None:
            return run_time_ns / NS
        if self.sampled_seconds <= 0:
            return 0.0
        return run_time_ns / NS * (self.interval_seconds / self.sampled_seconds)

    def run_time_ratio(self, run_time_ns: float) -> float:
        """A run time as a node share, over the part of the interval it was counted in."""
        return self.node_ratio(self._full_interval(run_time_ns))

    @property
    def bpf_cpu_ratio(self) -> float:
        return self.run_time_ratio(self.bpf_run_time_ns)

    @property
    def probes_cpu_ratio(self) -> float:
        return self.run_time_ratio(self.probes_run_time_ns)

    @property
    def exporter_cpu_ratio(self) -> float:
        return self.node_ratio(self.exporter_cpu_seconds)

    @property
    def stats_overhead_seconds(self) -> float:
        """What statistics cost every program on the node over the interval, whoever
        turned them on: each counted run paid the calibrated cost once."""
        return self.bpf_runs * self.stats_run_cost_ns / NS

    def component_seconds(self) -> dict[str, float]:
        """The overhead's three terms in seconds of CPU over the interval."""
        return {
            "probes": self._full_interval(self.probes_run_time_ns),
            "exporter": self.exporter_cpu_seconds,
            "stats": self.stats_overhead_seconds if self.stats_ours else 0.0,
        }

    def component_ratios(self) -> dict[str, float]:
        return {k: self.node_ratio(v) for k, v in self.component_seconds().items()}

    @property
    def overhead_seconds(self) -> float:
        """What running the exporter cost the node: our probes' kernel time + our CPU
        + statistics' cost to every program run, if we turned them on."""
        return sum(self.component_seconds().values())

    @property
    def overhead_ratio(self) -> float:
        return self.node_ratio(self.overhead_seconds)

    @property
    def overhead_core_ratio(self) -> float:
        return self.core_ratio(self.overhead_seconds)

    def program_cpu_ratio(self, prog_id: int) -> float:
        d = self.programs.get(prog_id)
        return 0.0 if d is None else self.run_time_ratio(d.run_time_ns)


def program_delta(
    prev: ProgramStat | None, cur: ProgramStat, prev_boottime_ns: int
) -> ProgramDelta:
    """What one program ran between two reads; never negative.

    A program absent from the previous read counts in full only if it was loaded after
    that read (everything it ran happened inside the interval); otherwise we cannot
    tell when its counters grew, so it contributes nothing this time.
    """
    # Same identity (id matched by the caller; tag and load time compared here).
    if prev is not None and prev.load_time_ns == cur.load_time_ns and prev.tag == cur.tag:
        if (
            prev.run_cnt == cur.run_cnt
            and prev.run_time_ns == cur.run_time_ns
            and (prev.recursion_misses == cur.recursion_misses)
        ):
            return _NONE  # idle program: the common case with many loaded
        return ProgramDelta(
            max(0, cur.run_time_ns - prev.run_time_ns),
            max(0, cur.run_cnt - prev.run_cnt),
            max(0, cur.recursion_misses - prev.recursion_misses),
        )
    if cur.load_time_ns >= prev_boottime_ns:
        return ProgramDelta(cur.run_time_ns, cur.run_cnt, cur.recursion_misses)
    return _NONE


def compute_rates(prev: Snapshot, cur: Snapshot) -> Rates | None:
    """Rates over (prev, cur], or None if the clock did not advance."""
    interval = cur.monotonic - prev.monotonic
    if interval <= 0 or cur.online_cpus <= 0:
        return None
    before = {p.id: p for p in prev.programs}
    boot = prev.boottime_ns
    ours = cur.probe_program_ids
    deltas: dict[int, ProgramDelta] = {}
    run_time = runs = probes_run_time = 0
    for p in cur.programs:
        q = before.get(p.id)
        # Idle program (the common case with many loaded): the reader reuses the row
        # (same object), or what the kernel reported (id .. misses) is unchanged: one
        # C-level compare, nothing to add up.
        if q is p or (q is not None and q[KERNEL_FIELDS] == p[KERNEL_FIELDS]):
            deltas[p.id] = _NONE
            continue
        d = deltas[p.id] = program_delta(q, p, boot)
        run_time += d.run_time_ns
        runs += d.run_cnt
        if p.id in ours:
            probes_run_time += d.run_time_ns
    st = cur.stats
    sampled = None
    if st.mode == SAMPLED or prev.stats.mode == SAMPLED:
        sampled = min(interval, max(0.0, st.on_seconds - prev.stats.on_seconds))
    return Rates(
        interval_seconds=interval,
        online_cpus=cur.online_cpus,
        programs=MappingProxyType(deltas),
        bpf_run_time_ns=run_time,
        bpf_runs=runs,
        probes_run_time_ns=probes_run_time,
        exporter_cpu_seconds=max(0.0, cur.self_usage.cpu_seconds - prev.self_usage.cpu_seconds),
        sampled_seconds=sampled,
        stats_run_cost_ns=st.run_cost_ns or 0.0,
        stats_ours=st.ours,
    )
