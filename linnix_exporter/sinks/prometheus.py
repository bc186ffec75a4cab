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

from linnix_exporter.figures import Family, Figure, PushStatus, figures
from linnix_exporter.tick import Tick


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _family(f: Family) -> Metric:
    labels = list(f.labels)
    if f.kind == "counter":
        return CounterMetricFamily(f.prom, f.help, labels=labels)
    return GaugeMetricFamily(f.prom, f.help, labels=labels)


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
