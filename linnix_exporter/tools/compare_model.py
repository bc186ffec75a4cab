"""The data model of `linnix-exporter compare`, and how reports are read into it.

Normalised dataclasses (Prog, Agg, Report, Row, Change, Comparison, Gate, Breach) that
both report formats are read into: a linnix-exporter snapshot (schema_version 1, checked
against snapshot.schema.json) and netobserv's collect-kernel-stats output ("seed"
format). load_report() validates every field it uses and turns any problem into one
InputError line. jsonschema is imported only when a report is validated: the daemon
builds the compare parser and must not pay for it.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("snapshot.schema.json")


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
    # With --collector.hooks (None otherwise): what its hooks cost in the window, and its
    # whole price (run time + hooks) as % of one core.
    hook_ns: float | None = None
    whole_pct: float | None = None


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
    hook_ns: float | None = None  # None: a report without hook figures
    whole_pct: float | None = None

    @property
    def avg_ns(self) -> float | None:
        """Mean run time per run, weighted by runs (not a mean of per-program means)."""
        return self.runtime_ns / self.run_count if self.run_count else None

    @property
    def multiplier(self) -> float | None:
        """Whole price / reported run time; None without hook figures or runs."""
        if self.hook_ns is None or not self.runtime_ns:
            return None
        return (self.runtime_ns + self.hook_ns) / self.runtime_ns


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
    match: str  # compare_match.MATCH_TAG, MATCH_NAME, "new" or "gone"
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

    def opt_num(self, key: str) -> float | None:
        """A number, or None when the field is absent (an optional figure)."""
        return self.num(key) if key in self.obj else None

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
            hook_ns=p.opt_num("hook_ns"),
            whole_pct=p.opt_num("whole_cpu_percent"),
        )

    programs = _programs(f, prog)
    hooks = f.sub("hooks", required=False) if f.obj.get("hooks") is not None else None
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
            hook_ns=hooks.num("total_hook_ns") if hooks else None,
            whole_pct=hooks.num("total_whole_cpu_percent") if hooks else None,
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
