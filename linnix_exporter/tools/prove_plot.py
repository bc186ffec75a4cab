"""The PNG of `linnix-exporter prove --plot`: overhead per sample interval over time,
split into the probes' kernel time and the exporter's CPU (stacked, share of the node),
against the budget line, with each storm's span shaded and labelled and the mean drawn.

Imported only when a chart is asked for (matplotlib costs ~40 MB); the Agg backend is
chosen before pyplot is imported so it works with no display (CI, containers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in CI or containers

import matplotlib.pyplot as plt

PROBES = "#1f77b4"
EXPORTER = "#ff7f0e"
BUDGET = "#c62828"
MEAN = "#333333"
SHADES = ("#f2f2f2", "#e0e0e0")


def draw(report: Mapping[str, Any], path: str) -> None:
    rows = report["intervals"]
    t0 = report["samples"][0]["monotonic"]
    # Each interval drawn as a step over [start, end): the figure covers that span.
    ends = [r["t"] - t0 for r in rows]
    starts = [e - r["seconds"] for e, r in zip(ends, rows, strict=True)]
    probes = [r["probes_node_ratio"] * 100 for r in rows]
    exporter = [r["exporter_node_ratio"] * 100 for r in rows]
    budget = report["settings"]["budget_ratio"] * 100

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    # Shade each storm and name it at the top.
    spans: dict[str, list[float]] = {}
    for s, e, r in zip(starts, ends, rows, strict=True):
        span = spans.setdefault(str(r["phase"]), [s, e])
        span[0], span[1] = min(span[0], s), max(span[1], e)
    for i, (label, (lo, hi)) in enumerate(spans.items()):
        ax.axvspan(lo, hi, color=SHADES[i % 2], zorder=0)
        title = f"{label}/s" if label != "max" else "max rate"
        ax.text((lo + hi) / 2, 1.0, title, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9)  # fmt: skip
    xs = [x for s, e in zip(starts, ends, strict=True) for x in (s, e)]
    p2 = [v for v in probes for _ in (0, 1)]
    e2 = [v for v in exporter for _ in (0, 1)]
    ax.stackplot(xs, p2, e2, colors=(PROBES, EXPORTER), alpha=0.85, zorder=2,
                 labels=("probes' kernel run time", "exporter CPU"))  # fmt: skip
    ax.axhline(budget, color=BUDGET, lw=1.5, ls="--", zorder=3,
               label=f"budget {budget:g}% of the node")  # fmt: skip
    summary = report.get("summary")
    if summary:
        mean = summary["total_node_ratio"] * 100
        ax.axhline(mean, color=MEAN, lw=1, ls=":", zorder=3, label=f"mean {mean:.3f}%")
    top = max([budget, *(p + e for p, e in zip(probes, exporter, strict=True))])
    ax.set_ylim(0, top * 1.15)
    ax.set_xlim(0, max(ends, default=1.0))
    ax.set_xlabel("time since the first sample (s)")
    ax.set_ylabel("share of the node (%)")
    cpus = report["host"]["online_cpus"]
    status = report["verdict"]["status"].upper().replace("_", " ")
    ax.set_title(
        f"linnix-exporter prove: overhead per {report['settings']['interval_seconds']:g} s "
        f"interval, {cpus} CPUs: {status}",
        pad=16,
    )
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
