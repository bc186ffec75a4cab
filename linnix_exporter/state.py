"""Application state: the tick loop that turns kernel reads into one immutable Tick.

Each tick reads every source once, builds a Snapshot, derives Rates against the
previous Snapshot and folds per-key counters into bounded label sets. The newest Tick
is published by a single reference swap, so every sink (Prometheus scrape, OTLP push)
reads one consistent tick without locks and without a second collection pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Protocol

from linnix_exporter import log
from linnix_exporter.config import RunConfig
from linnix_exporter.kernel.attribution import Attributor
from linnix_exporter.kernel.bpf_syscall import online_cpus
from linnix_exporter.kernel.progstats import ProgramStatsReader, ProgSource
from linnix_exporter.kernel.self_usage import read_self_usage
from linnix_exporter.owners import OwnerRollup, OwnerView
from linnix_exporter.rates import Rates, compute_rates
from linnix_exporter.snapshot import ProbeCounts, ProgramStat, Snapshot, StatsState
from linnix_exporter.stats_schedule import StatsSchedule
from linnix_exporter.topk import TopKAccumulator, TopKView

_log = log.get("state")

ProgramKey = tuple[int, str, int]  # ProgramStat.identity


class StatsSource(Protocol):
    """kernel/stats_switch.StatsSwitch, or stats_schedule.StatsSchedule around one."""

    def state(self, now: float | None = None) -> StatsState: ...


class ProbeSource(Protocol):
    @property
    def program_ids(self) -> frozenset[int]: ...

    def read(self) -> ProbeCounts: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Tick:
    """What every sink exports: one snapshot, its rates, and the bounded label sets."""

    snapshot: Snapshot
    rates: Rates | None  # None on the first tick: a ratio needs two reads
    programs: TopKView[ProgramKey]  # vec: (run_time_ns, run_cnt, recursion_misses)
    comms: TopKView[str] | None  # vec: (forks, execs, exits, exited_cpu_ns)
    budget_ratio: float
    collect_seconds: float  # wall time the reads took
    seq: int  # 1 for the first tick
    bpf_run_time_ns_total: int = 0  # every program, accumulated over ticks since start
    bpf_runs_total: int = 0
    # What statistics cost every program run, accumulated over ticks since start (s).
    stats_overhead_seconds_total: float = 0.0
    read_method: str = "syscall"  # how program stats were read: iterator | syscall
    program_by_key: dict[ProgramKey, ProgramStat] = field(default_factory=dict)
    owners: OwnerView | None = None  # programs rolled up by owner (owners.py)
    bpf_budget_ratio: float = 0.05  # --bpf.node-budget

    @property
    def probes_attached(self) -> bool:
        """Every one of our programs is loaded (in the kernel's list) AND attached: the
        kernel reported it running on its tracepoint through the fd we hold."""
        s = self.snapshot
        ids = s.probe_program_ids
        present = {p.id for p in s.programs}
        return (
            s.probes is not None
            and bool(ids)
            and ids <= present
            and ids <= s.probes.attached_program_ids
        )


FIRST_RATIO_SECONDS = 1.0  # shortest interval the first ratios are taken over


class Exporter:
    def __init__(
        self,
        cfg: RunConfig,
        stats: StatsSource,
        probes: ProbeSource | None,
        prog_source: ProgSource | None = None,
        collector_ids: frozenset[int] = frozenset(),
    ) -> None:
        """`collector_ids`: our programs that are not probes (the stats iterator). They
        are labelled ours, but their run time happens inside our own read() and is
        already in the exporter's CPU time, so it is not added to the probes' again."""
        self.cfg = cfg
        self.stats = stats
        self.probes = probes
        self.collector_ids = collector_ids
        self._reader = ProgramStatsReader(
            cfg.bpf_owner_refresh, prog_source, Attributor(cfg.attribution_pod_logs_path)
        )
        self._owners = OwnerRollup(cfg.bpf_top_programs)
        self._programs: TopKAccumulator[ProgramKey] = TopKAccumulator(
            width=3, limit=cfg.bpf_top_programs, score=itemgetter(0), forget_missing=True
        )
        self._listable_cache: dict[ProgramKey, bool] = {}
        self._comms: TopKAccumulator[str] = TopKAccumulator(
            width=4,
            limit=cfg.probes_top_comms,
            score=lambda v: v[0] + v[1] + v[2],
            max_remembered=max(4 * cfg.probes_comm_slots, 1024),
        )
        self._prev: Snapshot | None = None
        self._seq = 0
        self._errors = 0
        self._bpf_ns = 0
        self._bpf_runs = 0
        self._stats_s = 0.0
        self._last_error = ""
        self.latest: Tick | None = None

    @property
    def read_method(self) -> str:
        return self._reader.method

    def close(self) -> None:
        self._reader.close()

    @property
    def errors_total(self) -> int:
        return self._errors

    def _listable(self, by_key: dict[ProgramKey, ProgramStat]) -> Callable[[ProgramKey], bool]:
        cache = self._listable_cache
        if len(cache) > 4 * len(by_key) + 64:
            cache.clear()

        def listable(k: ProgramKey) -> bool:
            ok = cache.get(k)
            if ok is None:
                ok = cache[k] = self.cfg.program_listable(by_key[k].name, by_key[k].type)
            return ok

        return listable

    def read_snapshot(self) -> Snapshot:
        probe_ids = self.probes.program_ids if self.probes else frozenset()
        # Probe maps first, then program stats: both are cumulative, and this order keeps
        # the probe counts no newer than the run times read after them.
        probes = self.probes.read() if self.probes else None
        now = time.monotonic()
        return Snapshot(
            monotonic=now,
            wall_time=time.time(),
            boottime_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            online_cpus=online_cpus(),
            programs=self._reader.read(probe_ids | self.collector_ids),
            self_usage=read_self_usage(),
            stats=self.stats.state(now),
            probes=probes,
            probe_program_ids=probe_ids,
            memory=self._reader.memory,
        )

    def tick(self) -> Tick:
        started = time.perf_counter()
        snap = self.read_snapshot()
        rates = compute_rates(self._prev, snap) if self._prev else None
        by_key = {(p.id, p.tag, p.load_time_ns): p for p in snap.programs}
        ours = [k for k, p in by_key.items() if p.ours]
        # p[5:8] is (run_time_ns, run_cnt, recursion_misses): a C-level slice, no
        # per-program tuple built in Python (this runs for every program every tick).
        programs = self._programs.update(
            {k: p[5:8] for k, p in by_key.items()},
            pinned=ours,
            eligible=self._listable(by_key) if self.cfg.has_program_filters else None,
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
            self._bpf_ns += rates.bpf_run_time_ns
            self._bpf_runs += rates.bpf_runs
            self._stats_s += rates.stats_overhead_seconds
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
            read_method=self._reader.method,
            program_by_key=by_key,
            owners=self._owners.update(snap.programs, rates, snap.memory),
            bpf_budget_ratio=self.cfg.bpf_node_budget,
        )
        self.latest = tick  # one reference swap: readers see the old or the new tick
        return tick

    def run(self, stop: threading.Event) -> None:
        """Tick every interval on monotonic deadlines until `stop` is set. A failed read
        is logged once per distinct error and counted; the last good tick stays up."""
        interval = self.cfg.collect_interval
        sched = self.stats if isinstance(self.stats, StatsSchedule) else None

        def wait(until: float) -> bool:
            if sched is not None:  # sampled mode switches statistics on inside the wait
                return sched.wait(stop, until)
            return stop.wait(max(0.0, until - time.monotonic()))

        deadline = time.monotonic()
        if self.latest is not None:
            # Start-up has just ticked: the first ratios come soon, but not from an
            # interval of a few milliseconds, where one scheduler tick of our CPU reads
            # as a third of the node (seen: 0.36 over 7 ms right after start).
            deadline += min(interval, FIRST_RATIO_SECONDS)
            if sched is not None:
                sched.after_tick(self.latest.rates)
            if wait(deadline):
                return
        while not stop.is_set():
            try:
                tick = self.tick()
                if sched is not None:
                    sched.after_tick(tick.rates)
                if self._last_error:
                    _log.info("collection recovered")
                    self._last_error = ""
            except Exception as e:  # keep serving the last good tick
                self._errors += 1
                msg = f"{type(e).__name__}: {e}"
                if msg != self._last_error:
                    _log.error("collection failed", error=msg)
                    self._last_error = msg
            deadline += interval
            now = time.monotonic()
            if deadline < now:  # we fell behind (suspend, overload): don't burst
                deadline = now + interval
            wait(deadline)
