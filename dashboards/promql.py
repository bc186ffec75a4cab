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
