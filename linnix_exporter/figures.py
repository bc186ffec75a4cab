"""What the exporter reports: one catalogue of metric families and one function that
turns a Tick into figures. Every sink renders these figures and nothing else, so a
number pushed over OTLP is the number scraped from /metrics for the same tick, and the
two name sets (Prometheus and OpenTelemetry) are defined side by side, here only.

Values are already in base units (seconds, bytes, ratios 0..1): sinks never do math.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from linnix_exporter import __version__
from linnix_exporter.collectors import hooks, owners, probes, programs, self_usage, statistics
from linnix_exporter.collectors.probes import lifetime_buckets as lifetime_buckets
from linnix_exporter.families import F, Family, Figure, HistogramFigure, PushStatus
from linnix_exporter.tick import HOOKS, PROGRAMS, SELF, Tick

# Re-exported: the sinks and tests name them from here.
__all__ = [
    "FAMILIES",
    "Family",
    "Figure",
    "HistogramFigure",
    "PushStatus",
    "figures",
    "lifetime_buckets",
]

CORE_FAMILIES = (
    F(
        "linnix_overhead_ratio",
        "linnix.overhead.ratio",
        "gauge",
        "1",
        "(our probes' kernel run time and hook cost + exporter CPU + what the BPF "
        "statistics we turned on cost every program run) / (interval x online CPUs), over "
        "the last measured interval: the sum of linnix_overhead_component_ratio.",
    ),
    F(
        "linnix_overhead_component_ratio",
        "linnix.overhead.component.ratio",
        "gauge",
        "1",
        "One term of linnix_overhead_ratio as a share of the node: probes (our probes' "
        "kernel run time, plus their hooks' cost with --collector.hooks), exporter (our "
        "CPU), stats (runs of every program x the cost of statistics per run, while we "
        "hold them on; 0 if they were already on).",
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
        "The overhead budget (--overhead.budget) as a share of the node.",
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
        "linnix_probes_cpu_ratio",
        "linnix.probes.cpu.ratio",
        "gauge",
        "1",
        "Kernel run time of our probes over the last interval as a share of the node.",
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
        "linnix_bpf_cpu_ratio",
        "linnix.bpf.cpu.ratio",
        "gauge",
        "1",
        "Kernel run time of all BPF programs over the last interval as a share of the node.",
    ),
    F(
        "linnix_bpf_cost_ratio",
        "linnix.bpf.cost.ratio",
        "gauge",
        "1",
        "The whole price of all BPF programs over the last interval as a share of the "
        "node: run time (linnix_bpf_cpu_ratio) + what reaching them through their hooks "
        "cost (with --collector.hooks) + what statistics cost their runs; the sum of "
        "linnix_bpf_cost_component_ratio.",
    ),
    F(
        "linnix_bpf_cost_component_ratio",
        "linnix.bpf.cost.component.ratio",
        "gauge",
        "1",
        "One component of linnix_bpf_cost_ratio as a share of the node: run_time (the "
        "kernel's run_time_ns), hooks (runs x calibrated hook cost; absent while the "
        "hooks collector is off), stats (every counted run x the cost of statistics, "
        "whoever holds them on).",
        ("component",),
        ("linnix.bpf.cost.component",),
    ),
    F(
        "linnix_exporter_cpu_ratio",
        "process.cpu.utilization",
        "gauge",
        "1",
        "Exporter CPU over the last interval as a share of the node (all CPUs).",
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

# The catalogue: the tick's own families, then each collector's (collectors/).
FAMILIES: dict[str, Family] = {
    f.prom: f
    for f in (
        *CORE_FAMILIES,
        *self_usage.FAMILIES,
        *statistics.FAMILIES,
        *programs.FAMILIES,
        *owners.FAMILIES,
        *hooks.FAMILIES,
        *probes.FAMILIES,
    )
}


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
    # A failed or disabled collector's figures are left out (its part of the snapshot
    # is the last good one, carried for the rates); ratios also wait one more tick
    # (Tick.unreliable). Each collector's figures come from its module (collectors/).
    yield from self_usage.figures(tick, fig)
    yield fig("linnix_node_cpus", s.online_cpus)
    yield from statistics.figures(tick, fig)
    yield from programs.figures(tick, fig)
    yield from hooks.figures(tick, fig)
    ratios_ok = tick.rate_ok(PROGRAMS, SELF)
    yield fig("linnix_overhead_budget_ratio", tick.budget_ratio)
    if r is not None:
        if tick.rate_ok(SELF):
            yield fig("linnix_exporter_cpu_ratio", r.exporter_cpu_ratio)
        if tick.rate_ok(PROGRAMS):
            yield fig("linnix_bpf_cpu_ratio", r.bpf_cpu_ratio)
            yield fig("linnix_probes_cpu_ratio", r.probes_cpu_ratio)
            # The whole price: with the hooks collector off, without its component
            # (unknown); on but unreliable this tick (failed now or before): not served.
            off = HOOKS in tick.disabled
            if off or (tick.rate_ok(HOOKS) and r.hooks_ns is not None):
                cost = r.cost_component_ratios()
                if off:
                    cost.pop("hooks", None)
                yield fig("linnix_bpf_cost_ratio", sum(cost.values()))
                for component, ratio in cost.items():
                    yield fig("linnix_bpf_cost_component_ratio", ratio, component)
        if ratios_ok:
            yield fig("linnix_overhead_ratio", r.overhead_ratio)
            for component, ratio in r.component_ratios().items():
                yield fig("linnix_overhead_component_ratio", ratio, component)
            yield fig("linnix_overhead_core_ratio", r.overhead_core_ratio)
        yield fig("linnix_bpf_stats_duty_ratio", r.duty_ratio)
        yield fig("linnix_overhead_interval_seconds", r.interval_seconds)
    yield from probes.figures(tick, fig)
