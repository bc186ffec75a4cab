"""Prometheus sink: a custom Collector that renders one Tick's figures (figures.py) as
metric families. It reads the newest Tick once per scrape, so a scrape never mixes two
collections, and it does no arithmetic: names, units and values come from figures.py."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from linnix_exporter.figures import Family, Figure, PushStatus, figures
from linnix_exporter.tick import Tick

# How both encoders write a value (Go's exponents from 1e7 up, +Inf, NaN); untyped there.
_go_float: Callable[[float], str] = floatToGoString


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _family(f: Family) -> Metric:
    labels = list(f.labels)
    if f.kind == "counter":
        return CounterMetricFamily(f.prom, f.help, labels=labels)
    return GaugeMetricFamily(f.prom, f.help, labels=labels)


def _escape(value: str) -> str:
    """A label value as both formats write it: backslash, newline and quote escaped."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _Header:
    """What a family writes once per body: its HELP/TYPE lines in each format, the
    name its samples carry, and its labels in the order both formats sort them."""

    __slots__ = ("names", "openmetrics", "order", "sample", "text")

    def __init__(self, f: Family) -> None:
        base = f.prom[:-6] if f.kind == "counter" and f.prom.endswith("_total") else f.prom
        kind = {"counter": "counter", "histogram": "histogram"}.get(f.kind, "gauge")
        text_name = base + "_total" if kind == "counter" else base
        text_help = f.help.replace("\\", r"\\").replace("\n", r"\n")
        self.text = f"# HELP {text_name} {text_help}\n# TYPE {text_name} {kind}\n"
        self.openmetrics = f"# HELP {base} {_escape(f.help)}\n# TYPE {base} {kind}\n"
        self.sample = text_name
        self.order = sorted(range(len(f.labels)), key=f.labels.__getitem__)
        self.names = [f'{f.labels[i]}="' for i in self.order]

    def pairs(self, labels: tuple[str, ...]) -> str:
        """`name="value",...` sorted by name, values escaped."""
        return ",".join(
            [n + _escape(labels[i]) + '"' for n, i in zip(self.names, self.order, strict=True)]
        )


class TickCollector(Collector):
    def __init__(
        self,
        latest: Callable[[], Tick | None],
        errors: Callable[[], int],
        push_status: Callable[[], PushStatus | None] = lambda: None,
    ) -> None:
        self._latest = latest
        self._errors = errors
        self._push_status = push_status
        self._headers: dict[str, _Header] = {}
        self._pairs: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}

    def version(self) -> Hashable:
        """Changes whenever collect() would yield other figures: a new tick, a counted
        collect error, a push. The HTTP server caches the encoded body per version. A
        getter: never ticks (the server asks for a fresh tick first: Server.refresh)."""
        tick = self._latest()
        return (tick.seq if tick is not None else 0, self._errors(), self._push_status())

    def collect(self) -> Iterator[Metric]:
        out: dict[str, Metric] = {}  # insertion-ordered: catalogue order per tick
        for fig in figures(self._latest(), self._errors(), self._push_status()):
            f = fig.family
            if isinstance(fig, Figure):
                metric = out.get(f.prom)
                if metric is None:
                    metric = out[f.prom] = _family(f)
                metric.add_metric(list(fig.labels), fig.value)  # type: ignore[attr-defined]
            else:
                hist = HistogramMetricFamily(f.prom, f.help)
                hist.add_metric([], [(_le(b), c) for b, c in fig.buckets], sum_value=fig.sum)
                out[f.prom] = hist
        yield from out.values()

    def exposition(self, openmetrics: bool) -> bytes:
        """The body prometheus_client's encoders would write for collect() (text format
        0.0.4, or OpenMetrics 1.0.0 with its default name escaping), written directly
        from the figures: at 2,000 programs their per-sample work (a Sample tuple, a
        dict of labels sorted per sample, per-character name escaping in OpenMetrics)
        cost 9-16 ms of the ~700 samples' body, the largest part of a cached scrape's
        miss. Our metric and label names are legacy Prometheus names, which both
        encoders leave as they are (tests/test_exposition.py compares the bytes)."""
        families: dict[str, tuple[_Header, list[str]]] = {}  # catalogue order per tick
        headers = self._headers
        # The listed programs' label sets repeat in each of their families and from one
        # tick to the next: each is written once. Only the last body's sets are kept
        # (on a crowded node the listing turns over, and old sets would pile up).
        last = self._pairs
        seen: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        for fig in figures(self._latest(), self._errors(), self._push_status()):
            f = fig.family
            entry = families.get(f.prom)
            if entry is None:
                h = headers.get(f.prom)
                if h is None:
                    h = headers[f.prom] = _Header(f)
                entry = families[f.prom] = (h, [])
            h, lines = entry
            if isinstance(fig, Figure):
                if fig.labels:
                    key = (f.labels, fig.labels)
                    pairs = seen.get(key) or last.get(key)
                    if pairs is None:
                        pairs = h.pairs(fig.labels)
                    seen[key] = pairs
                    lines.append(f"{h.sample}{{{pairs}}} {_go_float(fig.value)}\n")
                else:
                    lines.append(f"{h.sample} {_go_float(fig.value)}\n")
            else:
                name = h.sample
                lines.extend(
                    f'{name}_bucket{{le="{_le(b)}"}} {_go_float(c)}\n' for b, c in fig.buckets
                )
                lines.append(f"{name}_count {_go_float(fig.buckets[-1][1])}\n")
                lines.append(f"{name}_sum {_go_float(fig.sum)}\n")
        out = []
        for h, lines in families.values():
            out.append(h.openmetrics if openmetrics else h.text)
            out.extend(lines)
        self._pairs = seen
        if openmetrics:
            out.append("# EOF\n")
        return "".join(out).encode()
