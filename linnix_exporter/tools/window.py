"""One observation window over every BPF program, and the report built from it.

Two halves:

- the observation (`observe`): a start read, a read every `interval` seconds, an end
  read. The periodic reads are what let a program that unloads mid-window be reported
  with what it ran while we saw it, instead of vanishing from a start/end diff;
- the report (`build_report` and the small functions it calls): pure, fed by plain
  data, so unit tests can check the math on fixtures without a kernel.

Rules (the schema, snapshot.schema.json, repeats them for readers of the report):

- a program is (id, tag, load_time): an id that comes back with another tag or load
  time is another program;
- "loaded": load_time >= the window start (CLOCK_BOOTTIME, taken before the start read):
  its counters started at zero inside the window, so they count in full;
- otherwise the baseline is the program's first read (the start read for every program
  loaded before the window);
- "unloaded": not in the end read; it counts up to its LAST read, a lower bound (runs
  between that read and the unload are lost). A program that loads and unloads between
  two reads is invisible to any poller;
- every rate divides by the measured window (monotonic clock), so programs add up to
  the totals; `observed_seconds` says how long a program was actually seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from linnix_exporter.program_filter import ProgramFilter
from linnix_exporter.rates import ProgramDelta, Rates, program_delta
from linnix_exporter.snapshot import NS, Owner, ProgramStat

if TYPE_CHECKING:
    from linnix_exporter.kernel.stats_cost import Calibration
    from linnix_exporter.tools.snapshot_hooks import HookWindow

SCHEMA_VERSION = 1

# ---- the observation ----------------------------------------------------------------


@dataclass
class Seen:
    """One program (one identity) across the reads that saw it."""

    first: ProgramStat
    last: ProgramStat
    first_mono: float
    last_mono: float
    at_end: bool = False
    ours: bool = False
    owners: tuple[Owner, ...] = ()

    @property
    def identity(self) -> tuple[int, str, int]:
        return self.first.identity


Classify = Callable[[ProgramStat], bool]


@dataclass
class Tracker:
    """Keeps every program seen during the window; `add` takes one read."""

    classify: Classify = field(default=lambda _p: False)
    live: dict[int, Seen] = field(default_factory=dict)  # by id, in the latest read
    gone: list[Seen] = field(default_factory=list)  # unloaded, or superseded by id reuse
    reads: int = 0

    def add(
        self, progs: Iterable[ProgramStat], mono: float, final: bool = False
    ) -> tuple[list[Seen], list[Seen]]:
        """Record one read; returns (programs that appeared, programs that went away)."""
        self.reads += 1
        appeared: list[Seen] = []
        now: dict[int, Seen] = {}
        for p in progs:
            s = self.live.get(p.id)
            if s is not None and s.identity != p.identity:
                self.gone.append(s)  # id reused by another program: the old one is gone
                s = None
            if s is None:
                s = Seen(first=p, last=p, first_mono=mono, last_mono=mono)
                appeared.append(s)
            s.last, s.last_mono = p, mono
            # Owners can be empty between a loader closing its fds and the next /proc
            # scan: keep the last non-empty list, and "ours" once established.
            if p.owners and p.owners != s.owners:
                s.owners = p.owners
                s.ours = s.ours or self.classify(p)
            s.at_end = final
            now[p.id] = s
        went = [s for i, s in self.live.items() if i not in now or now[i] is not s]
        self.gone.extend(s for s in went if s.last.id not in now)
        self.live = now
        return appeared, went

    def programs(self) -> list[Seen]:
        return sorted([*self.gone, *self.live.values()], key=lambda s: (s.first.id, s.first_mono))


@dataclass(frozen=True)
class Window:
    """What one observation produced; `build_report` turns it into the JSON report."""

    started_wall: float  # time.time() at the start read
    ended_wall: float
    requested_seconds: float
    start_mono: float  # time.monotonic() before the start read
    measured_seconds: float  # monotonic, start read .. end read
    boot_start_ns: int  # CLOCK_BOOTTIME before the start read: "loaded" is >= this
    boot_end_ns: int
    interrupted: bool
    samples: int  # reads, the start and end reads included
    sample_interval: float
    programs: tuple[Seen, ...]


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def observe(
    read: Callable[[], Sequence[ProgramStat]],
    duration: float,
    interval: float,
    wait: Callable[[float], bool],
    tracker: Tracker,
    on_sample: Callable[[float, list[Seen], list[Seen]], None] | None = None,
) -> Window:
    """Read at start, every `interval`, and at the end of `duration` seconds.

    `wait(seconds)` sleeps up to that long and returns True when the window must end
    now (a signal): the end read is still taken, so the report stays valid.
    `on_sample(elapsed, appeared, went)` is called after each read (progress, logs).
    """
    boot0 = boottime_ns()
    wall0 = time.time()
    mono0 = time.monotonic()
    tracker.add(read(), mono0)
    if on_sample is not None:
        on_sample(0.0, list(tracker.live.values()), [])
    end_at = mono0 + duration
    next_at = mono0 + interval
    interrupted = False
    while True:
        now = time.monotonic()
        if now >= end_at:
            break
        if wait(max(0.0, min(next_at, end_at) - now)):
            interrupted = True
            break
        now = time.monotonic()
        if now >= end_at:
            break
        if now >= next_at:
            appeared, went = tracker.add(read(), now)
            if on_sample is not None:
                on_sample(now - mono0, appeared, went)
            while next_at <= now:  # a slow read skips samples rather than bunching them
                next_at += interval
    progs = read()
    mono1 = time.monotonic()  # after the end read: the window holds everything counted
    boot1 = boottime_ns()
    wall1 = time.time()
    appeared, went = tracker.add(progs, mono1, final=True)
    if on_sample is not None:
        on_sample(mono1 - mono0, appeared, went)
    return Window(
        started_wall=wall0,
        ended_wall=wall1,
        requested_seconds=duration,
        start_mono=mono0,
        measured_seconds=mono1 - mono0,
        boot_start_ns=boot0,
        boot_end_ns=boot1,
        interrupted=interrupted,
        samples=tracker.reads,
        sample_interval=interval,
        programs=tuple(tracker.programs()),
    )


# ---- "ours" ---------------------------------------------------------------------------


def our_program_names() -> frozenset[str]:
    """Kernel names of the programs linnix-exporter loads: the probes (bpf/probes.c,
    attached by name in kernel/_loader.py) and the stats and owners iterators
    (bpf/prog_stats_iter.c, bpf/prog_owners_iter.c, loaded under their PROG_NAME)."""
    from linnix_exporter.kernel import owner_iter, prog_iter
    from linnix_exporter.kernel._loader import PROGRAMS

    return frozenset(PROGRAMS) | {prog_iter.PROG_NAME, owner_iter.PROG_NAME}


def is_linnix_cmdline(argv: Sequence[str]) -> bool:
    """A linnix-exporter process: the console script (`.../linnix-exporter ...`) or
    `python -m linnix_exporter[.submodule] ...` (the daemon, or its loader child)."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "linnix-exporter":
            return True
        if arg == "-m" and i + 1 < len(argv):
            mod = argv[i + 1]
            return mod == "linnix_exporter" or mod.startswith("linnix_exporter.")
    return False


def is_ours(name: str, owner_argvs: Iterable[Sequence[str]], names: frozenset[str]) -> bool:
    """The rule: a Linnix program name AND held by a linnix-exporter process. The name
    alone is not enough (anyone can call a program linnix_fork), nor is the holder
    (an exporter could hold a foreign program's fd)."""
    return name in names and any(is_linnix_cmdline(a) for a in owner_argvs)


def read_argv(pid: int, proc: str = "/proc") -> list[str]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def classify_from_proc(names: frozenset[str]) -> Classify:
    """The `Tracker.classify` used on a live host: owners' cmdlines from /proc."""

    def classify(p: ProgramStat) -> bool:
        if p.name not in names:  # cheap check first: no /proc read for foreign programs
            return False
        return is_ours(p.name, (read_argv(o.pid) for o in p.owners), names)

    return classify


# ---- filters --------------------------------------------------------------------------


Filters = ProgramFilter  # the daemon's --bpf.* program filter, one copy (program_filter.py)


# ---- the report (pure) ----------------------------------------------------------------


def rfc3339(wall: float) -> str:
    """Unix time -> '2024-01-15T10:30:00.123Z' (UTC, milliseconds)."""
    dt = datetime.fromtimestamp(wall, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def boottime_to_wall(load_ns: int, boot_now_ns: int, wall_now: float) -> float:
    """A CLOCK_BOOTTIME instant (bpf_prog_info.load_time) as Unix time, by its distance
    from a (boottime, wall) pair taken together."""
    return wall_now - (boot_now_ns - load_ns) / NS


def lifecycle(s: Seen, boot_start_ns: int) -> str:
    loaded = s.first.load_time_ns >= boot_start_ns
    if s.at_end:
        return "loaded" if loaded else "present"
    return "loaded_and_unloaded" if loaded else "unloaded"


def observed_seconds(s: Seen, w: Window) -> float:
    """How long the program was seen: from the window start (or its load, if later) to
    its last read (the end read if still loaded), clamped to the window."""
    since_load = max(0.0, (s.first.load_time_ns - w.boot_start_ns) / NS)
    seen = s.last_mono - w.start_mono - since_load
    return max(0.0, min(w.measured_seconds, seen))


def window_delta(s: Seen, boot_start_ns: int) -> ProgramDelta:
    """What a program ran inside the window: in full if it loaded inside it, else from
    its first read to its last (rates.program_delta: never negative)."""
    loaded = s.first.load_time_ns >= boot_start_ns
    return program_delta(None if loaded else s.first, s.last, boot_start_ns)


def window_rates(w: Window, deltas: dict[int, ProgramDelta], online_cpus: int) -> Rates:
    """The window as one rates.Rates interval (its core/node ratio math)."""
    return Rates(
        interval_seconds=w.measured_seconds,
        online_cpus=online_cpus,
        programs=MappingProxyType(deltas),
        bpf_run_time_ns=sum(d.run_time_ns for d in deltas.values()),
        bpf_runs=sum(d.run_cnt for d in deltas.values()),
        probes_run_time_ns=0,  # not a report figure: the report is about programs
        exporter_cpu_seconds=0.0,
    )


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def percent_of_core(r: Rates, run_time_ns: int) -> float:
    """bpftop's CPU %: share of ONE core (can exceed 100)."""
    return 100.0 * r.core_ratio(run_time_ns / NS) if r.interval_seconds > 0 else 0.0


def percent_of_node(r: Rates, run_time_ns: float) -> float:
    """Share of the whole node: all online CPUs (0..100)."""
    ok = r.interval_seconds > 0 and r.online_cpus > 0
    return 100.0 * r.node_ratio(run_time_ns / NS) if ok else 0.0


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    kernel_release: str
    online_cpus: int


def report_key(s: Seen, ids_seen_twice: set[int], is_latest: bool) -> str:
    """The program's key in program_stats: its id. In the (practically never seen) case
    of an id reused inside the window, the earlier program's key is 'id@load_time_ns'."""
    if s.first.id in ids_seen_twice and not is_latest:
        return f"{s.first.id}@{s.first.load_time_ns}"
    return str(s.first.id)


def build_report(
    w: Window,
    host: HostInfo,
    stats_method: str,
    stats_enabled: bool,
    filters: Filters,
    version: str,
    cost: Calibration | None = None,
    hooks: HookWindow | None = None,
) -> dict[str, Any]:
    """The schema_version 1 report (snapshot.schema.json) for one window; with `hooks`
    (--collector.hooks) each program's hooks and whole price, and their totals."""
    kept = [s for s in w.programs if filters.keep(s.first.name, s.first.type)]
    deltas = {i: window_delta(s, w.boot_start_ns) for i, s in enumerate(kept)}
    r = window_rates(w, deltas, host.online_cpus)
    secs = w.measured_seconds
    latest: dict[int, int] = {}  # id -> index of its latest identity
    count: dict[int, int] = {}
    for i, s in enumerate(kept):
        count[s.first.id] = count.get(s.first.id, 0) + 1
        if s.first.id not in latest or s.first_mono >= kept[latest[s.first.id]].first_mono:
            latest[s.first.id] = i
    twice = {pid for pid, n in count.items() if n > 1}
    programs: dict[str, dict[str, Any]] = {}
    if hooks is not None:
        from linnix_exporter.tools import snapshot_hooks

        prices = hooks.prices()
    for i, s in enumerate(kept):
        d = deltas[i]
        p = s.last
        key = report_key(s, twice, latest[p.id] == i)
        programs[key] = {
            "id": p.id,
            "name": p.name,
            "type": p.type,
            "tag": p.tag,
            "load_time": rfc3339(boottime_to_wall(p.load_time_ns, w.boot_end_ns, w.ended_wall)),
            "owners": [{"pid": o.pid, "comm": o.comm} for o in (s.owners or p.owners)],
            "ours": s.ours,
            "lifecycle": lifecycle(s, w.boot_start_ns),
            "observed_seconds": observed_seconds(s, w),
            "runtime_ns": d.run_time_ns,
            "run_count": d.run_cnt,
            "recursion_misses": d.recursion_misses,
            "events_per_sec": per_second(d.run_cnt, secs),
            "avg_runtime_ns": d.run_time_ns / d.run_cnt if d.run_cnt else 0.0,
            "estimated_cpu_percent": percent_of_core(r, d.run_time_ns),
            "node_cpu_percent": percent_of_node(r, d.run_time_ns),
        }
        if hooks is not None:
            programs[key] |= snapshot_hooks.program_figures(
                hooks.of(p.id), d.run_cnt, d.run_time_ns, prices, p.id, r
            )
    lives = [programs[k]["lifecycle"] for k in programs]
    stats_overhead_ns = r.bpf_runs * cost.cost_ns if cost else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": f"linnix-exporter {version} snapshot",
        "timestamp": rfc3339(w.ended_wall),
        "window": {
            "started_at": rfc3339(w.started_wall),
            "ended_at": rfc3339(w.ended_wall),
            "requested_seconds": w.requested_seconds,
            "measured_seconds": secs,
            "interrupted": w.interrupted,
            "samples": w.samples,
            "sample_interval_seconds": w.sample_interval,
        },
        "host": {
            "hostname": host.hostname,
            "kernel_release": host.kernel_release,
            "online_cpus": host.online_cpus,
        },
        "stats": {
            "method": stats_method,
            "enabled": stats_enabled,
            "run_cost_ns": cost.cost_ns if cost else None,
            "cost_source": cost.source if cost else "",
            "overhead_ns": stats_overhead_ns,
            "overhead_node_cpu_percent": percent_of_node(r, stats_overhead_ns) if cost else 0.0,
        },
        "filters": filters.as_json(),
        "program_stats": programs,
        "total_runtime_ns": r.bpf_run_time_ns,
        "total_run_count": r.bpf_runs,
        "total_recursion_misses": sum(d.recursion_misses for d in deltas.values()),
        "total_events_per_sec": per_second(r.bpf_runs, secs),
        "total_estimated_cpu_percent": percent_of_core(r, r.bpf_run_time_ns),
        "total_node_cpu_percent": percent_of_node(r, r.bpf_run_time_ns),
        "num_programs": len(programs),
        "num_loaded_during_window": sum(x in ("loaded", "loaded_and_unloaded") for x in lives),
        "num_unloaded_during_window": sum(x in ("unloaded", "loaded_and_unloaded") for x in lives),
        "hooks": None
        if hooks is None
        else snapshot_hooks.totals(hooks, programs, r, stats_overhead_ns),
    }


def load_schema() -> dict[str, Any]:
    """snapshot.schema.json, shipped as package data."""
    import json
    from importlib.resources import files

    text = files("linnix_exporter.tools").joinpath("snapshot.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
