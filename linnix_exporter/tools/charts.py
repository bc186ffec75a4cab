"""The PNG chart of `linnix-exporter compare --output`: baseline vs current CPU share per
program (grouped horizontal bars, top N; hatched on to the whole price when the reports
carry hook figures) and a totals panel, with % change labels.

Imported only when a chart is asked for (matplotlib costs ~40 MB); the Agg backend is
chosen before pyplot is imported so it works with no display (CI, containers).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in CI or containers

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from linnix_exporter.tools.compare_match import cpu
from linnix_exporter.tools.compare_model import Agg, Change, Comparison, Row

BASE_COLOR = "#9e9e9e"
CUR_COLOR = "#1f77b4"
WORSE = "#c62828"
BETTER = "#2e7d32"
NEUTRAL = "#333333"


def change_label(ch: Change, *, cost: bool = True) -> tuple[str, str]:
    """(text, colour) for a bar pair: for a cost, +12.3 % in red when it grew, green when
    it fell; other figures (events/s: that is load, not cost) stay neutral."""
    if ch.base == 0 and ch.cur == 0:
        return "idle", NEUTRAL
    text = "new use" if ch.base == 0 else f"{ch.pct or 0.0:+.1f}%"
    if not cost or ch.cur == ch.base:
        return text, NEUTRAL
    return text, WORSE if ch.cur > ch.base else BETTER


def _rows(cmp: Comparison, top: int) -> list[tuple[Row, str]]:
    """The top programs by the larger of their two CPU shares, any kind of row."""
    rows = [(r, "") for r in cmp.matched]
    rows += [(r, "new") for r in cmp.new] + [(r, "gone") for r in cmp.gone]
    rows = [x for x in rows if max(cpu(x[0]).base, cpu(x[0]).cur) > 0]
    rows.sort(key=lambda x: (-max(cpu(x[0]).base, cpu(x[0]).cur), x[0].name))
    return rows[:top]


def _program_panel(ax: Axes, rows: Sequence[tuple[Row, str]], total: int) -> None:
    if not rows:
        ax.text(0.5, 0.5, "no program ran in either window", ha="center", va="center")
        ax.set_axis_off()
        return
    height = 0.38
    ys = range(len(rows))
    base = [cpu(r).base for r, _ in rows]
    cur = [cpu(r).cur for r, _ in rows]
    ax.barh([y + height / 2 for y in ys], base, height, color=BASE_COLOR, label="baseline")
    ax.barh([y - height / 2 for y in ys], cur, height, color=CUR_COLOR, label="current")
    # Reports with hook figures (snapshot --collector.hooks): each bar goes on, hatched,
    # to the program's whole price (run time + hooks).
    base_h = [_hooks(r.base) for r, _ in rows]
    cur_h = [_hooks(r.cur) for r, _ in rows]
    if any(base_h) or any(cur_h):
        for dy, left, width, colour in ((height / 2, base, base_h, BASE_COLOR),
                                        (-height / 2, cur, cur_h, CUR_COLOR)):  # fmt: skip
            ax.barh([y + dy for y in ys], width, height, left=left, color="white",
                    edgecolor=colour, hatch="///")  # fmt: skip
        ax.barh([0], [0], color="white", edgecolor=NEUTRAL, hatch="///", label="hooks")
        base = [b + h for b, h in zip(base, base_h, strict=True)]
        cur = [c + h for c, h in zip(cur, cur_h, strict=True)]
    right = max(max(base), max(cur))
    for y, (r, kind) in zip(ys, rows, strict=True):
        ch = cpu(r)
        text, colour = change_label(ch)
        text = {"new": "new", "gone": "gone"}.get(kind, text)
        ax.text(right * 1.02, y, text, va="center", fontsize=10, color=colour, weight="bold")
        ax.text(
            right * 1.02,
            y + 0.3,
            f"{ch.base:.3g}% → {ch.cur:.3g}%",
            va="center",
            fontsize=8,
            color=NEUTRAL,
        )
    labels = []
    for r, _ in rows:
        n = max(r.base.instances if r.base else 0, r.cur.instances if r.cur else 0)
        labels.append(f"{r.label} ({r.type})" + (f" x{n}" if n > 1 else ""))
    ax.set_yticks(list(ys), labels, fontsize=10)
    # Largest first, at the top; at least 6 slots so a few bars keep a sane thickness.
    ax.set_ylim(max(len(rows), 6) - 0.5, -0.5)
    ax.set_xlim(0, right * 1.3)
    ax.set_xlabel("CPU, % of one core", fontsize=11)
    shown = f"top {len(rows)} of {total}" if total > len(rows) else f"all {len(rows)}"
    ax.set_title(f"Per program ({shown} with any run time)", fontsize=12, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=10, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def _hooks(a: Agg | None) -> float:
    """What hooks add to a row's CPU share (% of one core); 0 without hook figures."""
    if a is None or a.whole_pct is None:
        return 0.0
    return max(0.0, a.whole_pct - a.core_pct)


def _total_panel(ax: Axes, title: str, ch: Change, fmt: str, cost: bool) -> None:
    ax.bar([0, 1], [ch.base, ch.cur], color=[BASE_COLOR, CUR_COLOR], width=0.6)
    ax.set_xticks([0, 1], ["baseline", "current"], fontsize=10)
    top = max(ch.base, ch.cur) or 1.0
    ax.set_ylim(0, top * 1.3)
    for x, v in ((0, ch.base), (1, ch.cur)):
        ax.text(x, v + top * 0.02, format(v, fmt), ha="center", va="bottom", fontsize=9)
    text, colour = change_label(ch, cost=cost)
    ax.set_title(f"{title}\n{text}", fontsize=11, color=colour)
    ax.tick_params(axis="y", labelsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw(cmp: Comparison, path: str, top: int = 15) -> None:
    """Write the chart to `path` (PNG); OSError if it cannot be written."""
    rows = _rows(cmp, top)
    busy = sum(1 for r in (*cmp.matched, *cmp.new, *cmp.gone) if max(cpu(r).base, cpu(r).cur) > 0)
    fig = plt.figure(figsize=(14, max(6.0, 0.55 * len(rows) + 2.5)), dpi=100)
    try:
        grid = fig.add_gridspec(3, 2, width_ratios=(3.2, 1), hspace=0.7, wspace=0.45)
        _program_panel(fig.add_subplot(grid[:, 0]), rows, busy)
        b, c = cmp.baseline.totals, cmp.current.totals
        _total_panel(
            fig.add_subplot(grid[0, 1]),
            "Total CPU, % of one core",
            Change(b.core_pct, c.core_pct),
            ".4g",
            True,
        )
        _total_panel(
            fig.add_subplot(grid[1, 1]),
            "Total events/s",
            Change(b.events_per_sec, c.events_per_sec),
            ",.0f",
            False,
        )
        _total_panel(
            fig.add_subplot(grid[2, 1]),
            "Avg ns/run (all programs)",
            Change(b.avg_ns or 0.0, c.avg_ns or 0.0),
            ",.0f",
            True,
        )
        fig.suptitle(
            "BPF program cost: baseline "
            f"{cmp.baseline.timestamp or '?'} vs current {cmp.current.timestamp or '?'}",
            fontsize=13,
            weight="bold",
        )
        if cmp.warnings:
            note = f"{len(cmp.warnings)} warning(s), see the text summary: " + cmp.warnings[0]
            fig.text(0.01, 0.005, note[:160], fontsize=8, color="#555555")
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
