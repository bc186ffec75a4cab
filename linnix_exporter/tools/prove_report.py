"""The report of `linnix-exporter prove`: what a run was asked (Settings) and measured
(Run), the JSON report and its verdict (build_report), and the human text (format_report,
with the reading of the A/B rounds).

The verdict's exit codes are here because the report carries them: 0 pass, 1 fail,
3 cannot measure (usage errors, 2, are the command line's, in prove.py).
"""

from __future__ import annotations

import itertools
import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from linnix_exporter.errors import EXIT_CANNOT, EXIT_FAIL, EXIT_OK
from linnix_exporter.tools.prove_sample import (
    Sampler,
    Summary,
    interval_row,
    median,
    slowdown,
    summarize,
)

SCHEMA = "linnix-exporter/prove/v1"


# ---- the run: what was asked, what was measured ---------------------------------------


@dataclass(frozen=True)
class Settings:
    duration: float
    interval: float
    rates: tuple[float | None, ...]
    budget: float
    rounds: int
    ab_round_seconds: float
    ab_rate: float | None
    exporter_args: tuple[str, ...] = ()
    scrape_interval: float = 15.0


@dataclass
class Run:
    """Everything measured so far; the report is built from it even when interrupted."""

    settings: Settings
    cpus: int = 0
    clk_tck: int = 100
    exporter: dict[str, Any] = field(default_factory=dict)
    sampler: Sampler | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)
    ab_rounds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cannot: str | None = None
    interrupted: str | None = None


def intervals(run: Run) -> list[dict[str, Any]]:
    s = run.sampler
    if s is None:
        return []
    phase_samples = [x for x in s.samples if x.phase != "ab"]
    return [
        interval_row(a, b, s.probes, s.cpus, s.clk_tck)
        for a, b in itertools.pairwise(phase_samples)
    ]


# ---- the report -----------------------------------------------------------------------


def build_report(run: Run) -> dict[str, Any]:
    from linnix_exporter import __version__

    rows = intervals(run)
    cpus = run.cpus or 1
    summary = summarize(rows, cpus) if rows else None
    phases = []
    for ph in run.phases:
        mine = [r for r in rows if r["phase"] == ph["rate"]]
        sm = summarize(mine, cpus) if mine else None
        phases.append({**ph, "summary": _summary_json(sm)})
    a = [r["throughput_per_second"] for r in run.ab_rounds if not r["exporter"]]
    b = [r["throughput_per_second"] for r in run.ab_rounds if r["exporter"]]
    acc = [r["accounted_node_ratio"] for r in run.ab_rounds if "accounted_node_ratio" in r]
    busy_a = [r["node_busy_ratio"] for r in run.ab_rounds if not r["exporter"]]
    busy_b = [r["node_busy_ratio"] for r in run.ab_rounds if r["exporter"]]
    ab = {
        "rate": "max" if run.settings.ab_rate is None else run.settings.ab_rate,
        "round_seconds": run.settings.ab_round_seconds,
        "rounds": run.ab_rounds,
        "median_a": median(a),
        "median_b": median(b),
        "range_a": [min(a), max(a)] if a else None,
        "range_b": [min(b), max(b)] if b else None,
        "slowdown": slowdown(a, b) if a and b else math.nan,
        "accounted_node_ratio_b": median(acc),
        "node_busy_median_a": median(busy_a),
        "node_busy_median_b": median(busy_b),
    }
    ab["reading"] = ab_reading(ab)
    # Interrupted first: a Ctrl-C on a terminal also stops the exporter (same process
    # group), which the sampler then reports as gone.
    if run.interrupted is not None:
        status = "interrupted"
        code = 128 + (signal.SIGTERM if run.interrupted == "SIGTERM" else signal.SIGINT)
    elif run.cannot is not None or summary is None:
        status, code = "cannot_measure", EXIT_CANNOT
    elif summary.total_node <= run.settings.budget:
        status, code = "pass", EXIT_OK
    else:
        status, code = "fail", EXIT_FAIL
    s = run.settings
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "version": __version__,
        "host": {"online_cpus": run.cpus, "clk_tck": run.clk_tck, "kernel": os.uname().release},
        "settings": {
            "duration_seconds": s.duration,
            "interval_seconds": s.interval,
            "rates": [r if r is not None else "max" for r in s.rates],
            "budget_ratio": s.budget,
            "rounds": s.rounds,
            "ab_round_seconds": s.ab_round_seconds,
            "ab_rate": s.ab_rate if s.ab_rate is not None else "max",
            "exporter_args": list(s.exporter_args),
            "scrape_interval_seconds": s.scrape_interval,
        },
        "exporter": run.exporter,
        "samples": [x.to_json(run.clk_tck) for x in run.sampler.samples if x.phase != "ab"]
        if run.sampler
        else [],
        "intervals": rows,
        "phases": phases,
        "summary": _summary_json(summary),
        "ab": ab,
        "notes": run.notes,
        "verdict": {
            "status": status,
            "rule": "time-weighted mean of (probes' kernel run time + exporter CPU) / "
            "(time x online CPUs) over the storm <= budget",
            "budget_ratio": s.budget,
            "mean_node_ratio": summary.total_node if summary else None,
            "peak_node_ratio": summary.peak_node if summary else None,
            "reason": run.interrupted or run.cannot,
        },
        "exit_code": code,
    }
    return report


def _summary_json(sm: Summary | None) -> dict[str, Any] | None:
    if sm is None:
        return None
    return {
        "seconds": sm.seconds,
        "probes_run_time_ns": sm.probes_run_time_ns,
        "exporter_cpu_seconds": sm.exporter_cpu_seconds,
        "probes_node_ratio": sm.probes_node,
        "exporter_node_ratio": sm.exporter_node,
        "stats_node_ratio": sm.stats_node,
        "total_node_ratio": sm.total_node,
        "total_core_ratio": sm.total_core,
        "p95_node_ratio": sm.p95_node,
        "peak_node_ratio": sm.peak_node,
        "rss_max_bytes": sm.rss_max,
    }


def json_safe(obj: Any) -> Any:
    """NaN/inf (no figure, e.g. no A rounds) become null: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def pct(ratio: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(ratio) else f"{ratio * 100:.{digits}f}%"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_report(rep: dict[str, Any]) -> str:
    """The human report: table, results per rate, A/B, verdict."""
    out: list[str] = []
    w = out.append
    exp = rep["exporter"]
    cpus = rep["host"]["online_cpus"]
    budget = rep["settings"]["budget_ratio"]
    ids = ",".join(str(p["id"]) for p in exp.get("probe_programs", []))
    w(
        f"exporter pid {exp.get('pid', '?')}, probes {ids or '-'} "
        f"(stats iterator {exp.get('excluded_program_ids', [])} left out: its time is in "
        f"the exporter's CPU); {cpus} online CPUs; budget {pct(budget, 2)} of the node"
    )
    w("")
    w("Time(s) |  rate | probes kernel % node | exporter CPU % node | stats % node | "
      "total % node | total % core |       RSS")  # fmt: skip
    w("--------|-------|----------------------|---------------------|--------------|"
      "--------------|--------------|----------")  # fmt: skip
    samples = rep["samples"]
    t0 = samples[0]["monotonic"] if samples else 0.0
    for r in rep["intervals"]:
        w(
            f"{r['t'] - t0:7.1f} | {r['phase']:>5} | {pct(r['probes_node_ratio']):>20} | "
            f"{pct(r['exporter_node_ratio']):>19} | "
            f"{pct(r.get('stats_node_ratio', 0.0)):>12} | {pct(r['total_node_ratio']):>12} | "
            f"{pct(r['total_core_ratio']):>12} | {_mib(r['rss_bytes']):>9}"
        )
    tick = 1 / rep["host"]["clk_tck"]
    w(
        f"(exporter CPU is read in {tick * 1000:.0f} ms ticks: one tick in a "
        f"{rep['settings']['interval_seconds']:g} s interval is "
        f"{pct(tick / rep['settings']['interval_seconds'] / max(cpus, 1), 2)} of the node; "
        "and it collects every --collect.interval: read the means, not single rows)"
    )
    every = rep["settings"].get("scrape_interval_seconds", 0)
    if every:
        errors = exp.get("scrape_errors", [])
        w(
            f"(/metrics scraped every {every:g} s like Prometheus would: "
            f"{exp.get('scrapes', 0)} scrapes, {len(errors)} failed"
            + (f", first: {errors[0]}" if errors else "")
            + ")"
        )
    w("")
    w("RESULTS (mean = time-weighted over the storm)")
    w("   rate | achieved/s | fork probe runs | probes % node | exporter % node | "
      "stats % node | total mean | total p95 | total peak")  # fmt: skip
    for ph in rep["phases"]:
        sm = ph.get("summary") or {}
        ach = ph.get("achieved_per_second")
        w(
            f"  {ph['rate']:>5} | {'n/a' if ach is None else f'{ach:.0f}':>10} | "
            f"{ph.get('fork_runs', 0):>15} | {pct(sm.get('probes_node_ratio', math.nan)):>13} | "
            f"{pct(sm.get('exporter_node_ratio', math.nan)):>15} | "
            f"{pct(sm.get('stats_node_ratio', math.nan)):>12} | "
            f"{pct(sm.get('total_node_ratio', math.nan)):>10} | "
            f"{pct(sm.get('p95_node_ratio', math.nan)):>9} | "
            f"{pct(sm.get('peak_node_ratio', math.nan)):>10}"
        )
    sm = rep["summary"]
    if sm:
        w(
            f"  all: probes {sm['probes_run_time_ns'] / 1e6:.1f} ms kernel + exporter "
            f"{sm['exporter_cpu_seconds']:.2f} s CPU + statistics "
            f"{pct(sm.get('stats_node_ratio', 0.0), 3)} of the node over {sm['seconds']:.1f} s = "
            f"{pct(sm['total_node_ratio'])} of the node ({pct(sm['total_core_ratio'])} of "
            f"one core); p95 {pct(sm['p95_node_ratio'])}, peak {pct(sm['peak_node_ratio'])}; "
            f"RSS max {_mib(sm['rss_max_bytes'])}"
        )
    ab = rep["ab"]
    if ab["rounds"]:
        w("")
        order = "".join("B" if r["exporter"] else "A" for r in ab["rounds"])
        w(
            f"A/B ({ab['rate']} storm, {len(ab['rounds'])} rounds of "
            f"{ab['round_seconds']:g} s, order {order}; throughput = tasks created/s, "
            "/proc/stat)"
        )
        for name, key, rng in (("A exporter stopped", "median_a", "range_a"),
                               ("B exporter running", "median_b", "range_b")):  # fmt: skip
            lo, hi = ab[rng] or (math.nan, math.nan)
            w(f"  {name}: median {ab[key]:.0f}/s (min {lo:.0f}, max {hi:.0f})")
        spread = _spread(ab)
        w(
            f"  slowdown 1 - B/A: {pct(ab['slowdown'], 2)} (spread of A: {pct(spread, 2)}); "
            f"accounted overhead during B: {pct(ab['accounted_node_ratio_b'], 2)} of the node; "
            f"node busy A {pct(ab['node_busy_median_a'], 1)}, "
            f"B {pct(ab['node_busy_median_b'], 1)}"
        )
        w(f"  reading: {ab['reading']}")
    for note in rep["notes"]:
        w(f"note: {note}")
    w("")
    v = rep["verdict"]
    mean, peak = v["mean_node_ratio"], v["peak_node_ratio"]
    if v["status"] in ("pass", "fail"):
        word = "PASS" if v["status"] == "pass" else "FAIL"
        rel = "<=" if v["status"] == "pass" else ">"
        w(
            f"VERDICT: {word}: mean overhead {pct(mean)} of the node {rel} budget "
            f"{pct(budget, 3)} (peak {pct(peak)} over one interval). Rule: {v['rule']}."
        )
    elif v["status"] == "interrupted":
        w(f"INTERRUPTED ({v['reason']}): no verdict; figures above cover what was measured")
    else:
        w(f"CANNOT MEASURE: {v['reason']}")
    return "\n".join(out)


def ab_reading(ab: Mapping[str, Any]) -> str:
    """What the A/B can and cannot say, from its own rounds: on a shared node the noise
    between rounds is often larger than the effect being looked for."""
    if not ab["range_a"] or not ab["range_b"]:
        return "no A/B rounds"
    if ab.get("rate", "max") != "max":
        return (
            "a paced storm keeps its rate while the node has spare CPU, so its throughput "
            "cannot show the cost; node busy B - A can, within the noise of other load"
        )
    a = [r for r in ab["rounds"] if not r["exporter"]]
    b = [r for r in ab["rounds"] if r["exporter"]]
    if len(a) < 2 or len(b) < 2:
        return "one round each: no estimate of the noise, the slowdown is indicative only"
    (a_lo, a_hi), (b_lo, b_hi) = ab["range_a"], ab["range_b"]
    if b_hi >= a_lo and a_hi >= b_lo:
        return (
            "the A and B ranges overlap: the slowdown is within this node's round-to-round "
            "noise; more --rounds or a quieter node narrow it"
        )
    if b_hi < a_lo:
        return (
            "every B round was slower than every A round. run_time_ns leaves out tracepoint "
            "dispatch and cache effects, so some loss beyond the accounted overhead is "
            "expected; a loss far beyond it usually means other load moved between rounds: "
            "repeat with more --rounds before attributing it to the probes"
        )
    return "every B round was faster than every A round: other load on the node moved"


def _spread(ab: Mapping[str, Any]) -> float:
    """(max - min) / median of the A rounds: the noise the slowdown sits in."""
    if not ab["range_a"] or not ab["median_a"]:
        return math.nan
    lo, hi = ab["range_a"]
    return float((hi - lo) / ab["median_a"])
