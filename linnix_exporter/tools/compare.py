"""`linnix-exporter compare BASELINE.json CURRENT.json`: what changed in BPF program cost
between two snapshot reports, with a regression gate for CI and an optional PNG chart.

This module holds the rendering (markdown, text, JSON) and the command line; reading
and the model are in compare_model, matching and the gate in compare_match, the chart in
charts. Pure functions (read/normalise, match, aggregate, deltas, gate, render) so every
step is unit-testable on hand-made reports; main() only wires them to argv, stdout and
the exit code. matplotlib (chart) and jsonschema (validation) are imported only when
used: the daemon builds this parser and must not pay for them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from linnix_exporter.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from linnix_exporter.tools.compare_match import _pct, _rel, check_gate, compare
from linnix_exporter.tools.compare_model import (
    Agg,
    Breach,
    Change,
    Comparison,
    Gate,
    InputError,
    Report,
    Row,
    load_report,
)

DEFAULT_MIN_CPU_PERCENT = 0.01  # % of one core: ~100 us of BPF run time per second
DEFAULT_TOP = 15


# ---- rendering ------------------------------------------------------------------------


def _rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}"


def _ns(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _arrow(b: str, c: str) -> str:
    return b if b == c else f"{b} → {c}"


def _change_cells(
    b: float | None, c: float | None, fmt: Callable[[float | None], str]
) -> list[str]:
    rel = None if b is None or c is None else Change(b, c).pct
    new_from_zero = b == 0 and c is not None and c > 0
    return [_arrow(fmt(b), fmt(c)), "new use" if new_from_zero else _rel(rel)]


def _agg_cells(b: Agg | None, c: Agg | None) -> list[str]:
    cells = _change_cells(b.core_pct if b else None, c.core_pct if c else None, _pct)
    cells += _change_cells(b.events_per_sec if b else None, c.events_per_sec if c else None, _rate)
    cells += _change_cells(b.avg_ns if b else None, c.avg_ns if c else None, _ns)
    cells.append(_arrow(_pct(b.node_pct if b else None), _pct(c.node_pct if c else None)))
    return cells


HEADERS = ["CPU (% of a core)", "Δ", "events/s", "Δ", "avg ns/run", "Δ", "node %"]
# With hook figures in either report (snapshot --collector.hooks): the whole price (run
# time + what reaching the program through its hooks costs) and how many times the run
# time that is.
HOOK_HEADERS = ["whole price (% of a core)", "Δ", "x run time"]


def _times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}x"


def _hook_cells(b: Agg | None, c: Agg | None) -> list[str]:
    cells = _change_cells(b.whole_pct if b else None, c.whole_pct if c else None, _pct)
    cells.append(_arrow(_times(b.multiplier if b else None), _times(c.multiplier if c else None)))
    return cells


def has_hooks(cmp: Comparison) -> bool:
    return any(r.totals.hook_ns is not None for r in (cmp.baseline, cmp.current))


def _instances(r: Row) -> str:
    b = r.base.instances if r.base else 0
    c = r.cur.instances if r.cur else 0
    mark = "*" if (r.base and r.base.partial) or (r.cur and r.cur.partial) else ""
    return (str(c) if b == c else f"{b}→{c}") + mark


def _idle(r: Row) -> bool:
    return all(a is None or (a.run_count == 0 and a.runtime_ns == 0) for a in (r.base, r.cur))


def _side_cells(a: Agg | None, hooks: bool = False) -> list[str]:
    if a is None:
        return ["n/a"] * (7 if hooks else 5)
    cells = [str(a.instances), _pct(a.core_pct), _rate(a.events_per_sec), _ns(a.avg_ns),
             _pct(a.node_pct)]  # fmt: skip
    return [*cells, _pct(a.whole_pct), _times(a.multiplier)] if hooks else cells


def tables(
    cmp: Comparison, show_idle: bool = False
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of every table, shared by the markdown and text renderers.
    Programs idle in both windows (no runs) are counted in the title, listed with --all."""
    b, c = cmp.baseline.totals, cmp.current.totals
    hooks = has_hooks(cmp)
    extra = HOOK_HEADERS if hooks else []

    def cells(base: Agg | None, cur: Agg | None) -> list[str]:
        return _agg_cells(base, cur) + (_hook_cells(base, cur) if hooks else [])

    out = [
        (
            "Totals",
            ["", "programs", *HEADERS, *extra],
            [["all programs", _arrow(str(b.instances), str(c.instances)), *cells(b, c)]],
        )
    ]
    one_side = ["program", "type", "n", "CPU (% of a core)", "events/s", "avg ns/run", "node %"]
    if hooks:
        one_side += ["whole price (% of a core)", "x run time"]
    for title, rows, head in (
        ("Programs, by |Δ CPU|", cmp.matched, ["program", "type", "match", "n", *HEADERS, *extra]),
        ("New programs", cmp.new, one_side),
        ("Gone programs", cmp.gone, one_side),
    ):
        shown = [r for r in rows if show_idle or not _idle(r)]
        if rows is cmp.matched:
            body = [[r.label, r.type, r.match, _instances(r), *cells(r.base, r.cur)]
                    for r in shown]  # fmt: skip
        else:
            body = [[r.label, r.type, *_side_cells(r.cur or r.base, hooks)] for r in shown]
        hidden = len(rows) - len(shown)
        if hidden:
            title += f" ({hidden} idle in both windows not shown; --all lists them)"
        if rows:
            out.append((title, head, body))
    return out


def _describe(r: Report) -> str:
    parts = [r.timestamp or "no timestamp"]
    if r.hostname:
        parts.append(r.hostname)
    if r.online_cpus:
        parts.append(f"{r.online_cpus} CPUs")
    if r.kernel_release:
        parts.append(f"kernel {r.kernel_release}")
    if r.window_seconds:
        parts.append(f"window {r.window_seconds:.1f} s")
    return f"{r.path} ({', '.join(parts)})"


def _gate_lines(gate: Gate, breaches: Sequence[Breach]) -> list[str]:
    if gate.max_regression is None and not gate.fail_on_new:
        return []
    what = [f"CPU share +{gate.max_regression:g}%"] if gate.max_regression is not None else []
    if gate.fail_on_new:
        what.append("new programs")
    head = f"gate ({', '.join(what)}; floor {gate.min_cpu_percent:g}% of a core): "
    if not breaches:
        return [head + "passed"]
    return [head + f"FAILED ({len(breaches)})"] + [f"- {x.item}: {x.reason}" for x in breaches]


LEGEND = (
    "n: instances (programs sharing the identity, summed); * = loaded or unloaded during "
    "a window. CPU = estimated_cpu_percent, the share of one core."
)
HOOK_LEGEND = (
    "Whole price = run time + what reaching the program through its hooks cost (snapshot "
    "--collector.hooks; n/a in a report without it); x run time = whole price / run time."
)


def render_markdown(
    cmp: Comparison, gate: Gate, breaches: Sequence[Breach], show_idle: bool = False
) -> str:
    lines = [
        "## BPF program cost: baseline vs current",
        "",
        f"- baseline: {_describe(cmp.baseline)}",
        f"- current: {_describe(cmp.current)}",
    ]
    if cmp.warnings:
        lines += ["", "**Warnings**", ""] + [f"- ⚠ {w}" for w in cmp.warnings]
    for title, head, rows in tables(cmp, show_idle):
        lines += ["", f"### {title}", "", _md_row(head), _md_row(["---"] * len(head))]
        lines += [_md_row(r) for r in rows]
    lines += ["", LEGEND + (" " + HOOK_LEGEND if has_hooks(cmp) else "")]
    gl = _gate_lines(gate, breaches)
    if gl:
        lines += ["", "### Gate", "", gl[0], "", *gl[1:]]
    return "\n".join(lines).rstrip() + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_text(
    cmp: Comparison, gate: Gate, breaches: Sequence[Breach], show_idle: bool = False
) -> str:
    lines = [f"baseline: {_describe(cmp.baseline)}", f"current:  {_describe(cmp.current)}"]
    lines += [f"warning: {w}" for w in cmp.warnings]
    for title, head, rows in tables(cmp, show_idle):
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        lines += ["", f"{title}:"]
        for r in (head, *rows):
            lines.append("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip())
    gl = _gate_lines(gate, breaches)
    if gl:
        lines += ["", *gl]
    return "\n".join(lines) + "\n"


def _agg_json(a: Agg | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "instances": a.instances,
        "runtime_ns": a.runtime_ns,
        "run_count": a.run_count,
        "recursion_misses": a.recursion_misses,
        "events_per_sec": a.events_per_sec,
        "avg_runtime_ns": a.avg_ns,
        "estimated_cpu_percent": a.core_pct,
        "node_cpu_percent": a.node_pct,
        "partial": a.partial,
        "hook_ns": a.hook_ns,
        "whole_cpu_percent": a.whole_pct,
        "hook_multiplier": a.multiplier,
    }


_FIGURES: tuple[tuple[str, Callable[[Agg], float | None]], ...] = (
    ("estimated_cpu_percent", lambda a: a.core_pct),
    ("node_cpu_percent", lambda a: a.node_pct),
    ("events_per_sec", lambda a: a.events_per_sec),
    ("avg_runtime_ns", lambda a: a.avg_ns),
    ("whole_cpu_percent", lambda a: a.whole_pct),
)


def _delta_json(b: Agg | None, c: Agg | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, get in _FIGURES:
        bv = get(b) if b else 0.0
        cv = get(c) if c else 0.0
        if bv is None or cv is None:
            out[key] = None
        else:
            ch = Change(bv, cv)
            out[key] = {"delta": ch.delta, "pct": ch.pct}
    return out


def render_json(cmp: Comparison, gate: Gate, breaches: Sequence[Breach]) -> str:
    def row(r: Row) -> dict[str, Any]:
        return {
            "name": r.name,
            "type": r.type,
            "match": r.match,
            "tags": list(r.tags),
            "baseline": _agg_json(r.base),
            "current": _agg_json(r.cur),
            "change": _delta_json(r.base, r.cur),
        }

    def meta(r: Report) -> dict[str, Any]:
        return {
            "path": r.path,
            "format": r.kind,
            "timestamp": r.timestamp,
            "hostname": r.hostname,
            "kernel_release": r.kernel_release,
            "online_cpus": r.online_cpus,
            "window_seconds": r.window_seconds,
        }

    b, c = cmp.baseline.totals, cmp.current.totals
    doc = {
        "baseline": meta(cmp.baseline),
        "current": meta(cmp.current),
        "warnings": list(cmp.warnings),
        "totals": {"baseline": _agg_json(b), "current": _agg_json(c), "change": _delta_json(b, c)},
        "programs": [row(r) for r in cmp.matched],
        "new": [row(r) for r in cmp.new],
        "gone": [row(r) for r in cmp.gone],
        "gate": {
            "max_regression_percent": gate.max_regression,
            "min_cpu_percent": gate.min_cpu_percent,
            "fail_on_new": gate.fail_on_new,
            "passed": not breaches,
            "breaches": [{"item": x.item, "reason": x.reason} for x in breaches],
        },
    }
    return json.dumps(doc, indent=2) + "\n"


# ---- command line ---------------------------------------------------------------------


def _percent(text: str) -> float:
    t = text.strip().removesuffix("%")
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a percentage: {text!r} (use e.g. 10 or 10%)"
        ) from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a percentage >= 0, got {text!r}")
    return v


def _top(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100, got {v}")
    return v


DESCRIPTION = """\
Compare two snapshot reports (`linnix-exporter snapshot` JSON, or the JSON of
netobserv's collect-kernel-stats) program by program: CPU share, events/s and
average ns per run, with their changes. A summary goes to stdout; --output draws
a PNG chart.

Matching: programs are matched first by (name, type, tag), i.e. the same code;
what is left by (name, type), i.e. the same program rebuilt ("match" column).
All programs sharing an identity (e.g. one per interface or cgroup) are summed
into one row, with their count (column n), never paired one to one. The rest
are listed as new or gone.

CPU share: estimated_cpu_percent, the share of ONE core (comparable between
machines with different CPU counts); the node share is shown beside it.

Gate: with --max-regression PCT, exit 1 if the total CPU share, or that of any
matched program, grew by more than PCT % (relative: 1.0 -> 1.2 is +20 %; from 0
to anything is more). A share that is below --min-cpu-percent in the current
report never fails the gate (noise). New programs are listed, and fail only
with --fail-on-new (subject to the same floor; 0 to fail on any). Gone programs
never fail. Breaches are printed on stdout (Gate section) and stderr.

Input: a linnix-exporter report (schema_version 1) is checked against
snapshot.schema.json; a collect-kernel-stats report (no tag, node share, host or
measured window) is read as far as it goes and the summary says what it lacks.
Programs that ran in neither window are counted, listed with --all.

Hooks: reports made with `snapshot --collector.hooks` carry each program's whole
price (run time + what reaching it through its hooks cost) and the multiplier
whole / run time; the tables then show them beside the run time (n/a for a
report without them). The gate judges the run time's CPU share, as before.

Exit codes: 0 ok, 1 gate failed, 2 bad input or usage (one line on stderr)."""


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help="compare two snapshot reports, with a CI regression gate and a chart",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("baseline", metavar="BASELINE.json", help="the reference report")
    p.add_argument("current", metavar="CURRENT.json", help="the report under test")
    p.add_argument(
        "--format",
        choices=("markdown", "text", "json"),
        default="markdown",
        help="stdout summary format (default: markdown)",
    )
    p.add_argument("--output", metavar="CHART.png", help="also draw a PNG chart (matplotlib)")
    p.add_argument(
        "--top",
        type=_top,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"programs in the chart, by CPU share (default: {DEFAULT_TOP})",
    )
    p.add_argument(
        "--max-regression",
        type=_percent,
        metavar="PCT",
        help="exit 1 if a CPU share grew by more than PCT %% (default: no gate)",
    )
    p.add_argument(
        "--min-cpu-percent",
        type=_percent,
        default=DEFAULT_MIN_CPU_PERCENT,
        metavar="PCT",
        help="noise floor, %% of one core: current shares below it never fail the gate "
        f"(default: {DEFAULT_MIN_CPU_PERCENT:g})",
    )
    p.add_argument(
        "--fail-on-new",
        action="store_true",
        help="exit 1 if a new program's CPU share reaches the floor",
    )
    p.add_argument("--all", action="store_true", help="also list programs idle in both windows")
    p.set_defaults(handler=main)


def _error(msg: str) -> int:
    print(f"linnix-exporter compare: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    try:
        base = load_report(args.baseline)
        cur = load_report(args.current)
    except InputError as e:
        return _error(str(e))
    cmp = compare(base, cur)
    gate = Gate(args.max_regression, args.min_cpu_percent, args.fail_on_new)
    breaches = check_gate(cmp, gate)
    if args.format == "json":
        sys.stdout.write(render_json(cmp, gate, breaches))
    elif args.format == "text":
        sys.stdout.write(render_text(cmp, gate, breaches, args.all))
    else:
        sys.stdout.write(render_markdown(cmp, gate, breaches, args.all))
    sys.stdout.flush()
    if args.output:
        try:
            from linnix_exporter.tools import charts
        except ImportError as e:
            return _error(f"--output needs matplotlib (pip install 'linnix-exporter[tools]'): {e}")
        try:
            charts.draw(cmp, args.output, top=args.top)
        except OSError as e:
            return _error(f"--output {args.output}: cannot write: {e.strerror or e}")
    for x in breaches:
        print(f"linnix-exporter compare: gate failed: {x.item}: {x.reason}", file=sys.stderr)
    return EXIT_FAIL if breaches else EXIT_OK
