"""PromQL builders shared by the dashboards: every selector is filtered by the `$job` and
`$instance` variables, every rate window is Grafana's `$__rate_interval`."""

from __future__ import annotations

SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"


def sel(metric: str, extra: str = "") -> str:
    """`metric{job=~"$job", instance=~"$instance"[, extra]}`."""
    return metric + "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric: str, extra: str = "", window: str = RI) -> str:
    return f"rate({sel(metric, extra)}[{window}])"


def increase(metric: str, extra: str = "", window: str = "$__range") -> str:
    return f"increase({sel(metric, extra)}[{window}])"


def topk(expr: str) -> str:
    """The `$topn` largest series of `expr`."""
    return f"topk($topn, {expr})"


def by_node(expr: str, labels: str = "job, instance") -> str:
    """`expr` reduced to one series per node (max), with no `__name__`: instant tables of
    several such queries merge into one row per node."""
    return f"max by ({labels}) ({expr})"


def ns_per_run(extra: str = "") -> str:
    """Average kernel run time per run in ns; programs that did not run drop out."""
    rt = rate("linnix_bpf_program_run_time_seconds_total", extra)
    runs = rate("linnix_bpf_program_runs_total", extra)
    return f"{rt} / ({runs} > 0) * 1e9"


def budget_used() -> str:
    """Overhead / budget per node: over 1 the node breaks its budget."""
    return f"{sel('linnix_overhead_ratio')} / {sel('linnix_overhead_budget_ratio')}"


RUN_TIME = "linnix_bpf_program_run_time_seconds_total"
HOOK_TIME = "linnix_bpf_program_hook_seconds_total"
MULTIPLIER_UNIT = "suffix:x"  # Grafana's custom unit: 312 -> "312x"


def whole_price(extra: str = "") -> str:
    """A program's whole price per second, share of one core: its reported run time
    plus what reaching it through its hooks cost (--collector.hooks). Programs with no
    attachment found have no hook series and drop out."""
    return f"({rate(RUN_TIME, extra)} + {rate(HOOK_TIME, extra)})"


def whole_price_node(extra: str = "") -> str:
    """The same as a share of the node (like linnix_bpf_program_cpu_ratio)."""
    return f"{whole_price(extra)} / on (job, instance) group_left () {sel('linnix_node_cpus')}"


def multiplier(extra: str = "") -> str:
    """Whole price / reported run time per program: 1 when the hook costs nothing
    outside run_time_ns, ~200 for a trivial uprobe here. Programs that did not run drop
    out."""
    return f"{whole_price(extra)} / ({rate(RUN_TIME, extra)} > 0)"
