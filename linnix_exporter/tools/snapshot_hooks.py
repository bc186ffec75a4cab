"""The hook figures of a snapshot report (`--collector.hooks`): where each program is
attached, and its whole price over the window, its run time plus what reaching it
through its hooks cost (issue 19).

- the hook costs are calibrated once, before the window (kernel/hook_cost.py, as the
  daemon does at start-up; ~0.8 s of CPU here, stated in the report);
- attachments are read (kernel/hooks.all_hooks: bpf links and the perf events every
  process holds, as `bpftool link show` and `bpftool perf show` list them) at the start
  read, at each read where programs appeared, and at the end read; a program keeps every
  attachment seen, so one detached before the end is still priced for its runs;
- a program's hook time is its runs in the window x its price per run, by the daemon's
  rule (rates.hook_prices: runs split evenly over its attachments; an attachment of a
  kind with no calibrated cost makes the program "uncalibrated", its share priced 0).

The report part (`program_figures`, `totals`) is pure: unit tests feed it fixtures.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linnix_exporter.rates import HookPrices, Rates, hook_prices
from linnix_exporter.snapshot import NS, Hook, HookCost, Hooks


@dataclass
class HookWatch:
    """Attachments seen during the window, by program id."""

    scan: Callable[[], Iterable[Hook]]
    seen: dict[tuple[int, str, str], Hook] = field(default_factory=dict)

    def read(self) -> None:
        for h in self.scan():
            self.seen.setdefault((h.prog_id, h.hook, h.target), h)


@dataclass(frozen=True)
class HookWindow:
    """What the window's hook figures are built from."""

    attachments: tuple[Hook, ...]
    costs: tuple[HookCost, ...]
    calibration_cpu_seconds: float

    def prices(self) -> HookPrices:
        return hook_prices(Hooks(self.attachments, self.costs))

    def of(self, prog_id: int) -> list[Hook]:
        return sorted(h for h in self.attachments if h.prog_id == prog_id)


def _cpu_seconds() -> float:
    """Our CPU and our reaped children's (the calibration's trigger child)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def calibrate(
    run: Callable[[], tuple[HookCost, ...]] | None = None,
) -> tuple[tuple[HookCost, ...], float, str]:
    """(costs, CPU seconds it took, error): one calibration of every hook kind, with
    statistics off on entry (it switches them on for its body arms only). A failure
    (no BPF_ENABLE_STATS here, the trigger child did not start) gives no costs: every
    attached program is then uncalibrated, never priced at 0."""
    if run is None:
        from linnix_exporter.kernel.hook_cost import calibrate_now

        run = calibrate_now
    cpu0 = _cpu_seconds()
    try:
        costs, error = run(), ""
    except (OSError, RuntimeError) as e:
        costs, error = (), str(e)
    return costs, _cpu_seconds() - cpu0, error


def _pct_core(r: Rates, ns: float) -> float:
    return 100.0 * r.core_ratio(ns / NS) if r.interval_seconds > 0 else 0.0


def _pct_node(r: Rates, ns: float) -> float:
    ok = r.interval_seconds > 0 and r.online_cpus > 0
    return 100.0 * r.node_ratio(ns / NS) if ok else 0.0


def multiplier(runtime_ns: float, hook_ns: float) -> float | None:
    """Whole price / reported run time; None when the program did not run."""
    return (runtime_ns + hook_ns) / runtime_ns if runtime_ns > 0 else None


def program_figures(
    hooks: list[Hook], run_cnt: int, runtime_ns: int, prices: HookPrices, prog_id: int, r: Rates
) -> dict[str, Any]:
    """The per-program hook fields of the report."""
    hook_ns = run_cnt * prices.per_run_ns.get(prog_id, 0.0)
    return {
        "hooks": [{"hook": h.hook, "target": h.target} for h in hooks],
        "hook_ns": hook_ns,
        "hook_uncalibrated": prog_id in prices.uncalibrated,
        "whole_cpu_percent": _pct_core(r, runtime_ns + hook_ns),
        "hook_multiplier": multiplier(runtime_ns, hook_ns),
    }


def totals(
    w: HookWindow, programs: Mapping[str, Mapping[str, Any]], r: Rates, stats_overhead_ns: float
) -> dict[str, Any]:
    """The report's top-level "hooks" object, over the programs kept by the filters."""
    hook_ns = sum(float(p["hook_ns"]) for p in programs.values())
    runtime_ns = r.bpf_run_time_ns
    return {
        "costs": [
            {"hook": c.hook, "source": c.source, "cost_ns": c.cost_ns, "reason": c.reason}
            for c in w.costs
        ],
        "calibration_cpu_seconds": w.calibration_cpu_seconds,
        "uncalibrated_programs": sum(bool(p["hook_uncalibrated"]) for p in programs.values()),
        "total_hook_ns": hook_ns,
        "total_hook_node_cpu_percent": _pct_node(r, hook_ns),
        "total_whole_cpu_percent": _pct_core(r, runtime_ns + hook_ns),
        "total_hook_multiplier": multiplier(runtime_ns, hook_ns),
        # linnix_bpf_cost_ratio's figure for the window: bodies + hooks + statistics
        "cost_node_cpu_percent": _pct_node(r, runtime_ns + hook_ns + stats_overhead_ns),
    }
