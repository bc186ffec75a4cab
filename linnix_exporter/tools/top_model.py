"""`linnix-exporter top`'s model: what the screen shows, from either feed.

- Reading the kernel, each refresh is one tick of the daemon's own Ticker (schedule.py):
  the rows come from its Snapshot and Rates (build_rows), the header from the Tick
  (header_from_tick), the same fields figures.py serves.
- `--from URL`: a running exporter's /metrics, read with prometheus_client's text
  parser. read_snapshot rebuilds a Snapshot from the served counters and
  rates.compute_rates gives each program's rates between two consecutive ticks (the
  daemon's math, not a copy of it); the header is the served gauges as they are.

tests/test_top_model.py checks that both give the same header and rates for one tick.
Pure logic, no terminal library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from linnix_exporter.owners import owner_key
from linnix_exporter.rates import Rates, compute_rates
from linnix_exporter.snapshot import NS, Owner, ProgramStat, SelfUsage, Snapshot, StatsState

if TYPE_CHECKING:
    from linnix_exporter.tick import Tick

# metric name (counters with _total) -> [(labels, value)]
Samples = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]

OTHER = "[other]"
OTHER_ID = -1  # the "[other]" series' row in the rebuilt Snapshot: no program has it


# Every metric the model reads; read_header, read_snapshot and _owners name them.
READ = frozenset(
    {
        "linnix_bpf_budget_ratio",
        "linnix_bpf_cpu_ratio",
        "linnix_bpf_hook_seconds_total",
        "linnix_bpf_program_hook_seconds_total",
        "linnix_bpf_program_owner_info",
        "linnix_bpf_program_recursion_misses_total",
        "linnix_bpf_program_run_time_seconds_total",
        "linnix_bpf_program_runs_total",
        "linnix_bpf_programs",
        "linnix_bpf_stats_duty_ratio",
        "linnix_bpf_stats_enabled",
        "linnix_bpf_stats_run_cost_seconds",
        "linnix_bpf_unlisted_programs",
        "linnix_exporter_cpu_seconds_total",
        "linnix_exporter_last_collect_timestamp_seconds",
        "linnix_exporter_resident_memory_bytes",
        "linnix_node_cpus",
        "linnix_overhead_budget_ratio",
        "linnix_overhead_component_ratio",
        "linnix_overhead_interval_seconds",
        "linnix_overhead_ratio",
    }
)


def samples_from_text(text: str) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """The samples of a /metrics body (Prometheus text format) that the model reads.
    Raises ValueError if it is not Prometheus text.

    Only those lines go through prometheus_client's parser: it reads a character at a
    time (~60 us a sample here, 20 ms a refresh for an exporter's default /metrics),
    and half of the body (per-command counters, memory, the histogram) is not shown.
    Comment lines go too: samples without their TYPE parse as untyped, names intact."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = "\n".join(
        line for line in text.splitlines() if line.partition(" ")[0].partition("{")[0] in READ
    )
    out: dict[str, list[tuple[Mapping[str, str], float]]] = {}
    for fam in text_string_to_metric_families(wanted):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _one(samples: Samples, name: str) -> float | None:
    got = samples.get(name)
    return got[0][1] if got else None


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in samples.get(name, ())}


@dataclass(frozen=True)
class Header:
    """The node and the overhead, as served for the tick the rows come from."""

    tick_time: float  # linnix_exporter_last_collect_timestamp_seconds (wall clock)
    interval_seconds: float | None  # what the ratios cover; None before the 2nd tick
    online_cpus: int
    programs: int  # loaded on the node
    unlisted: int  # counted in the "[other]" row
    bpf_cpu_ratio: float | None  # every program, node share
    bpf_budget_ratio: float | None
    overhead_ratio: float | None  # ours: probes + our CPU + statistics (if ours)
    overhead_budget_ratio: float | None
    components: Mapping[str, float] = field(default_factory=dict)
    stats_method: str = "off"  # enable_stats_fd | sysctl | already_on | sampled | off
    stats_on: bool = False
    stats_cost_ns: float | None = None  # what statistics add to every program run
    stats_cost_source: str = ""  # measured | estimated
    duty_ratio: float | None = None  # share of the interval statistics were on
    rss_bytes: float | None = None  # the measuring process (top, or the exporter)


class Row(NamedTuple):
    prog_id: int | None  # None: the "[other]" row (programs the exporter does not list)
    name: str
    type: str
    ours: bool
    owner: str  # comm of the paying owner (lowest pid, owners.py), "[none]" if nobody
    owner_pid: int | None
    pod: str  # namespace/pod, "" outside Kubernetes
    core_ratio: float | None  # run time / interval: share of one core; None: no rate yet
    node_ratio: float | None  # share of the node (all online CPUs)
    runs_per_second: float | None
    ns_per_run: float | None  # None: no run in the interval
    # The whole price of a program, a share of one core like core_ratio: its run time
    # plus what reaching it through its hooks cost outside run_time_ns (the hooks
    # collector's price). None: hooks not priced (collector off), no rate yet, or the
    # "[other]" row (no hook figure of its own).
    whole_ratio: float | None = None


@dataclass(frozen=True)
class View:
    header: Header
    rows: tuple[Row, ...]
    rates: Rates | None  # None on the first tick: rates need two


def _stats_state(samples: Samples, on_seconds: float) -> StatsState:
    enabled = _by(samples, "linnix_bpf_stats_enabled", "method")
    method, on = next(iter(enabled.items()), ("off", 0.0))
    cost = _by(samples, "linnix_bpf_stats_run_cost_seconds", "source")
    source, cost_s = next(iter(cost.items()), ("", None))
    sampled = method == "sampled"
    return StatsState(
        enabled=on == 1,
        # "sampled" is served in place of the method: it switches statistics it turned on.
        method="enable_stats_fd" if sampled else method,
        on_seconds=on_seconds,
        mode="sampled" if sampled else "always",
        run_cost_ns=None if cost_s is None else cost_s * NS,
        cost_source=source,
    )


def read_header(samples: Samples) -> Header:
    enabled = _by(samples, "linnix_bpf_stats_enabled", "method")
    method, on = next(iter(enabled.items()), ("off", 0.0))
    cost = _by(samples, "linnix_bpf_stats_run_cost_seconds", "source")
    source, cost_s = next(iter(cost.items()), ("", None))
    return Header(
        tick_time=_one(samples, "linnix_exporter_last_collect_timestamp_seconds") or 0.0,
        interval_seconds=_one(samples, "linnix_overhead_interval_seconds"),
        online_cpus=int(_one(samples, "linnix_node_cpus") or 0),
        programs=int(_one(samples, "linnix_bpf_programs") or 0),
        unlisted=int(_one(samples, "linnix_bpf_unlisted_programs") or 0),
        bpf_cpu_ratio=_one(samples, "linnix_bpf_cpu_ratio"),
        bpf_budget_ratio=_one(samples, "linnix_bpf_budget_ratio"),
        overhead_ratio=_one(samples, "linnix_overhead_ratio"),
        overhead_budget_ratio=_one(samples, "linnix_overhead_budget_ratio"),
        components=_by(samples, "linnix_overhead_component_ratio", "component"),
        stats_method=method,
        stats_on=on == 1,
        stats_cost_ns=None if cost_s is None else cost_s * NS,
        stats_cost_source=source,
        duty_ratio=_one(samples, "linnix_bpf_stats_duty_ratio"),
        rss_bytes=_one(samples, "linnix_exporter_resident_memory_bytes"),
    )


def header_from_tick(tick: Tick) -> Header:
    """The header of a tick read here: the fields figures.py serves for it (read_header
    of its /metrics gives the same, as the tests check), without rendering them."""
    from linnix_exporter.tick import PROGRAMS, SELF

    s, r, st = tick.snapshot, tick.rates, tick.snapshot.stats
    programs_ok = r is not None and tick.rate_ok(PROGRAMS)
    ratios_ok = r is not None and tick.rate_ok(PROGRAMS, SELF)
    return Header(
        tick_time=s.wall_time,
        interval_seconds=r.interval_seconds if r is not None else None,
        online_cpus=s.online_cpus,
        programs=len(s.programs),
        unlisted=tick.programs.rest_keys,
        bpf_cpu_ratio=r.bpf_cpu_ratio if r is not None and programs_ok else None,
        bpf_budget_ratio=tick.bpf_budget_ratio,
        overhead_ratio=r.overhead_ratio if r is not None and ratios_ok else None,
        overhead_budget_ratio=tick.budget_ratio,
        components=r.component_ratios() if r is not None and ratios_ok else {},
        stats_method="sampled" if st.mode == "sampled" else st.method,
        stats_on=st.enabled,
        stats_cost_ns=st.run_cost_ns,
        stats_cost_source=st.cost_source,
        duty_ratio=r.duty_ratio if r is not None else None,
        rss_bytes=s.self_usage.rss_bytes if tick.ok(SELF) else None,
    )


def view_of_tick(tick: Tick) -> View:
    r = tick.rates
    hooks = None
    if r is not None and r.hooks_ns is not None:  # the hooks collector read
        hooks = {i: ns / NS for i, ns in r.program_hooks_ns.items()}
    rows = build_rows(tick.snapshot, r, hooks)
    return View(header_from_tick(tick), rows, tick.rates)


def _owners(samples: Samples) -> dict[int, tuple[Owner, ...]]:
    held: dict[int, list[Owner]] = {}
    for labels, _ in samples.get("linnix_bpf_program_owner_info", ()):
        try:
            prog_id, pid = int(labels["id"]), int(labels["owner_pid"])
        except (KeyError, ValueError):
            continue
        held.setdefault(prog_id, []).append(
            Owner(
                pid,
                labels.get("owner_comm", ""),
                labels.get("container_id", ""),
                labels.get("namespace", ""),
                labels.get("pod", ""),
            )
        )
    # Lowest pid first: the holder a program is counted under (owners.owner_key).
    return {i: tuple(sorted(o, key=lambda x: x.pid)) for i, o in held.items()}


def read_snapshot(samples: Samples, on_seconds: float = 0.0) -> Snapshot:
    """The served programs as a Snapshot (the "[other]" series as one row with id
    OTHER_ID). Served metrics carry no load time: a program first seen in this tick
    gets rates from the next one (boottime is set past every load time, so
    rates.program_delta counts nothing for it rather than its whole history)."""
    t = _one(samples, "linnix_exporter_last_collect_timestamp_seconds") or 0.0
    cols: dict[tuple[str, ...], list[float]] = {}
    names = (
        "linnix_bpf_program_run_time_seconds_total",
        "linnix_bpf_program_runs_total",
        "linnix_bpf_program_recursion_misses_total",
    )
    for i, name in enumerate(names):
        for labels, value in samples.get(name, ()):
            key = tuple(labels.get(k, "") for k in ("id", "name", "type", "tag", "ours"))
            cols.setdefault(key, [0.0, 0.0, 0.0])[i] = value
    owners = _owners(samples)
    programs = []
    for (sid, name, ptype, tag, ours), (rt, runs, misses) in cols.items():
        prog_id = OTHER_ID if name == OTHER and not sid else int(sid)
        programs.append(
            ProgramStat(
                id=prog_id,
                name=name,
                type=ptype,
                tag=tag,
                load_time_ns=0,
                run_time_ns=round(rt * NS),
                run_cnt=round(runs),
                recursion_misses=round(misses),
                ours=ours == "true",
                owners=owners.get(prog_id, ()),
            )
        )
    cpu = _by(samples, "linnix_exporter_cpu_seconds_total", "mode")
    return Snapshot(
        monotonic=t,
        wall_time=t,
        boottime_ns=1,
        online_cpus=int(_one(samples, "linnix_node_cpus") or 0),
        programs=tuple(programs),
        self_usage=SelfUsage(
            cpu.get("user", 0.0),
            cpu.get("system", 0.0),
            int(_one(samples, "linnix_exporter_resident_memory_bytes") or 0),
        ),
        stats=_stats_state(samples, on_seconds),
        probes=None,
    )


def hook_seconds_served(samples: Samples) -> dict[int, float] | None:
    """Each listed program's linnix_bpf_program_hook_seconds_total by id; None when the
    exporter prices no hooks (the node total, served whenever it does, is absent)."""
    if "linnix_bpf_hook_seconds_total" not in samples:
        return None
    out = {}
    for labels, value in samples.get("linnix_bpf_program_hook_seconds_total", ()):
        with contextlib.suppress(KeyError, ValueError):
            out[int(labels["id"])] = value
    return out


def hook_deltas(
    prev: Mapping[int, float] | None, cur: Mapping[int, float] | None
) -> dict[int, float | None] | None:
    """Hook seconds over the interval by program id from two readings of the served
    counters. A program with a counter now but none before gets None (it may have been
    counting unlisted: its whole history is not this interval's); one with no counter
    is not attached (absent from the result: 0)."""
    if prev is None or cur is None:
        return None
    return {i: v - prev[i] if i in prev else None for i, v in cur.items()}


def build_rows(
    snap: Snapshot, rates: Rates | None, hooks: Mapping[int, float | None] | None = None
) -> tuple[Row, ...]:
    """`hooks`: what reaching each program through its hooks cost over the interval, in
    seconds, already for the whole interval (rates.hooks_over scales sampled runs), by
    program id; a program missing is attached nowhere priced (0), None: unknown; the
    mapping None: hooks not priced, WHOLE% left empty."""
    rows = []
    for p in snap.programs:
        comm, namespace, pod = owner_key(p)
        row = Row(
            prog_id=None if p.id == OTHER_ID else p.id,
            name=p.name,
            type=p.type,
            ours=p.ours,
            owner="" if p.id == OTHER_ID else comm,
            owner_pid=p.owners[0].pid if p.owners else None,
            pod=f"{namespace}/{pod}" if pod else "",
            core_ratio=None,
            node_ratio=None,
            runs_per_second=None,
            ns_per_run=None,
        )
        d = rates.programs.get(p.id) if rates is not None else None
        if rates is not None and d is not None:
            row = row._replace(
                core_ratio=rates.run_time_core_ratio(d.run_time_ns),
                node_ratio=rates.run_time_ratio(d.run_time_ns),
                runs_per_second=rates.run_rate(d.run_cnt),
                ns_per_run=d.run_time_ns / d.run_cnt if d.run_cnt else None,
            )
            hook = hooks.get(p.id, 0.0) if hooks is not None and p.id != OTHER_ID else None
            if hook is not None and row.core_ratio is not None:
                row = row._replace(whole_ratio=row.core_ratio + rates.core_ratio(hook))
        rows.append(row)
    return tuple(rows)


class Model:
    """Feeds in samples, gives the View: rates between the last two distinct ticks.

    A running exporter ticks at its own pace (on demand: when its newest tick is older
    than --collect.interval), so several refreshes may see one tick: the View stays
    the one computed for it. In sampled mode the rates divide by the time statistics
    were on; served figures give that as the duty ratio of the last interval, so the
    time on is accumulated from it (exact while every tick is seen)."""

    def __init__(self) -> None:
        self._prev: Snapshot | None = None
        self._view: View | None = None
        self._on_seconds = 0.0
        self._hooks: dict[int, float] | None = None  # the served hook counters of _prev

    def update(self, samples: Samples) -> View:
        header = read_header(samples)
        prev = self._prev
        if prev is not None and self._view is not None and header.tick_time == prev.wall_time:
            return self._view
        if prev is not None:
            duty = header.duty_ratio if header.duty_ratio is not None else 1.0
            self._on_seconds += duty * max(0.0, header.tick_time - prev.wall_time)
        snap = read_snapshot(samples, self._on_seconds)
        rates = compute_rates(prev, snap) if prev is not None else None
        hooks = hook_seconds_served(samples)
        deltas = hook_deltas(self._hooks, hooks)
        self._prev, self._hooks = snap, hooks
        rows = build_rows(snap, rates, deltas)
        if not header.unlisted:  # the exporter lists every program: no "[other]" row
            rows = tuple(r for r in rows if r.prog_id is not None)
        self._view = View(header, rows, rates)
        return self._view


# ---- what the keys do ---------------------------------------------------------------

# key -> (column, descending first); the screen and --help list them from here.
SORTS: dict[str, tuple[str, str]] = {
    "c": ("cpu", "run time share (CPU%), largest first"),
    "r": ("runs", "runs per second, most first"),
    "n": ("ns", "ns per run, slowest first"),
    "i": ("id", "program id"),
    "o": ("owner", "owner process, then CPU"),
}
KEYS_HELP = "c/r/n/i/o sort by CPU%, runs/s, ns/run, id, owner   / filter   Esc clear   q quit"


def _desc(v: float | None) -> float:
    return -v if v is not None else float("inf")


def _sort_key(column: str) -> Callable[[Row], Any]:
    if column == "runs":
        return lambda r: (_desc(r.runs_per_second), _desc(r.core_ratio))
    if column == "ns":
        return lambda r: (_desc(r.ns_per_run), _desc(r.core_ratio))
    if column == "id":
        return lambda r: r.prog_id
    if column == "owner":
        return lambda r: (r.owner, r.owner_pid or 0, _desc(r.core_ratio))
    return lambda r: (_desc(r.core_ratio), _desc(r.runs_per_second), r.prog_id)


def matches(row: Row, text: str) -> bool:
    """Case-insensitive substring of the program id, name, type, owner or pod."""
    needle = text.lower()
    hay = (str(row.prog_id), row.name, row.type, row.owner, row.pod)
    return any(needle in h.lower() for h in hay)


def arrange(rows: Sequence[Row], column: str = "cpu", text: str = "") -> list[Row]:
    """Rows filtered and sorted for the screen; the "[other]" row last (it is no
    program), and hidden while a filter is on (what it holds cannot be filtered)."""
    programs = [r for r in rows if r.prog_id is not None and (not text or matches(r, text))]
    programs.sort(key=_sort_key(column))
    if not text:
        programs += [r for r in rows if r.prog_id is None]
    return programs
