"""The tick: every source read once (each a collector that may fail alone) into one
Snapshot, Rates against the previous Snapshot, per-key counters folded into bounded
label sets, published as one immutable Tick (tick.py) by a single reference swap, so
every sink reads one consistent tick without a second collection pass.

When a tick runs is not decided here: schedule.py owns that (on demand, timer, the
sampled statistics window, the loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from linnix_exporter import log
from linnix_exporter.collectors import NAMES
from linnix_exporter.collectors.hooks import HooksSource
from linnix_exporter.collectors.owners import OwnerSource
from linnix_exporter.collectors.probes import ProbeSource
from linnix_exporter.collectors.programs import ProgramSource
from linnix_exporter.collectors.self_usage import SelfSource
from linnix_exporter.collectors.statistics import StatsSource
from linnix_exporter.config import RunConfig
from linnix_exporter.kernel.progstats import ProgramPass
from linnix_exporter.owners import OwnerRollup
from linnix_exporter.prog_table import Layout, ProgramTable, RawTable
from linnix_exporter.rates import Rates, compute_rates
from linnix_exporter.snapshot import (
    NS,
    ProgramStat,
    SelfUsage,
    Snapshot,
    StatsState,
)
from linnix_exporter.tick import (
    HOOKS,
    OWNERS,
    PROBES,
    PROGRAMS,
    SELF,
    STATISTICS,
    ProgramKey,
    Tick,
)
from linnix_exporter.topk import ProgramTopK, TopKAccumulator

_log = log.get("state")


@dataclass
class Sources:
    """Everything a tick reads. The daemon passes the kernel readers; tests pass fakes.

    `collector_ids`: our programs that are not probes (the stats and owner iterators).
    They are labelled ours, but their run time happens inside our own reads and is
    already in the exporter's CPU time, so it is not added to the probes' again."""

    programs: ProgramSource
    owners: OwnerSource
    self_usage: SelfSource
    stats: StatsSource
    online_cpus: Callable[[], int]
    probes: ProbeSource | None = None
    hooks: HooksSource | None = None
    collector_ids: frozenset[int] = frozenset()
    enabled: frozenset[str] = frozenset(NAMES)  # RunConfig.collectors


_ZERO_USAGE = SelfUsage(0.0, 0.0, 0)
_NO_STATS = StatsState(False, "unknown")  # the statistics collector failed on its first tick

T = TypeVar("T")


class Exporter:
    def __init__(
        self, cfg: RunConfig, sources: Sources, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg = cfg
        self.sources = sources
        self._monotonic = monotonic  # schedule.Clock.now: tests drive the loop with a fake
        self._programs_pass = ProgramPass(sources.programs, sources.owners)
        self._rollup = OwnerRollup(cfg.bpf_top_programs)
        self._programs = ProgramTopK(cfg.bpf_top_programs)
        self._listable_cache: dict[ProgramKey, bool] = {}
        self._filter = cfg.program_filter
        self._comms: TopKAccumulator[str] = TopKAccumulator(
            width=4,
            limit=cfg.probes_top_comms,
            score=lambda v: v[0] + v[1] + v[2],
            max_remembered=max(4 * cfg.probes_comm_slots, 1024),
        )
        self._prev: Snapshot | None = None
        self._failed: frozenset[str] = frozenset()
        self._seq = 0
        self._bpf_ns = 0
        self._bpf_runs = 0
        self._stats_s = 0.0
        self._hook_s = 0.0
        self._prog_hook_s: dict[int, float] = {}
        self._last_error: dict[str, str] = {}
        self.latest: Tick | None = None

    @property
    def read_method(self) -> str:
        return self.sources.programs.method

    def close(self) -> None:
        self._programs_pass.close()
        self.sources.self_usage.close()
        if self.sources.hooks is not None:
            self.sources.hooks.close()

    def _listable(self, by_key: Mapping[ProgramKey, ProgramStat]) -> Callable[[ProgramKey], bool]:
        cache, keep = self._listable_cache, self._filter.keep
        if len(cache) > 4 * len(by_key) + 64:
            cache.clear()

        def listable(k: ProgramKey) -> bool:
            ok = cache.get(k)
            if ok is None:
                ok = cache[k] = keep(by_key[k].name, by_key[k].type)
            return ok

        return listable

    # ---- one tick ---------------------------------------------------------------------

    def _collect(
        self,
        name: str,
        read: Callable[[], T],
        fallback: T,
        success: dict[str, bool],
        seconds: dict[str, float],
        more: bool = False,
    ) -> T:
        """Run one collector: a failure is logged once per distinct error, counted in
        its success gauge, and replaced by `fallback` (its last good value). `more`: a
        further read of a collector already run this tick (time adds up, and it
        succeeded only if both did)."""
        if more and not success.get(name, True):
            return fallback
        started = time.perf_counter()
        try:
            value = read()
            ok = True
            if self._last_error.pop(name, None) is not None:
                _log.info("collector recovered", collector=name)
        except Exception as e:
            value, ok = fallback, False
            msg = f"{type(e).__name__}: {e}"
            if self._last_error.get(name) != msg:
                _log.error("collector failed", collector=name, error=msg)
                self._last_error[name] = msg
        seconds[name] = time.perf_counter() - started + (seconds.get(name, 0.0) if more else 0.0)
        success[name] = ok
        return value

    def read_snapshot(self) -> tuple[Snapshot, dict[str, bool], dict[str, float]]:
        src, prev, on = self.sources, self._prev, self.sources.enabled
        success: dict[str, bool] = {}
        seconds: dict[str, float] = {}

        def collect(name: str, read: Callable[[], T], fallback: T, more: bool = False) -> T:
            if name not in on:  # switched off: not read, no success or duration figure
                return fallback
            return self._collect(name, read, fallback, success, seconds, more)

        # Our own CPU first: then the tick's own cost is counted in the next tick, and
        # the figure lies as close as possible to the moment the consumer asked.
        usage = collect(SELF, src.self_usage.read, prev.self_usage if prev else _ZERO_USAGE)
        probe_ids = src.probes.program_ids if src.probes else frozenset()
        # Probe maps before program stats: both are cumulative, and this order keeps the
        # probe counts no newer than the run times read after them.
        probes = None
        if src.probes is not None:
            probes = collect(PROBES, src.probes.read, prev.probes if prev else None)
        # The programs, their owners, then the rows (each new program's details and,
        # after an owner scan, every map's memory: more of the programs collector).
        clocks: list[tuple[int, float, float]] = []

        def read_clocks() -> None:
            boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            clocks.append((boot, self._monotonic(), time.time()))

        ours = probe_ids | src.collector_ids
        raws, rows = self._programs_pass.read(ours, collect, read_clocks)
        programs: Sequence[ProgramStat] | None = rows
        [(boottime_ns, monotonic, wall)] = clocks
        if raws is None and PROGRAMS in on and OWNERS in on:
            success[OWNERS], seconds[OWNERS] = False, 0.0  # nothing to attribute
        # After the programs and their owners: the perf events are looked for in the
        # processes holding programs, and a calibration's own programs come and go
        # after the programs were read (never listed).
        hooks = prev.hooks if prev else None
        reader = src.hooks
        if reader is not None and raws is not None:
            owner_map = self._programs_pass.owner_map
            hooks = collect(HOOKS, lambda: reader.read(owner_map), hooks)
        if programs is None:
            # Carry the last good programs with the boot time they were read at, so the
            # next good read's deltas (rates.program_delta) span the gap exactly.
            programs = prev.programs if prev else ()
            boottime_ns = prev.boottime_ns if prev else boottime_ns

        # The rates scale sampled counts by the statistics' state: read even when that
        # collector is off (it is our own bookkeeping, not a kernel read).
        def stats_now() -> StatsState:
            return src.stats.state(monotonic)

        stats = (
            collect(STATISTICS, stats_now, prev.stats if prev else _NO_STATS)
            if STATISTICS in on
            else stats_now()
        )
        snap = Snapshot(
            monotonic=monotonic,
            wall_time=wall,
            boottime_ns=boottime_ns,
            online_cpus=src.online_cpus(),
            programs=programs,
            self_usage=usage,
            stats=stats,
            probes=probes,
            probe_program_ids=probe_ids,
            memory=self._programs_pass.memory,
            hooks=hooks,
        )
        return snap, success, seconds

    def _add_hooks(self, rates: Rates, table: ProgramTable) -> None:
        """Accumulate the hook cost of the interval (node, per program); a program gone
        from the table is forgotten (its id never comes back)."""
        if rates.hooks_ns is None:
            return
        self._hook_s += rates.hooks_ns / NS
        acc = self._prog_hook_s
        for prog_id, ns in rates.program_hooks_ns.items():
            acc[prog_id] = acc.get(prog_id, 0.0) + ns / NS
        if any(i not in table.layout.index for i in acc):
            self._prog_hook_s = {i: v for i, v in acc.items() if i in table.layout.index}

    def tick(self) -> Tick:
        started = time.perf_counter()
        snap, success, seconds = self.read_snapshot()
        failed = frozenset(k for k, ok in success.items() if not ok)
        rates = compute_rates(self._prev, snap) if self._prev else None
        table = snap.programs
        if not isinstance(table, ProgramTable):  # no good read yet: nothing carried
            table = ProgramTable(b"", Layout(RawTable(b""), ()))
        by_key = table.by_key()  # rows looked up on demand: the listed ones
        # Column work (topk.ProgramTopK): no per-program Python on a tick where the
        # program set is unchanged, whatever number of programs ran.
        programs = self._programs.update(
            table,
            pinned=[table.layout.ids[p] for p in table.layout.our_positions],
            eligible=self._listable(by_key) if self._filter.active else None,
        )
        comms = None
        if snap.probes is not None:
            comms = self._comms.update(
                {
                    c: (v.forks, v.execs, v.exits, v.exited_cpu_ns)
                    for c, v in snap.probes.by_comm.items()
                }
            )
        if rates is not None:
            # Carried programs add nothing; the next good read adds the whole gap.
            self._bpf_ns += rates.bpf_run_time_ns
            self._bpf_runs += rates.bpf_runs
            self._stats_s += rates.stats_overhead_seconds
            self._add_hooks(rates, table)
        disabled = frozenset(NAMES) - self.sources.enabled
        unreliable = failed | self._failed | disabled
        self._failed = failed
        self._prev = snap
        self._seq += 1
        tick = Tick(
            snapshot=snap,
            rates=rates,
            programs=programs,
            comms=comms,
            budget_ratio=self.cfg.overhead_budget,
            collect_seconds=time.perf_counter() - started,
            seq=self._seq,
            bpf_run_time_ns_total=self._bpf_ns,
            bpf_runs_total=self._bpf_runs,
            stats_overhead_seconds_total=self._stats_s,
            hook_seconds_total=self._hook_s,
            program_hook_seconds_total=dict(self._prog_hook_s),  # a copy: ticks are immutable
            read_method=self.read_method,
            program_by_key=by_key,
            collector_success=success,
            collector_seconds=seconds,
            unreliable=unreliable,
            owners=self._rollup.update(snap.programs, rates, snap.memory),
            bpf_budget_ratio=self.cfg.bpf_node_budget,
            disabled=disabled,
        )
        self.latest = tick  # one reference swap: readers see the old or the new tick
        return tick
