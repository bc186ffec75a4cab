"""Application state: the tick that turns kernel reads into one immutable Tick, and
when it runs.

A tick reads every source once (each a collector that may fail alone), builds a
Snapshot, derives Rates against the previous Snapshot and folds per-key counters into
bounded label sets. The newest Tick is published by a single reference swap, so every
sink (Prometheus scrape, OTLP push) reads one consistent tick without a second
collection pass.

When: by default on demand. A scrape or a push that finds the newest tick older than
the collection interval ticks first (concurrent consumers share that one tick); nothing
wakes up in between. With `--collect.mode timer` a loop ticks every interval instead.
`Exporter.run` takes the schedule as an argument (`Schedule`): a timed schedule of
another kind (e.g. statistics switched on for a window of each interval) plugs in there.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from linnix_exporter import log
from linnix_exporter.config import RunConfig
from linnix_exporter.kernel.bpf_syscall import RawProg
from linnix_exporter.kernel.prog_table import Layout, ProgramTable, RawTable, program_ids
from linnix_exporter.kernel.progstats import OwnerMap, ProgramRows
from linnix_exporter.owners import OwnerRollup, OwnerView
from linnix_exporter.rates import Rates, compute_rates
from linnix_exporter.snapshot import ProbeCounts, ProgramStat, SelfUsage, Snapshot, StatsState
from linnix_exporter.stats_schedule import StatsSchedule
from linnix_exporter.topk import ProgramTopK, TopKAccumulator, TopKView

_log = log.get("state")

ProgramKey = tuple[int, str, int]  # ProgramStat.identity

# The collectors, as named by linnix_exporter_collector_success{collector}.
PROBES, PROGRAMS, OWNERS, SELF = "probes", "programs", "owners", "self"
COLLECTORS = (PROBES, PROGRAMS, OWNERS, SELF)


class ProbeSource(Protocol):
    @property
    def program_ids(self) -> frozenset[int]: ...

    def read(self) -> ProbeCounts: ...

    def close(self) -> None: ...


class ProgramSource(Protocol):
    @property
    def method(self) -> str: ...

    def read(self) -> RawTable | list[RawProg]: ...

    def close(self) -> None: ...


class OwnerSource(Protocol):
    def read(self, ids: frozenset[int]) -> OwnerMap: ...

    def close(self) -> None: ...


class SelfSource(Protocol):
    def read(self) -> SelfUsage: ...

    def close(self) -> None: ...


class StatsSource(Protocol):
    """kernel/stats_switch.StatsSwitch, or stats_schedule.StatsSchedule around one (then
    each tick also tells it what was counted: StatsSchedule.after_tick)."""

    def state(self, now: float | None = None) -> StatsState: ...


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
    collector_ids: frozenset[int] = frozenset()


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
    program_by_key: Mapping[ProgramKey, ProgramStat] = field(default_factory=dict)
    # Per collector (probes only when enabled): did its read succeed, and its wall time.
    # A failed collector's part of the snapshot is carried from the tick before and its
    # figures are not served.
    collector_success: Mapping[str, bool] = field(default_factory=dict)
    collector_seconds: Mapping[str, float] = field(default_factory=dict)
    # Collectors whose rates this tick cannot be trusted: failed now, or in the tick
    # before (then the delta spans two intervals but is divided by one).
    unreliable: frozenset[str] = frozenset()

    def ok(self, collector: str) -> bool:
        return self.collector_success.get(collector, True)

    def rate_ok(self, *collectors: str) -> bool:
        return not self.unreliable.intersection(collectors)

    owners: OwnerView | None = None  # programs rolled up by owner (owners.py)
    bpf_budget_ratio: float = 0.05  # --bpf.node-budget

    @property
    def probes_attached(self) -> bool:
        """Every one of our programs is loaded (in the kernel's list) AND attached: the
        kernel reported it running on its tracepoint through the fd we hold."""
        s = self.snapshot
        ids = s.probe_program_ids
        present = program_ids(s.programs)
        return (
            s.probes is not None
            and bool(ids)
            and ids <= present
            and ids <= s.probes.attached_program_ids
        )


FIRST_RATIO_SECONDS = 1.0  # shortest interval the first ratios are taken over
_ZERO_USAGE = SelfUsage(0.0, 0.0, 0)

T = TypeVar("T")


class Schedule(Protocol):
    """When the exporter wakes up on its own (`Exporter.run`)."""

    @property
    def on_demand(self) -> bool:
        """Consumers tick when they find the newest tick stale."""
        ...

    def next_wake(self, exporter: Exporter) -> float | None:
        """Monotonic time of the next wake-up; None: sleep until stopped."""
        ...

    def wake(self, exporter: Exporter) -> None: ...


class OnDemand:
    """No wake-ups of our own: scrapes and pushes tick when they need a newer tick."""

    on_demand = True

    def next_wake(self, exporter: Exporter) -> float | None:
        return None

    def wake(self, exporter: Exporter) -> None:  # never called: next_wake is None
        pass


def next_deadline(deadline: float, interval: float, now: float) -> float:
    """One interval on; behind (suspend, overload): no burst, one interval from now."""
    deadline += interval
    return deadline if deadline >= now else now + interval


class Timer:
    """A tick every `interval` on monotonic deadlines; behind (suspend, overload): no
    burst, the next tick is one interval later."""

    on_demand = False

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._deadline: float | None = None

    def next_wake(self, exporter: Exporter) -> float | None:
        if self._deadline is None:
            # Start-up has just ticked: the first ratios come soon, but not from an
            # interval of a few milliseconds, where one scheduler tick of our CPU reads
            # as a third of the node (seen: 0.36 over 7 ms right after start).
            last = exporter.latest.snapshot.monotonic if exporter.latest else time.monotonic()
            self._deadline = last + min(self.interval, FIRST_RATIO_SECONDS)
        return self._deadline

    def wake(self, exporter: Exporter) -> None:
        exporter.tick_logged()
        assert self._deadline is not None
        self._deadline = next_deadline(self._deadline, self.interval, time.monotonic())


class Sampled:
    """`base` (on demand or timer) while statistics are always on; while the statistics
    schedule samples (stats_schedule.py), timed: wake at the window's start to switch
    statistics on, tick at its end (the tick switches them off again). Consumers then
    serve the newest tick and never read in the middle of a window."""

    def __init__(self, base: OnDemand | Timer, stats: StatsSchedule, interval: float) -> None:
        self.base = base
        self.stats = stats
        self.interval = interval
        self._deadline: float | None = None  # the next tick while sampled

    @property
    def on_demand(self) -> bool:
        return self.base.on_demand and self.stats.current != "sampled"

    def next_wake(self, exporter: Exporter) -> float | None:
        if self.stats.current != "sampled":
            self._deadline = None
            return self.base.next_wake(exporter)
        if self._deadline is None:
            last = exporter.latest.snapshot.monotonic if exporter.latest else time.monotonic()
            self._deadline = last + self.interval
        on_at = self.stats.window_start(self._deadline)
        return self._deadline if on_at is None else on_at

    def wake(self, exporter: Exporter) -> None:
        if self.stats.current != "sampled":
            self.base.wake(exporter)
            return
        assert self._deadline is not None
        now = time.monotonic()
        if now < self._deadline:
            self.stats.open_window()
            return
        exporter.tick_logged()
        self._deadline = next_deadline(self._deadline, self.interval, now)


def schedule_for(cfg: RunConfig, stats: StatsSource | None = None) -> Schedule:
    base = Timer(cfg.collect_interval) if cfg.collect_mode == "timer" else OnDemand()
    if isinstance(stats, StatsSchedule):
        return Sampled(base, stats, cfg.collect_interval)
    return base


class Exporter:
    def __init__(self, cfg: RunConfig, sources: Sources) -> None:
        self.cfg = cfg
        self.sources = sources
        self._schedule: Schedule | None = None  # set by run()
        # kick() writes a byte here to wake run(): a pipe, not an Event, because the
        # signal handler kicks from the main thread, which may be inside an Event's
        # (non-reentrant) lock at that moment.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Map-memory reads follow owner scans and are paced with them (OwnerScanner).
        self._rows = ProgramRows(getattr(sources.owners, "charge", None))
        self._rollup = OwnerRollup(cfg.bpf_top_programs)
        self._programs = ProgramTopK(cfg.bpf_top_programs)
        self._listable_cache: dict[ProgramKey, bool] = {}
        self._comms: TopKAccumulator[str] = TopKAccumulator(
            width=4,
            limit=cfg.probes_top_comms,
            score=lambda v: v[0] + v[1] + v[2],
            max_remembered=max(4 * cfg.probes_comm_slots, 1024),
        )
        self._prev: Snapshot | None = None
        self._owner_map: OwnerMap = {}
        self._failed: frozenset[str] = frozenset()
        self._seq = 0
        self._errors = 0
        self._bpf_ns = 0
        self._bpf_runs = 0
        self._stats_s = 0.0
        self._last_error: dict[str, str] = {}
        self._tick_lock = threading.Lock()
        self.latest: Tick | None = None

    @property
    def read_method(self) -> str:
        return self.sources.programs.method

    def close(self) -> None:
        self.sources.programs.close()
        self.sources.owners.close()
        self.sources.self_usage.close()

    @property
    def errors_total(self) -> int:
        return self._errors

    def _listable(self, by_key: Mapping[ProgramKey, ProgramStat]) -> Callable[[ProgramKey], bool]:
        cache = self._listable_cache
        if len(cache) > 4 * len(by_key) + 64:
            cache.clear()

        def listable(k: ProgramKey) -> bool:
            ok = cache.get(k)
            if ok is None:
                ok = cache[k] = self.cfg.program_listable(by_key[k].name, by_key[k].type)
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
    ) -> T:
        """Run one collector: a failure is logged once per distinct error, counted in
        its success gauge, and replaced by `fallback` (its last good value)."""
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
        seconds[name] = time.perf_counter() - started
        success[name] = ok
        return value

    def read_snapshot(self) -> tuple[Snapshot, dict[str, bool], dict[str, float]]:
        src, prev = self.sources, self._prev
        success: dict[str, bool] = {}
        seconds: dict[str, float] = {}
        # Our own CPU first: then the tick's own cost is counted in the next tick, and
        # the figure lies as close as possible to the moment the consumer asked.
        usage = self._collect(
            SELF, src.self_usage.read, prev.self_usage if prev else _ZERO_USAGE, success, seconds
        )
        probe_ids = src.probes.program_ids if src.probes else frozenset()
        # Probe maps before program stats: both are cumulative, and this order keeps the
        # probe counts no newer than the run times read after them.
        probes = None
        if src.probes is not None:
            probes = self._collect(
                PROBES, src.probes.read, prev.probes if prev else None, success, seconds
            )
        raws = self._collect(PROGRAMS, src.programs.read, None, success, seconds)
        boottime_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        monotonic, wall = time.monotonic(), time.time()
        if raws is None:
            # Carry the last good programs with the boot time they were read at, so the
            # next good read's deltas (rates.program_delta) span the gap exactly.
            programs = prev.programs if prev else ()
            boottime_ns = prev.boottime_ns if prev else boottime_ns
            success[OWNERS], seconds[OWNERS] = False, 0.0  # nothing to attribute
        else:
            table = RawTable.of(raws)
            ids = table.id_set
            self._owner_map = self._collect(
                OWNERS, lambda: src.owners.read(ids), self._owner_map, success, seconds
            )
            programs = self._rows.build(table, probe_ids | src.collector_ids, self._owner_map)
        snap = Snapshot(
            monotonic=monotonic,
            wall_time=wall,
            boottime_ns=boottime_ns,
            online_cpus=src.online_cpus(),
            programs=programs,
            self_usage=usage,
            stats=src.stats.state(monotonic),
            probes=probes,
            probe_program_ids=probe_ids,
            memory=self._rows.memory,
        )
        return snap, success, seconds

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
            # Carried programs add nothing; the next good read adds the whole gap.
            self._bpf_ns += rates.bpf_run_time_ns
            self._bpf_runs += rates.bpf_runs
            self._stats_s += rates.stats_overhead_seconds
        unreliable = failed | self._failed
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
            read_method=self.read_method,
            program_by_key=by_key,
            collector_success=success,
            collector_seconds=seconds,
            unreliable=unreliable,
            owners=self._rollup.update(snap.programs, rates, snap.memory),
            bpf_budget_ratio=self.cfg.bpf_node_budget,
        )
        self.latest = tick  # one reference swap: readers see the old or the new tick
        if isinstance(src_stats := self.sources.stats, StatsSchedule):
            was = self.on_demand
            src_stats.after_tick(rates)  # sampled: statistics off until the next window
            if self.on_demand != was:
                self.kick()  # the run loop's wake-ups changed (auto switched modes)
        return tick

    def tick_logged(self) -> None:
        """Tick; an error no collector caught is logged once per distinct error and
        counted, and the last good tick stays up."""
        try:
            self.tick()
            if self._last_error.pop("tick", None) is not None:
                _log.info("collection recovered")
        except Exception as e:
            self._errors += 1
            msg = f"{type(e).__name__}: {e}"
            if self._last_error.get("tick") != msg:
                _log.error("collection failed", error=msg)
                self._last_error["tick"] = msg

    # ---- when to tick -----------------------------------------------------------------

    def min_age(self) -> float:
        """How old the newest tick may be before a consumer ticks again."""
        first = self.latest is not None and self.latest.seq == 1
        return (
            min(self.cfg.collect_interval, FIRST_RATIO_SECONDS)
            if first
            else (self.cfg.collect_interval)
        )

    def current(self) -> Tick | None:
        """The tick a consumer should export now. On demand: tick first if the newest
        one is older than the interval; concurrent callers wait for that one tick."""
        if not self.on_demand:
            return self.latest
        with self._tick_lock:
            t = self.latest
            if t is None or time.monotonic() - t.snapshot.monotonic >= self.min_age():
                self.tick_logged()
            return self.latest

    @property
    def on_demand(self) -> bool:
        """Consumers tick when they find the newest tick stale (the schedule in force)."""
        if self._schedule is not None:
            return self._schedule.on_demand
        return self.cfg.collect_mode == "on-demand"

    @property
    def wakeup_fd(self) -> int:
        """The write end of run()'s wake-up pipe, for signal.set_wakeup_fd: a signal the
        kernel delivers to another thread (any thread may take it) then wakes the main
        thread's select(), whose Python handler would otherwise wait for a wake-up that
        never comes while ticking on demand."""
        return self._wake_w

    def kick(self) -> None:
        """Make run() ask its schedule again: the signal handler after setting `stop`,
        and a tick whose statistics schedule changed what the loop must wake up for.
        Safe in a signal handler: one write(2), no lock."""
        with contextlib.suppress(BlockingIOError):  # full pipe: a wake-up is pending
            os.write(self._wake_w, b"k")

    def run(self, stop: threading.Event, schedule: Schedule) -> None:
        """Wake up when the schedule says until `stop` is set (then kick() wakes it)."""
        self._schedule = schedule
        while not stop.is_set():
            wake = schedule.next_wake(self)
            timeout = None if wake is None else max(0.0, wake - time.monotonic())
            if select.select([self._wake_r], [], [], timeout)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            if stop.is_set():
                return
            if wake is not None and time.monotonic() >= wake:
                with self._tick_lock:
                    schedule.wake(self)
