"""Prometheus sink: a custom Collector that yields one Tick as metric families.

Nothing here reads the kernel or does arithmetic beyond unit conversion: the numbers
come from the Tick (state.py) and its Rates (rates.py), the same objects OTLP exports.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from linnix_exporter import __version__
from linnix_exporter.snapshot import LIFETIME_SLOTS
from linnix_exporter.state import Tick

NS = 1e9
OTHER = "[other]"
PROGRAM_LABELS = ["id", "name", "type", "tag", "ours"]
# Lifetime buckets exported: slot i holds lifetimes in [2^i, 2^(i+1)) ns, so its upper
# bound is le=2^(i+1) ns. 2^17 ns (131 us) .. 2^42 ns (73 min); finer or coarser slots
# fold into the first bucket or +Inf.
LIFETIME_LE_EXPONENTS = range(17, 43)


def lifetime_buckets(slots: tuple[int, ...]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs from the kernel's log2 slots."""
    out: list[tuple[str, float]] = []
    for exp in LIFETIME_LE_EXPONENTS:
        out.append((repr((2**exp) / NS), float(sum(slots[:exp]))))
    out.append(("+Inf", float(sum(slots))))
    return out


class TickCollector(Collector):
    def __init__(self, latest: Callable[[], Tick | None], errors: Callable[[], int]) -> None:
        self._latest = latest
        self._errors = errors

    def collect(self) -> Iterator[Metric]:
        tick = self._latest()  # read once: every family below comes from this tick
        info = GaugeMetricFamily(
            "linnix_exporter_build_info",
            "Version of the exporter.",
            labels=["version", "python_version"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield CounterMetricFamily(
            "linnix_exporter_collect_errors_total",
            "Ticks whose kernel read failed.",
            value=self._errors(),
        )
        if tick is None:
            return
        yield from _exporter(tick)
        yield from _bpf(tick)
        yield from _overhead(tick)
        yield from _process(tick)


def _exporter(t: Tick) -> Iterator[Metric]:
    s = t.snapshot
    yield CounterMetricFamily(
        "linnix_exporter_collections_total", "Ticks completed (kernel reads).", value=t.seq
    )
    yield GaugeMetricFamily(
        "linnix_exporter_collect_duration_seconds",
        "Wall time the last tick's reads took.",
        value=t.collect_seconds,
    )
    yield GaugeMetricFamily(
        "linnix_exporter_last_collect_timestamp_seconds",
        "Unix time of the last tick.",
        value=s.wall_time,
    )
    cpu = CounterMetricFamily(
        "linnix_exporter_cpu_seconds_total",
        "CPU time of the exporter, including helper processes it started and reaped.",
        labels=["mode"],
    )
    cpu.add_metric(["user"], s.self_usage.user_seconds)
    cpu.add_metric(["system"], s.self_usage.system_seconds)
    yield cpu
    yield GaugeMetricFamily(
        "linnix_exporter_resident_memory_bytes",
        "Resident set size of the exporter.",
        value=s.self_usage.rss_bytes,
    )
    yield GaugeMetricFamily("linnix_node_cpus", "Online CPUs of the node.", value=s.online_cpus)
    if t.rates:
        yield GaugeMetricFamily(
            "linnix_exporter_cpu_ratio",
            "Exporter CPU over the last interval as a share of the node (all CPUs).",
            value=t.rates.exporter_cpu_ratio,
        )


def _bpf(t: Tick) -> Iterator[Metric]:
    s = t.snapshot
    stats = GaugeMetricFamily(
        "linnix_bpf_stats_enabled",
        "1 if the kernel is accumulating BPF run-time statistics; method says how they "
        "were turned on (enable_stats_fd, sysctl, already_on, off).",
        labels=["method"],
    )
    stats.add_metric([s.stats.method], 1 if s.stats.enabled else 0)
    yield stats
    yield GaugeMetricFamily(
        "linnix_bpf_programs", "BPF programs loaded on the node.", value=len(s.programs)
    )
    yield GaugeMetricFamily(
        "linnix_bpf_unlisted_programs",
        'Programs counted in the name="[other]" series instead of their own.',
        value=t.programs.rest_keys,
    )

    run_time = CounterMetricFamily(
        "linnix_bpf_program_run_time_seconds_total",
        "Kernel run time of a BPF program (run_time_ns; advances only while stats are on).",
        labels=PROGRAM_LABELS,
    )
    runs = CounterMetricFamily(
        "linnix_bpf_program_runs_total", "Times a BPF program ran (run_cnt).", labels=PROGRAM_LABELS
    )
    misses = CounterMetricFamily(
        "linnix_bpf_program_recursion_misses_total",
        "Times a BPF program was skipped because it was already running on that CPU.",
        labels=PROGRAM_LABELS,
    )
    ratio = GaugeMetricFamily(
        "linnix_bpf_program_cpu_ratio",
        "Kernel run time of a BPF program over the last interval as a share of the node.",
        labels=PROGRAM_LABELS,
    )
    owner = GaugeMetricFamily(
        "linnix_bpf_program_owner_info",
        "A process holding an fd (program or link) of a listed BPF program.",
        labels=["id", "name", "owner_pid", "owner_comm"],
    )
    listed_ns = 0
    for key, (rt, cnt, rm) in sorted(t.programs.listed.items()):
        p = t.program_by_key[key]
        labels = [str(p.id), p.name, p.type, p.tag, "true" if p.ours else "false"]
        run_time.add_metric(labels, rt / NS)
        runs.add_metric(labels, cnt)
        misses.add_metric(labels, rm)
        if t.rates:
            d = t.rates.programs.get(p.id)
            listed_ns += d.run_time_ns if d else 0
            ratio.add_metric(labels, t.rates.program_cpu_ratio(p.id))
        for o in p.owners:
            owner.add_metric([str(p.id), p.name, str(o.pid), o.comm], 1)
    other = ["", OTHER, "", "", "false"]
    rt, cnt, rm = t.programs.rest
    run_time.add_metric(other, rt / NS)
    runs.add_metric(other, cnt)
    misses.add_metric(other, rm)
    if t.rates:
        ratio.add_metric(
            other, t.rates.node_ratio(max(0, t.rates.bpf_run_time_ns - listed_ns) / NS)
        )
    yield from (run_time, runs, misses, ratio, owner)

    yield CounterMetricFamily(
        "linnix_bpf_run_time_seconds_total",
        "Kernel run time of all BPF programs on the node since the exporter started.",
        value=t.bpf_run_time_ns_total / NS,
    )
    yield CounterMetricFamily(
        "linnix_bpf_runs_total",
        "Runs of all BPF programs on the node since the exporter started.",
        value=t.bpf_runs_total,
    )
    probes_ns = sum(p.run_time_ns for p in s.programs if p.ours)
    yield CounterMetricFamily(
        "linnix_probes_run_time_seconds_total",
        "Kernel run time of the exporter's own probes since they were loaded.",
        value=probes_ns / NS,
    )
    yield GaugeMetricFamily(
        "linnix_probes_attached",
        "1 if the Linnix probes are loaded and attached.",
        value=1 if t.probes_attached else 0,
    )
    if t.rates:
        yield GaugeMetricFamily(
            "linnix_bpf_cpu_ratio",
            "Kernel run time of all BPF programs over the last interval as a share of the node.",
            value=t.rates.bpf_cpu_ratio,
        )
        yield GaugeMetricFamily(
            "linnix_probes_cpu_ratio",
            "Kernel run time of our probes over the last interval as a share of the node.",
            value=t.rates.probes_cpu_ratio,
        )


def _overhead(t: Tick) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "linnix_overhead_budget_ratio",
        "The overhead budget (--overhead-budget) as a share of the node.",
        value=t.budget_ratio,
    )
    if t.rates is None:
        return
    yield GaugeMetricFamily(
        "linnix_overhead_ratio",
        "(our probes' kernel run time + exporter CPU) / (interval x online CPUs), over "
        "the last measured interval.",
        value=t.rates.overhead_ratio,
    )
    yield GaugeMetricFamily(
        "linnix_overhead_core_ratio",
        "The same overhead as a share of one core (can exceed 1).",
        value=t.rates.overhead_core_ratio,
    )
    yield GaugeMetricFamily(
        "linnix_overhead_interval_seconds",
        "Measured length of the interval the ratios cover (monotonic clock).",
        value=t.rates.interval_seconds,
    )


def _process(t: Tick) -> Iterator[Metric]:
    p = t.snapshot.probes
    if p is None:
        return
    for name, value, help_ in (
        ("forks", p.forks, "Tasks created (sched_process_fork; threads included)."),
        ("execs", p.execs, "Successful execs (sched_process_exec)."),
        ("exits", p.exits, "Tasks that exited (sched_process_exit; threads included)."),
    ):
        yield CounterMetricFamily(f"linnix_process_{name}_total", help_, value=value)
    if t.comms is not None:
        families = [
            CounterMetricFamily(
                "linnix_process_comm_forks_total",
                "Forks by the forking task's command name.",
                labels=["comm"],
            ),
            CounterMetricFamily(
                "linnix_process_comm_execs_total", "Execs by the new command name.", labels=["comm"]
            ),
            CounterMetricFamily(
                "linnix_process_comm_exits_total",
                "Exits by the exiting task's command name.",
                labels=["comm"],
            ),
            CounterMetricFamily(
                "linnix_exited_task_cpu_seconds_total",
                "CPU time (sum_exec_runtime) of tasks that exited, by command "
                "name: catches short-lived processes that /proc polling misses.",
                labels=["comm"],
            ),
        ]
        rows = [*sorted(t.comms.listed.items()), (OTHER, t.comms.rest)]
        for comm, vec in rows:
            for i, fam in enumerate(families):
                fam.add_metric([comm], vec[i] / NS if i == 3 else vec[i])
        yield from families
        yield GaugeMetricFamily(
            "linnix_process_unlisted_comms",
            'Command names counted in comm="[other]" instead of their own series.',
            value=t.comms.rest_keys,
        )
    assert len(p.lifetime_slots) == LIFETIME_SLOTS
    hist = HistogramMetricFamily(
        "linnix_process_lifetime_seconds",
        "Lifetime of processes (fork to exit of the thread-group leader), log2 buckets.",
    )
    hist.add_metric([], lifetime_buckets(p.lifetime_slots), sum_value=p.lifetime_sum_ns / NS)
    yield hist
