"""Matching, aggregation and the regression gate of `linnix-exporter compare`.

Pure functions on the model of compare_model: match() pairs two reports' programs by
identity and sums the instances sharing one, warnings() says why two windows may not
be comparable, compare() puts them together, check_gate() lists what breaks the gate.
The few figure formatters live here too because the gate's reasons must read like the
tables (compare.py renders those with the same functions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from linnix_exporter.tools.compare_model import (
    Agg,
    Breach,
    Change,
    Comparison,
    Gate,
    Prog,
    Report,
    Row,
)

MATCH_TAG = "name+type+tag"
MATCH_NAME = "name+type"

_SEED_MISSING = (
    "tag",
    "node share",
    "host (CPU count, kernel)",
    "measured window (only the nominal duration)",
    "stats state",
    "program lifecycle",
)


# ---- matching and aggregation ---------------------------------------------------------

# cilium/ebpf spells types in CamelCase (SchedCLS, TracePoint); the kernel and bpftool in
# snake_case (sched_cls, tracepoint). Both fold to the same key; these two differ more.
_TYPE_ALIASES = {"extension": "ext", "unspecifiedprogram": "unspec"}


def type_key(ptype: str) -> str:
    folded = ptype.lower().replace("_", "")
    return _TYPE_ALIASES.get(folded, folded)


def aggregate(progs: Sequence[Prog]) -> Agg:
    """Sum of the programs sharing one identity (Cilium loads one per interface)."""
    nodes = [p.node_pct for p in progs]
    hooks = [p.hook_ns for p in progs]
    wholes = [p.whole_pct for p in progs]
    return Agg(
        instances=len(progs),
        runtime_ns=sum(p.runtime_ns for p in progs),
        run_count=sum(p.run_count for p in progs),
        recursion_misses=sum(p.recursion_misses for p in progs),
        events_per_sec=sum(p.events_per_sec for p in progs),
        core_pct=sum(p.core_pct for p in progs),
        node_pct=None if any(n is None for n in nodes) else sum(n or 0.0 for n in nodes),
        partial=any(p.lifecycle != "present" for p in progs),
        hook_ns=None if None in hooks else sum(h or 0.0 for h in hooks),
        whole_pct=None if None in wholes else sum(w or 0.0 for w in wholes),
    )


def _group(progs: Iterable[Prog], key: Callable[[Prog], tuple[str, ...]]) -> dict[Any, list[Prog]]:
    out: dict[Any, list[Prog]] = defaultdict(list)
    for p in progs:
        out[key(p)].append(p)
    return out


def _tags(*groups: Sequence[Prog]) -> tuple[str, ...]:
    """Distinct tags, baseline's first: (old, new) for a rebuilt program."""
    return tuple(dict.fromkeys(t for g in groups for t in sorted({p.tag for p in g if p.tag})))


def _pair(b: Sequence[Prog], c: Sequence[Prog]) -> tuple[Agg, Agg]:
    return aggregate(b), aggregate(c)


def match(base: Sequence[Prog], cur: Sequence[Prog]) -> tuple[list[Row], list[Row], list[Row]]:
    """(matched, new, gone). First by (name, type, tag): the same code, however many
    instances. What is left is matched by (name, type): a rebuilt program (new tag) is
    still the same program. Every side of a row is the sum over all its instances, so
    N-vs-M instances are never paired arbitrarily."""

    def full(p: Prog) -> tuple[str, ...]:
        return (p.name, type_key(p.type), p.tag or "")

    def loose(p: Prog) -> tuple[str, ...]:
        return (p.name, type_key(p.type))

    b_full = _group((p for p in base if p.tag), full)
    c_full = _group((p for p in cur if p.tag), full)
    both = b_full.keys() & c_full.keys()
    matched = [
        Row(c_full[k][0].name, c_full[k][0].type, MATCH_TAG, (k[2],), *_pair(b_full[k], c_full[k]))
        for k in both
    ]
    b_rest = _group((p for p in base if full(p) not in both), loose)
    c_rest = _group((p for p in cur if full(p) not in both), loose)
    new: list[Row] = []
    gone: list[Row] = []
    for k in b_rest.keys() | c_rest.keys():
        b, c = b_rest.get(k), c_rest.get(k)
        if b and c:
            row = Row(c[0].name, c[0].type, MATCH_NAME, _tags(b, c), aggregate(b), aggregate(c))
            matched.append(row)
        elif c:
            new.append(Row(c[0].name, c[0].type, "new", _tags(c), None, aggregate(c)))
        elif b:
            gone.append(Row(b[0].name, b[0].type, "gone", _tags(b), aggregate(b), None))
    matched.sort(key=lambda r: (-abs(cpu(r).delta), r.name, r.type))
    new.sort(key=lambda r: (-(r.cur.core_pct if r.cur else 0.0), r.name, r.type))
    gone.sort(key=lambda r: (-(r.base.core_pct if r.base else 0.0), r.name, r.type))
    return matched, new, gone


def cpu(row: Row) -> Change:
    """CPU share of one core, the primary figure (comparable across CPU counts)."""
    return Change(row.base.core_pct if row.base else 0.0, row.cur.core_pct if row.cur else 0.0)


def warnings(b: Report, c: Report) -> list[str]:
    """Why the two windows may not be comparable; shown above the tables."""
    out: list[str] = []
    for r, which in ((b, "baseline"), (c, "current")):
        if r.kind == "seed":
            out.append(
                f"{which} ({r.path}) is a collect-kernel-stats report without "
                f"{', '.join(_SEED_MISSING[:-1])} or {_SEED_MISSING[-1]}: programs are "
                "matched by name+type only and node shares are not compared; that tool "
                "keeps one program per name"
            )
        if r.interrupted:
            out.append(f"{which} window was interrupted before its requested length")
        if r.stats_enabled is False:
            out.append(
                f"BPF statistics were off in the {which} window (method "
                f"{r.stats_method or 'unknown'}): its run times are not real"
            )
    if b.online_cpus and c.online_cpus and b.online_cpus != c.online_cpus:
        out.append(
            f"CPU counts differ ({b.online_cpus} vs {c.online_cpus}): node shares are not "
            "comparable; compare the share of one core"
        )
    if b.kernel_release and c.kernel_release and b.kernel_release != c.kernel_release:
        out.append(f"kernels differ ({b.kernel_release} vs {c.kernel_release})")
    if b.hostname and c.hostname and b.hostname != c.hostname:
        out.append(f"hosts differ ({b.hostname} vs {c.hostname})")
    if b.filters is not None and c.filters is not None and b.filters != c.filters:
        out.append("program filters differ: totals cover different sets of programs")
    if b.window_seconds and c.window_seconds:
        ratio = max(b.window_seconds, c.window_seconds) / min(b.window_seconds, c.window_seconds)
        if ratio > 2:
            out.append(
                f"window lengths differ ({b.window_seconds:.1f} s vs {c.window_seconds:.1f} s):"
                " figures are per second, but the shorter window is noisier"
            )
    return out


def compare(b: Report, c: Report) -> Comparison:
    matched, new, gone = match(b.programs, c.programs)
    return Comparison(b, c, tuple(matched), tuple(new), tuple(gone), tuple(warnings(b, c)))


# ---- figures as text: the gate's reasons, and the tables (compare.py) -----------------


def _row_name(r: Row) -> str:
    return f"{r.label} ({r.type})"


def _pct(v: float | None) -> str:
    """A CPU share in %, with the digits small shares need."""
    if v is None:
        return "n/a"
    if v == 0:
        return "0%"
    return f"{v:.2f}%" if abs(v) >= 10 else f"{v:.4g}%"


def _rel(p: float | None) -> str:
    return "n/a" if p is None else f"{p:+.1f}%"


# ---- the gate -------------------------------------------------------------------------


def regressed(change: Change, max_pct: float) -> bool:
    """CPU share grew by more than max_pct % (from 0 to anything counts as more)."""
    if change.cur <= change.base:
        return False
    # Multiplied rather than divided: 1.0 -> 1.1 at 10 % is not "more than 10 %".
    return change.base == 0 or change.cur > change.base * (1 + max_pct / 100) * (1 + 1e-12)


def check_gate(cmp: Comparison, gate: Gate) -> list[Breach]:
    """Items that break the gate. A current share below the noise floor never does."""
    out: list[Breach] = []
    floor = gate.min_cpu_percent
    if gate.max_regression is not None:
        items = [("total", Change(cmp.baseline.totals.core_pct, cmp.current.totals.core_pct))]
        items += [(_row_name(r), cpu(r)) for r in cmp.matched]
        for item, ch in items:
            if ch.cur >= floor and regressed(ch, gate.max_regression):
                out.append(
                    Breach(
                        item,
                        f"CPU {_pct(ch.base)} -> {_pct(ch.cur)} of a core "
                        f"({_rel(ch.pct)} > +{gate.max_regression:g}%)",
                    )
                )
    if gate.fail_on_new:
        for r in cmp.new:
            share = r.cur.core_pct if r.cur else 0.0
            if share >= floor:
                out.append(Breach(_row_name(r), f"new program, CPU {_pct(share)} of a core"))
    return out
