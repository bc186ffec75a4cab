"""The vocabulary of what the exporter reports: a metric family (its Prometheus and
OpenTelemetry names side by side), one figure of it, and the label sets shared by
several collectors. A leaf: the collectors (collectors/) and figures.py import it.

Values are already in base units (seconds, bytes, ratios 0..1): sinks never do math.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

OTHER = "[other]"
PROGRAM_LABELS = ("id", "name", "type", "tag", "ours")
PROGRAM_ATTRS = (
    "bpf.program.id",
    "bpf.program.name",
    "bpf.program.type",
    "bpf.program.tag",
    "linnix.ours",
)
# The "[other]" program row: every program without a series of its own.
OTHER_PROGRAM = ("", OTHER, "", "", "false")
OWNER_LABELS = ("owner_comm", "namespace", "pod")
OWNER_ATTRS = ("process.command", "k8s.namespace.name", "k8s.pod.name")


@dataclass(frozen=True)
class Family:
    prom: str  # Prometheus name; counters end in _total
    otel: str | None  # OpenTelemetry name; None: not pushed (see `why_not_otel`)
    kind: str  # "counter" | "gauge" | "updown" | "histogram"
    unit: str  # UCUM unit for OTel ("s", "By", "1", "{run}")
    help: str
    labels: tuple[str, ...] = ()  # Prometheus label names
    attrs: tuple[str, ...] = ()  # OTel attribute names, same order as labels


F = Family


class PushStatus(NamedTuple):
    """The OTLP sink's own record, for /metrics (a failing push cannot report itself)."""

    ok: int
    failed: int
    last_ok_wall_time: float  # 0.0 until the first accepted push


@dataclass(frozen=True)
class Figure:
    family: Family
    labels: tuple[str, ...]
    value: float
    # CLOCK_BOOTTIME ns when this series began counting, for counters that count from
    # before the exporter started (a program's since its load); 0: since our start.
    since_boot_ns: int = 0


@dataclass(frozen=True)
class HistogramFigure:
    family: Family
    buckets: tuple[tuple[float, float], ...]  # (upper bound in s, cumulative count); +Inf last
    count: float
    sum: float

    def per_bucket(self) -> tuple[list[float], list[int]]:
        """OTLP's shape: the explicit bounds (+Inf left out) and each bucket's own count
        (Prometheus' counts are cumulative)."""
        cumulative = [int(c) for _, c in self.buckets]
        counts = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
        return [b for b, _ in self.buckets[:-1]], counts


# fig(prom, value, *labels, since_boot_ns=0): a Figure of the catalogue's family `prom`.
FigureMaker = Callable[..., Figure]
