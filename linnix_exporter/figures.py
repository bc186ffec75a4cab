"""What the exporter reports: one catalogue of metric families and one function that
turns a Tick into figures. Every sink renders these figures and nothing else, so a
number pushed over OTLP is the number scraped from /metrics for the same tick, and the
two name sets (Prometheus and OpenTelemetry) are defined side by side, here only.

Values are already in base units (seconds, bytes, ratios 0..1): sinks never do math.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from linnix_exporter import __version__
from linnix_exporter.kernel.prog_table import run_time_of
from linnix_exporter.state import OWNERS, PROBES, PROGRAMS, SELF, Tick

NS = 1e9
OTHER = "[other]"
# Lifetime buckets: kernel slot i holds lifetimes in [2^i, 2^(i+1)) ns, so its upper
# bound is le = 2^(i+1) ns. Exported 2^17 ns (131 us) .. 2^42 ns (73 min); shorter
# lifetimes fold into the first bucket, longer ones only into +Inf.
LIFETIME_LE_EXPONENTS = range(17, 43)


@dataclass(frozen=True)
class Family:
    prom: str  # Prometheus name; counters end in _total
    otel: str | None  # OpenTelemetry name; None: not pushed (see `why_not_otel`)
    kind: str  # "counter" | "gauge" | "updown" | "histogram"
    unit: str  # UCUM unit for OTel ("s", "By", "1", "{run}")
    help: str
    labels: tuple[str, ...] = ()  # Prometheus label names
    attrs: tuple[str, ...] = ()  # OTel attribute names, same order as labels


_PROG = ("id", "name", "type", "tag", "ours")
_PROG_ATTRS = (
    "bpf.program.id",
    "bpf.program.name",
    "bpf.program.type",
    "bpf.program.tag",
    "linnix.ours",
)
_OWNER = ("owner_comm", "namespace", "pod")
_OWNER_ATTRS = ("process.command", "k8s.namespace.name", "k8s.pod.name")

F = Family
FAMILIES: dict[str, Family] = {
    f.prom: f
    for f in (
        F(
            "linnix_overhead_ratio",
            "linnix.overhead.ratio",
            "gauge",
            "1",
            "(our probes' kernel run time + exporter CPU + what the BPF statistics we turned "
            "on cost every program run) / (interval x online CPUs), over the last measured "
            "interval: the sum of linnix_overhead_component_ratio.",
        ),
        F(
            "linnix_overhead_component_ratio",
            "linnix.overhead.component.ratio",
            "gauge",
            "1",
            "One term of linnix_overhead_ratio as a share of the node: probes (our probes' "
            "kernel run time), exporter (our CPU), stats (runs of every program x the cost "
            "of statistics per run, while we hold them on; 0 if they were already on).",
            ("component",),
            ("linnix.overhead.component",),
        ),
        F(
            "linnix_overhead_core_ratio",
            "linnix.overhead.core_ratio",
            "gauge",
            "1",
            "The same overhead as a share of one core (can exceed 1).",
        ),
        F(
            "linnix_overhead_budget_ratio",
            "linnix.overhead.budget",
            "gauge",
            "1",
            "The overhead budget (--overhead-budget) as a share of the node.",
        ),
        F(
            "linnix_overhead_interval_seconds",
            "linnix.overhead.interval",
            "gauge",
            "s",
            "Measured length of the interval the ratios cover (monotonic clock).",
        ),
        F("linnix_node_cpus", "linnix.node.cpus", "gauge", "{cpu}", "Online CPUs of the node."),
        F(
            "linnix_probes_attached",
            "linnix.probes.attached",
            "gauge",
            "1",
            "1 if the Linnix probes are loaded and attached (checked against the kernel's "
            "program list); absent when they are disabled (--no-probes.enabled).",
        ),
        F(
            "linnix_probes_run_time_seconds_total",
            "linnix.probes.run_time",
            "counter",
            "s",
            "Kernel run time of the exporter's own probes since they were loaded.",
        ),
        F(
            "linnix_probes_cpu_ratio",
            "linnix.probes.cpu.ratio",
            "gauge",
            "1",
            "Kernel run time of our probes over the last interval as a share of the node.",
        ),
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
        F(
            "linnix_bpf_stats_duty_ratio",
            "linnix.bpf.stats.duty",
            "gauge",
            "1",
            "Share of the last interval BPF statistics were on (1 in always mode; in "
            "sampled mode run times and runs were counted only in this share).",
        ),
        F(
            "linnix_bpf_read_method",
            "linnix.bpf.read_method",
            "gauge",
            "1",
            "How every program's statistics are read: iterator (one BPF iterator read) or "
            "syscall (bpf() calls per program).",
            ("method",),
            ("linnix.read.method",),
        ),
        F(
            "linnix_bpf_programs",
            "linnix.bpf.programs",
            "gauge",
            "{program}",
            "BPF programs loaded on the node.",
        ),
        F(
            "linnix_bpf_unlisted_programs",
            "linnix.bpf.programs.unlisted",
            "gauge",
            "{program}",
            'Programs counted in the name="[other]" series instead of their own.',
        ),
        F(
            "linnix_bpf_program_run_time_seconds_total",
            "linnix.bpf.program.run_time",
            "counter",
            "s",
            "Kernel run time of a BPF program (run_time_ns; advances only while stats are on).",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_runs_total",
            "linnix.bpf.program.runs",
            "counter",
            "{run}",
            "Times a BPF program ran (run_cnt).",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_recursion_misses_total",
            "linnix.bpf.program.recursion_misses",
            "counter",
            "{miss}",
            "Times a BPF program was skipped because it was already running on that CPU.",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_cpu_ratio",
            "linnix.bpf.program.cpu.ratio",
            "gauge",
            "1",
            "Kernel run time of a BPF program over the last interval as a share of the node.",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_owner_info",
            "linnix.bpf.program.owner",
            "gauge",
            "1",
            "A process holding an fd (program or link) of a listed BPF program, with the "
            "container and Kubernetes pod it runs in (empty outside one).",
            ("id", "name", "owner_pid", "owner_comm", "container_id", "namespace", "pod"),
            (
                "bpf.program.id",
                "bpf.program.name",
                "process.pid",
                "process.command",
                "container.id",
                "k8s.namespace.name",
                "k8s.pod.name",
            ),
        ),
        F(
            "linnix_bpf_program_map_memory_bytes",
            "linnix.bpf.program.map.memory",
            "gauge",
            "By",
            "Kernel memory of a BPF program's maps (sum of their memlock; a map shared by "
            "several programs counts in each).",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_maps",
            "linnix.bpf.program.maps",
            "gauge",
            "{map}",
            "Maps a BPF program uses.",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_program_jited_bytes",
            "linnix.bpf.program.jited",
            "gauge",
            "By",
            "Size of a BPF program's JIT-compiled image.",
            _PROG,
            _PROG_ATTRS,
        ),
        F(
            "linnix_bpf_map_memory_bytes",
            "linnix.bpf.map.memory",
            "gauge",
            "By",
            "Kernel memory of every BPF map on the node, each counted once (memlock).",
        ),
        F("linnix_bpf_maps", "linnix.bpf.maps", "gauge", "{map}", "BPF maps on the node."),
        F(
            "linnix_bpf_jited_bytes",
            "linnix.bpf.jited",
            "gauge",
            "By",
            "JIT-compiled size of every BPF program on the node.",
        ),
        F(
            "linnix_bpf_jit_limit_bytes",
            "linnix.bpf.jit.limit",
            "gauge",
            "By",
            "net.core.bpf_jit_limit: JIT memory beyond it is refused to loaders without "
            "CAP_BPF/CAP_SYS_ADMIN.",
        ),
        F(
            "linnix_bpf_budget_ratio",
            "linnix.bpf.budget",
            "gauge",
            "1",
            "The node budget for all BPF programs (--bpf.node-budget) as a share of the node.",
        ),
        F(
            "linnix_bpf_owner_run_time_seconds_total",
            "linnix.bpf.owner.run_time",
            "counter",
            "s",
            "Kernel run time of the BPF programs of one owner (each program counted once, "
            "under its lowest-pid holder; owner_comm=[none]: held by no process).",
            _OWNER,
            _OWNER_ATTRS,
        ),
        F(
            "linnix_bpf_owner_cpu_ratio",
            "linnix.bpf.owner.cpu.ratio",
            "gauge",
            "1",
            "Kernel run time of one owner's BPF programs over the last interval as a share "
            "of the node.",
            _OWNER,
            _OWNER_ATTRS,
        ),
        F(
            "linnix_bpf_owner_map_memory_bytes",
            "linnix.bpf.owner.map.memory",
            "gauge",
            "By",
            "Kernel memory of the maps of one owner's BPF programs (each map once per owner).",
            _OWNER,
            _OWNER_ATTRS,
        ),
        F(
            "linnix_bpf_owner_jited_bytes",
            "linnix.bpf.owner.jited",
            "gauge",
            "By",
            "JIT-compiled size of one owner's BPF programs.",
            _OWNER,
            _OWNER_ATTRS,
        ),
        F(
            "linnix_bpf_run_time_seconds_total",
            "linnix.bpf.run_time",
            "counter",
            "s",
            "Kernel run time of all BPF programs on the node since the exporter started.",
        ),
        F(
            "linnix_bpf_runs_total",
            "linnix.bpf.runs",
            "counter",
            "{run}",
            "Runs of all BPF programs on the node since the exporter started.",
        ),
        F(
            "linnix_bpf_cpu_ratio",
            "linnix.bpf.cpu.ratio",
            "gauge",
            "1",
            "Kernel run time of all BPF programs over the last interval as a share of the node.",
        ),
        F(
            "linnix_process_forks_total",
            "linnix.process.forks",
            "counter",
            "{task}",
            "Tasks created (sched_process_fork; threads included).",
        ),
        F(
            "linnix_process_execs_total",
            "linnix.process.execs",
            "counter",
            "{exec}",
            "Successful execs (sched_process_exec).",
        ),
        F(
            "linnix_process_exits_total",
            "linnix.process.exits",
            "counter",
            "{task}",
            "Tasks that exited (sched_process_exit; threads included).",
        ),
        F(
            "linnix_process_comm_forks_total",
            "linnix.process.comm.forks",
            "counter",
            "{task}",
            "Forks by the forking task's command name.",
            ("comm",),
            ("process.command",),
        ),
        F(
            "linnix_process_comm_execs_total",
            "linnix.process.comm.execs",
            "counter",
            "{exec}",
            "Execs by the new command name.",
            ("comm",),
            ("process.command",),
        ),
        F(
            "linnix_process_comm_exits_total",
            "linnix.process.comm.exits",
            "counter",
            "{task}",
            "Exits by the exiting task's command name.",
            ("comm",),
            ("process.command",),
        ),
        F(
            "linnix_exited_task_cpu_seconds_total",
            "linnix.process.exited.cpu.time",
            "counter",
            "s",
            "CPU time (sum_exec_runtime) of tasks that exited, by command name: catches "
            "short-lived processes that /proc polling misses.",
            ("comm",),
            ("process.command",),
        ),
        F(
            "linnix_process_unlisted_comms",
            "linnix.process.comms.unlisted",
            "gauge",
            "{comm}",
            'Command names counted in comm="[other]" instead of their own series.',
        ),
        F(
            "linnix_process_lifetime_seconds",
            "linnix.process.lifetime",
            "histogram",
            "s",
            "Lifetime of processes (fork to exit of the thread-group leader), log2 buckets.",
        ),
        F(
            "linnix_exporter_cpu_seconds_total",
            "process.cpu.time",
            "counter",
            "s",
            "CPU time of the exporter, including helper processes it started and reaped.",
            ("mode",),
            ("cpu.mode",),
        ),
        F(
            "linnix_exporter_cpu_ratio",
            "process.cpu.utilization",
            "gauge",
            "1",
            "Exporter CPU over the last interval as a share of the node (all CPUs).",
        ),
        F(
            "linnix_exporter_resident_memory_bytes",
            "process.memory.usage",
            "updown",
            "By",
            "Resident set size of the exporter.",
        ),
        F(
            "linnix_exporter_collections_total",
            "linnix.exporter.collections",
            "counter",
            "{collection}",
            "Ticks completed (kernel reads).",
        ),
        F(
            "linnix_exporter_collect_errors_total",
            "linnix.exporter.collect.errors",
            "counter",
            "{error}",
            "Ticks whose kernel read failed.",
        ),
        F(
            "linnix_exporter_collect_duration_seconds",
            "linnix.exporter.collect.duration",
            "gauge",
            "s",
            "Wall time the last tick's reads took.",
        ),
        F(
            "linnix_exporter_last_collect_timestamp_seconds",
            None,
            "gauge",
            "s",
            "Unix time of the last tick.",
        ),
        F(
            "linnix_exporter_collector_success",
            "linnix.exporter.collector.success",
            "gauge",
            "1",
            "1 if the collector's read succeeded at the last tick (probes, programs, owners, "
            "self); a failed collector's figures are left out, the others are served.",
            ("collector",),
            ("linnix.collector",),
        ),
        F(
            "linnix_exporter_collector_duration_seconds",
            "linnix.exporter.collector.duration",
            "gauge",
            "s",
            "Wall time of the collector's read at the last tick.",
            ("collector",),
            ("linnix.collector",),
        ),
        F(
            "linnix_exporter_otlp_exports_total",
            None,
            "counter",
            "{export}",
            "OTLP pushes by result (ok: the collector accepted it; failed: refused, "
            "unreachable or timed out). Present only when OTLP is on.",
            ("result",),
        ),
        F(
            "linnix_exporter_otlp_last_success_timestamp_seconds",
            None,
            "gauge",
            "s",
            "Unix time of the last push the collector accepted (0: none yet).",
        ),
        F(
            "linnix_exporter_build_info",
            None,
            "gauge",
            "1",
            "Version of the exporter.",
            ("version", "python_version"),
        ),
    )
}

# Why two families are not pushed: OTLP data points carry their own timestamps, and
# service.version on the resource carries the build.
NOT_PUSHED = {
    "linnix_exporter_last_collect_timestamp_seconds": "OTLP data points carry timestamps",
    "linnix_exporter_build_info": "service.version on the OTLP resource",
    "linnix_exporter_otlp_exports_total": "describes the push itself: scrape it",
    "linnix_exporter_otlp_last_success_timestamp_seconds": "describes the push itself: scrape it",
}


class PushStatus(NamedTuple):
    """The OTLP sink's own record, for /metrics (a failing push cannot report itself)."""

    ok: int
    failed: int
    last_ok_wall_time: float  # 0.0 until the first accepted push


@dataclass(frozen=True)
class Figure:
    family: Family
    labels: tuple[str, ...]
    value: float
    # CLOCK_BOOTTIME ns when this series began counting, for counters that count from
    # before the exporter started (a program's since its load); 0: since our start.
    since_boot_ns: int = 0


@dataclass(frozen=True)
class HistogramFigure:
    family: Family
    buckets: tuple[tuple[float, float], ...]  # (upper bound in s, cumulative count); +Inf last
    count: float
    sum: float


def lifetime_buckets(slots: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """Cumulative (le seconds, count) pairs from the kernel's log2 slots."""
    out = [((2**exp) / NS, float(sum(slots[:exp]))) for exp in LIFETIME_LE_EXPONENTS]
    out.append((float("inf"), float(sum(slots))))
    return tuple(out)


def _memory_figures(tick: Tick, fig: Callable[..., Figure]) -> Iterator[Figure]:
    """Node memory, and the "[other]" program row's (its programs' sums)."""
    m = tick.snapshot.memory
    if m is None:  # not read yet, or the read failed: unknown, not zero
        return
    # "[other]" = the node's sums over programs minus the listed ones (a short loop:
    # with 1,000 programs loaded, summing the unlisted ones would run every tick).
    listed = [tick.program_by_key[k] for k in tick.programs.listed]
    other = ("", OTHER, "", "", "false")
    mem = m.programs_map_memory_bytes - sum(p.map_memory_bytes for p in listed)
    yield fig("linnix_bpf_program_map_memory_bytes", mem, *other)
    yield fig(
        "linnix_bpf_program_maps", m.programs_maps - sum(len(p.map_ids) for p in listed), *other
    )
    yield fig(
        "linnix_bpf_program_jited_bytes", m.jited_bytes - sum(p.jited_bytes for p in listed), *other
    )
    yield fig("linnix_bpf_map_memory_bytes", m.map_memory_bytes)
    yield fig("linnix_bpf_maps", m.maps)
    yield fig("linnix_bpf_jited_bytes", m.jited_bytes)
    if m.jit_limit_bytes is not None:
        yield fig("linnix_bpf_jit_limit_bytes", m.jit_limit_bytes)


def _owner_figures(tick: Tick, fig: Callable[..., Figure]) -> Iterator[Figure]:
    """Programs rolled up by owner (owners.py), listed owners then "[other]"."""
    o, r = tick.owners, tick.rates
    if o is None:
        return
    rows = [(k, o.run_time_ns[k], o.interval_ns.get(k, 0)) for k in sorted(o.run_time_ns)]
    rows.append(((OTHER, "", ""), o.rest_run_time_ns, o.rest_interval_ns))
    for key, total_ns, interval_ns in rows:
        yield fig("linnix_bpf_owner_run_time_seconds_total", total_ns / NS, *key)
        if r is not None:
            yield fig("linnix_bpf_owner_cpu_ratio", r.node_ratio(interval_ns / NS), *key)
    if tick.snapshot.memory is None:
        return
    for key in sorted(o.run_time_ns):
        yield fig("linnix_bpf_owner_map_memory_bytes", o.map_memory_bytes.get(key, 0), *key)
        yield fig("linnix_bpf_owner_jited_bytes", o.jited_bytes.get(key, 0), *key)
    yield fig("linnix_bpf_owner_map_memory_bytes", o.rest_map_memory_bytes, OTHER, "", "")
    yield fig("linnix_bpf_owner_jited_bytes", o.rest_jited_bytes, OTHER, "", "")


def figures(
    tick: Tick | None, errors_total: int, push: PushStatus | None = None
) -> Iterator[Figure | HistogramFigure]:
    """Every figure of one tick, in catalogue units. Nothing but the arguments is read;
    `push` is the OTLP sink's status (None when OTLP is off)."""

    def fig(prom: str, value: float, *labels: str, since_boot_ns: int = 0) -> Figure:
        return Figure(FAMILIES[prom], labels, float(value), since_boot_ns)

    yield fig("linnix_exporter_build_info", 1, __version__, platform.python_version())
    yield fig("linnix_exporter_collect_errors_total", errors_total)
    if push is not None:
        yield fig("linnix_exporter_otlp_exports_total", push.ok, "ok")
        yield fig("linnix_exporter_otlp_exports_total", push.failed, "failed")
        yield fig("linnix_exporter_otlp_last_success_timestamp_seconds", push.last_ok_wall_time)
    if tick is None:
        return
    s, r = tick.snapshot, tick.rates
    yield fig("linnix_exporter_collections_total", tick.seq)
    yield fig("linnix_exporter_collect_duration_seconds", tick.collect_seconds)
    yield fig("linnix_exporter_last_collect_timestamp_seconds", s.wall_time)
    for name, ok in tick.collector_success.items():
        yield fig("linnix_exporter_collector_success", 1 if ok else 0, name)
    for name, seconds in tick.collector_seconds.items():
        yield fig("linnix_exporter_collector_duration_seconds", seconds, name)
    # A failed collector's figures are left out (its part of the snapshot is the last
    # good one, carried for the rates); ratios also wait one more tick (Tick.unreliable).
    if tick.ok(SELF):
        yield fig("linnix_exporter_cpu_seconds_total", s.self_usage.user_seconds, "user")
        yield fig("linnix_exporter_cpu_seconds_total", s.self_usage.system_seconds, "system")
        yield fig("linnix_exporter_resident_memory_bytes", s.self_usage.rss_bytes)
    yield fig("linnix_node_cpus", s.online_cpus)

    st = s.stats
    yield fig(
        "linnix_bpf_stats_enabled",
        1 if st.enabled else 0,
        "sampled" if st.mode == "sampled" else st.method,
    )
    if st.run_cost_ns is not None:
        yield fig("linnix_bpf_stats_run_cost_seconds", st.run_cost_ns / NS, st.cost_source)
    yield fig("linnix_bpf_stats_overhead_seconds_total", tick.stats_overhead_seconds_total)
    yield fig("linnix_bpf_read_method", 1, tick.read_method)
    if tick.ok(PROGRAMS):
        yield from _program_figures(tick, fig)
    ratios_ok = tick.rate_ok(PROGRAMS, SELF)
    yield fig("linnix_overhead_budget_ratio", tick.budget_ratio)
    if r is not None:
        if tick.rate_ok(SELF):
            yield fig("linnix_exporter_cpu_ratio", r.exporter_cpu_ratio)
        if tick.rate_ok(PROGRAMS):
            yield fig("linnix_bpf_cpu_ratio", r.bpf_cpu_ratio)
            yield fig("linnix_probes_cpu_ratio", r.probes_cpu_ratio)
        if ratios_ok:
            yield fig("linnix_overhead_ratio", r.overhead_ratio)
            for component, ratio in r.component_ratios().items():
                yield fig("linnix_overhead_component_ratio", ratio, component)
            yield fig("linnix_overhead_core_ratio", r.overhead_core_ratio)
        yield fig("linnix_bpf_stats_duty_ratio", r.duty_ratio)
        yield fig("linnix_overhead_interval_seconds", r.interval_seconds)

    pc = s.probes
    if pc is None or not tick.ok(PROBES):
        return
    yield fig("linnix_process_forks_total", pc.forks)
    yield fig("linnix_process_execs_total", pc.execs)
    yield fig("linnix_process_exits_total", pc.exits)
    if tick.comms is not None:
        for comm, (forks, execs, exits, cpu_ns) in [
            *sorted(tick.comms.listed.items()),
            (OTHER, tick.comms.rest),
        ]:
            yield fig("linnix_process_comm_forks_total", forks, comm)
            yield fig("linnix_process_comm_execs_total", execs, comm)
            yield fig("linnix_process_comm_exits_total", exits, comm)
            yield fig("linnix_exited_task_cpu_seconds_total", cpu_ns / NS, comm)
        yield fig("linnix_process_unlisted_comms", tick.comms.rest_keys)
    yield HistogramFigure(
        FAMILIES["linnix_process_lifetime_seconds"],
        lifetime_buckets(pc.lifetime_slots),
        float(pc.lifetime_count),
        pc.lifetime_sum_ns / NS,
    )


def _program_figures(tick: Tick, fig: Callable[..., Figure]) -> Iterator[Figure]:
    """The "programs" collector's figures (and owners', which label its programs)."""
    s, r = tick.snapshot, tick.rates
    rate_ok = tick.rate_ok(PROGRAMS)
    owners_ok = tick.ok(OWNERS)
    yield fig("linnix_bpf_programs", len(s.programs))
    yield fig("linnix_bpf_unlisted_programs", tick.programs.rest_keys)
    listed_ns = 0
    for key, (rt, cnt, rm) in sorted(tick.programs.listed.items()):
        p = tick.program_by_key[key]
        labels = (str(p.id), p.name, p.type, p.tag, "true" if p.ours else "false")
        # Each counts from the program's load (its first delta is its whole value).
        loaded = p.load_time_ns
        yield fig(
            "linnix_bpf_program_run_time_seconds_total", rt / NS, *labels, since_boot_ns=loaded
        )
        yield fig("linnix_bpf_program_runs_total", cnt, *labels, since_boot_ns=loaded)
        yield fig("linnix_bpf_program_recursion_misses_total", rm, *labels, since_boot_ns=loaded)
        if r is not None and rate_ok:
            d = r.programs.get(p.id)
            listed_ns += d.run_time_ns if d else 0
            yield fig("linnix_bpf_program_cpu_ratio", r.program_cpu_ratio(p.id), *labels)
        if s.memory is not None:
            yield fig("linnix_bpf_program_map_memory_bytes", p.map_memory_bytes, *labels)
            yield fig("linnix_bpf_program_maps", len(p.map_ids), *labels)
            yield fig("linnix_bpf_program_jited_bytes", p.jited_bytes, *labels)
        for o in p.owners if owners_ok else ():
            yield fig(
                "linnix_bpf_program_owner_info",
                1,
                str(p.id),
                p.name,
                str(o.pid),
                o.comm,
                o.container_id,
                o.namespace,
                o.pod,
            )
    other = ("", OTHER, "", "", "false")
    rt, cnt, rm = tick.programs.rest
    yield fig("linnix_bpf_program_run_time_seconds_total", rt / NS, *other)
    yield fig("linnix_bpf_program_runs_total", cnt, *other)
    yield fig("linnix_bpf_program_recursion_misses_total", rm, *other)
    if r is not None and rate_ok:
        rest_ns = max(0, r.bpf_run_time_ns - listed_ns)
        yield fig("linnix_bpf_program_cpu_ratio", r.run_time_ratio(rest_ns), *other)
    yield from _memory_figures(tick, fig)
    if owners_ok:
        yield from _owner_figures(tick, fig)
    yield fig("linnix_bpf_budget_ratio", tick.bpf_budget_ratio)
    yield fig("linnix_bpf_run_time_seconds_total", tick.bpf_run_time_ns_total / NS)
    yield fig("linnix_bpf_runs_total", tick.bpf_runs_total)
    probes_ns = run_time_of(s.programs, s.probe_program_ids)
    yield fig("linnix_probes_run_time_seconds_total", probes_ns / NS)
    # Only when the probes are enabled (a load failure stops start-up, so no probe ids
    # means disabled on purpose): a node run without them must not read as broken.
    if s.probe_program_ids:
        yield fig("linnix_probes_attached", 1 if tick.probes_attached else 0)
