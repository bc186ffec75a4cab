"""`linnix-exporter compare BASELINE.json CURRENT.json`: what changed in BPF program cost
between two snapshot reports, with a regression gate for CI and an optional PNG chart.

Pure functions (read/normalise, match, aggregate, deltas, gate, render) so every step is
unit-testable on hand-made reports; main() only wires them to argv, stdout and the exit
code. matplotlib (chart) and jsonschema (validation) are imported only when used: the
daemon builds this parser and must not pay for them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2

SCHEMA_PATH = Path(__file__).with_name("snapshot.schema.json")
DEFAULT_MIN_CPU_PERCENT = 0.01  # % of one core: ~100 us of BPF run time per second
DEFAULT_TOP = 15

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


class InputError(Exception):
    """An input report cannot be used; str() is the one line shown to the user."""


# ---- the normalised model -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prog:
    """One program row of a report, whatever the report's format."""

    id: int
    name: str
    type: str
    tag: str | None  # None in seed-format reports
    runtime_ns: int
    run_count: int
    recursion_misses: int
    events_per_sec: float
    core_pct: float  # estimated_cpu_percent: % of one core
    node_pct: float | None  # % of the node; None in seed-format reports
    lifecycle: str  # "present" unless loaded/unloaded during the window


@dataclass(frozen=True, slots=True)
class Agg:
    """Programs sharing one identity (or a whole report's totals), summed."""

    instances: int
    runtime_ns: int
    run_count: int
    recursion_misses: int
    events_per_sec: float
    core_pct: float
    node_pct: float | None
    partial: bool = False  # an instance was loaded or unloaded during the window

    @property
    def avg_ns(self) -> float | None:
        """Mean run time per run, weighted by runs (not a mean of per-program means)."""
        return self.runtime_ns / self.run_count if self.run_count else None


@dataclass(frozen=True, slots=True)
class Report:
    path: str
    kind: str  # "v1" (linnix-exporter snapshot) or "seed" (collect-kernel-stats)
    timestamp: str
    hostname: str | None
    kernel_release: str | None
    online_cpus: int | None
    window_seconds: float | None
    interrupted: bool | None
    stats_enabled: bool | None
    stats_method: str | None
    filters: Mapping[str, Any] | None
    programs: tuple[Prog, ...]
    totals: Agg


@dataclass(frozen=True, slots=True)
class Row:
    """One identity in the comparison: matched (both sides), new or gone."""

    name: str
    type: str
    match: str  # MATCH_TAG, MATCH_NAME, "new" or "gone"
    tags: tuple[str, ...]
    base: Agg | None
    cur: Agg | None

    @property
    def label(self) -> str:
        return self.name or "(no name)"


@dataclass(frozen=True, slots=True)
class Change:
    base: float
    cur: float

    @property
    def delta(self) -> float:
        return self.cur - self.base

    @property
    def pct(self) -> float | None:
        """Relative change in %, None when the baseline is 0 (no meaningful ratio)."""
        return None if self.base == 0 else (self.cur - self.base) / self.base * 100


@dataclass(frozen=True, slots=True)
class Comparison:
    baseline: Report
    current: Report
    matched: tuple[Row, ...]  # sorted by |delta CPU| (share of one core), largest first
    new: tuple[Row, ...]
    gone: tuple[Row, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Gate:
    max_regression: float | None  # %, None = no regression gate
    min_cpu_percent: float  # % of one core: current shares below it never gate
    fail_on_new: bool


@dataclass(frozen=True, slots=True)
class Breach:
    item: str
    reason: str


# ---- reading --------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def load_report(path: str, schema_path: Path = SCHEMA_PATH) -> Report:
    """Read, validate and normalise one report; InputError with one line otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a JSON report (not UTF-8 text)") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise InputError(f"{path}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a snapshot report (top level is {_kind(doc)})")
    if "schema_version" in doc:
        if doc["schema_version"] != 1:
            raise InputError(
                f"{path}: unsupported schema_version {doc['schema_version']!r} "
                "(this version reads 1)"
            )
        _validate_schema(path, doc, schema_path)
        return _read_v1(path, doc)
    if "program_stats" in doc:
        return _read_seed(path, doc)
    raise InputError(f"{path}: not a snapshot report (no schema_version, no program_stats)")


def _validate_schema(path: str, doc: dict[str, Any], schema_path: Path) -> None:
    """JSON Schema check when the schema file and jsonschema are there; the readers below
    check every field they use anyway, so neither is needed for a clear error."""
    if not schema_path.is_file():
        return
    try:
        # No stubs are installed for jsonschema: used through Any.
        jsonschema: Any = importlib.import_module("jsonschema")
    except ImportError:
        return
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        # The message quotes the offending value, which can be a whole object: keep one
        # short line.
        msg = " ".join(error.message.split())
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        raise InputError(f"{path}: does not match the snapshot schema at {where}: {msg}")


def _kind(v: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), "a number" if isinstance(v, int | float) else "null"
    )


class _Fields:
    """Typed access to one JSON object, naming the file and the field in errors."""

    def __init__(self, path: str, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise InputError(f"{path}: {where or 'report'}: expected an object, got {_kind(obj)}")
        self.path, self.obj, self.where = path, obj, where

    def _get(self, key: str, default: object) -> object:
        if key in self.obj:
            return self.obj[key]
        if default is _REQUIRED:
            raise InputError(f"{self.path}: missing field {self._name(key)}")
        return default

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, want: str, v: object) -> InputError:
        return InputError(f"{self.path}: {self._name(key)}: expected {want}, got {_kind(v)}")

    def num(self, key: str, default: object = None) -> float:
        v = self._get(key, _REQUIRED if default is None else default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self._bad(key, "a number", v)
        return float(v)

    def count(self, key: str, default: object = None) -> int:
        v = self._get(key, _REQUIRED if default is None else default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise self._bad(key, "a whole number >= 0", v)
        return v

    def text(self, key: str, default: object = None) -> str:
        v = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def opt_bool(self, key: str) -> bool | None:
        v = self.obj.get(key)
        if v is not None and not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def sub(self, key: str, required: bool = True) -> _Fields | None:
        if key not in self.obj and not required:
            return None
        return _Fields(self.path, self._get(key, _REQUIRED), self._name(key))


_REQUIRED = object()


def _programs(f: _Fields, read: Callable[[_Fields], Prog]) -> tuple[Prog, ...]:
    stats = f.sub("program_stats")
    assert stats is not None
    return tuple(read(_Fields(f.path, v, f"program_stats[{k!r}]")) for k, v in stats.obj.items())


def _read_v1(path: str, doc: dict[str, Any]) -> Report:
    f = _Fields(path, doc, "")

    def prog(p: _Fields) -> Prog:
        return Prog(
            id=p.count("id"),
            name=p.text("name"),
            type=p.text("type"),
            tag=p.text("tag"),
            runtime_ns=p.count("runtime_ns"),
            run_count=p.count("run_count"),
            recursion_misses=p.count("recursion_misses"),
            events_per_sec=p.num("events_per_sec"),
            core_pct=p.num("estimated_cpu_percent"),
            node_pct=p.num("node_cpu_percent"),
            lifecycle=p.text("lifecycle"),
        )

    programs = _programs(f, prog)
    window, host, stats = f.sub("window"), f.sub("host"), f.sub("stats")
    assert window is not None and host is not None and stats is not None
    filters = f.sub("filters", required=False)
    return Report(
        path=path,
        kind="v1",
        timestamp=f.text("timestamp"),
        hostname=host.text("hostname"),
        kernel_release=host.text("kernel_release"),
        online_cpus=host.count("online_cpus"),
        window_seconds=window.num("measured_seconds"),
        interrupted=window.opt_bool("interrupted"),
        stats_enabled=stats.opt_bool("enabled"),
        stats_method=stats.text("method", ""),
        filters=filters.obj if filters is not None else None,
        programs=programs,
        totals=Agg(
            instances=f.count("num_programs"),
            runtime_ns=f.count("total_runtime_ns"),
            run_count=f.count("total_run_count"),
            recursion_misses=f.count("total_recursion_misses"),
            events_per_sec=f.num("total_events_per_sec"),
            core_pct=f.num("total_estimated_cpu_percent"),
            node_pct=f.num("total_node_cpu_percent"),
            partial=any(p.lifecycle != "present" for p in programs),
        ),
    )


def _read_seed(path: str, doc: dict[str, Any]) -> Report:
    """netobserv's collect-kernel-stats output: programs keyed by name, CPU % of one core
    over the nominal duration, no tag, host, node share or stats state."""
    f = _Fields(path, doc, "")

    def prog(p: _Fields) -> Prog:
        return Prog(
            id=p.count("id", 0),
            name=p.text("name"),
            type=p.text("type"),
            tag=None,
            runtime_ns=p.count("runtime_ns"),
            run_count=p.count("run_count"),
            recursion_misses=p.count("recursion_misses", 0),
            events_per_sec=p.num("events_per_sec"),
            core_pct=p.num("estimated_cpu_percent"),
            node_pct=None,
            lifecycle="present",
        )

    programs = _programs(f, prog)
    duration_ns = f.obj.get("collection_duration_ns")
    return Report(
        path=path,
        kind="seed",
        timestamp=f.text("timestamp", ""),
        hostname=None,
        kernel_release=None,
        online_cpus=None,
        window_seconds=f.count("collection_duration_ns") / 1e9 if duration_ns else None,
        interrupted=None,
        stats_enabled=None,
        stats_method=None,
        filters=None,
        programs=programs,
        totals=Agg(
            instances=f.count("num_programs", len(programs)),
            runtime_ns=f.count("total_runtime_ns"),
            run_count=f.count("total_run_count"),
            recursion_misses=f.count("total_recursion_misses", 0),
            events_per_sec=f.num("total_events_per_sec"),
            core_pct=f.num("total_estimated_cpu_percent"),
            node_pct=None,
        ),
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
    return Agg(
        instances=len(progs),
        runtime_ns=sum(p.runtime_ns for p in progs),
        run_count=sum(p.run_count for p in progs),
        recursion_misses=sum(p.recursion_misses for p in progs),
        events_per_sec=sum(p.events_per_sec for p in progs),
        core_pct=sum(p.core_pct for p in progs),
        node_pct=None if any(n is None for n in nodes) else sum(n or 0.0 for n in nodes),
        partial=any(p.lifecycle != "present" for p in progs),
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


# ---- rendering ------------------------------------------------------------------------


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


def _instances(r: Row) -> str:
    b = r.base.instances if r.base else 0
    c = r.cur.instances if r.cur else 0
    mark = "*" if (r.base and r.base.partial) or (r.cur and r.cur.partial) else ""
    return (str(c) if b == c else f"{b}→{c}") + mark


def _idle(r: Row) -> bool:
    return all(a is None or (a.run_count == 0 and a.runtime_ns == 0) for a in (r.base, r.cur))


def _side_cells(a: Agg | None) -> list[str]:
    if a is None:
        return ["n/a"] * 5
    return [str(a.instances), _pct(a.core_pct), _rate(a.events_per_sec), _ns(a.avg_ns),
            _pct(a.node_pct)]  # fmt: skip


def tables(
    cmp: Comparison, show_idle: bool = False
) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of every table, shared by the markdown and text renderers.
    Programs idle in both windows (no runs) are counted in the title, listed with --all."""
    b, c = cmp.baseline.totals, cmp.current.totals
    out = [
        (
            "Totals",
            ["", "programs", *HEADERS],
            [["all programs", _arrow(str(b.instances), str(c.instances)), *_agg_cells(b, c)]],
        )
    ]
    one_side = ["program", "type", "n", "CPU (% of a core)", "events/s", "avg ns/run", "node %"]
    for title, rows, head in (
        ("Programs, by |Δ CPU|", cmp.matched, ["program", "type", "match", "n", *HEADERS]),
        ("New programs", cmp.new, one_side),
        ("Gone programs", cmp.gone, one_side),
    ):
        shown = [r for r in rows if show_idle or not _idle(r)]
        if rows is cmp.matched:
            body = [[r.label, r.type, r.match, _instances(r), *_agg_cells(r.base, r.cur)]
                    for r in shown]  # fmt: skip
        else:
            body = [[r.label, r.type, *_side_cells(r.cur or r.base)] for r in shown]
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
    lines += ["", LEGEND]
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
    }


_FIGURES: tuple[tuple[str, Callable[[Agg], float | None]], ...] = (
    ("estimated_cpu_percent", lambda a: a.core_pct),
    ("node_cpu_percent", lambda a: a.node_pct),
    ("events_per_sec", lambda a: a.events_per_sec),
    ("avg_runtime_ns", lambda a: a.avg_ns),
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
    return EXIT_REGRESSION if breaches else EXIT_OK
