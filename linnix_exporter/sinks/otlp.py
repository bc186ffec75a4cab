"""OTLP sink: pushes the same figures as /metrics to an OpenTelemetry collector.

Instruments are observable, and their callbacks only return figures computed once per
push from one pinned Tick (figures.py), so every data point of a push describes the same
tick that /metrics serves. Collection is on demand (InMemoryMetricReader) and this
module calls the exporter itself: it sees each push's result, logs once per state
change instead of once per attempt, and never queues data, so a dead or slow collector
costs one bounded, timed-out call per interval and no memory.

The gRPC exporter (and grpcio, ~10 MB resident) is imported only when gRPC is chosen;
HTTP/protobuf uses our stdlib transport (otlp_http.py) instead of the SDK's, which would
bring `requests` (~6 MB).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
)
from opentelemetry.sdk.resources import Resource

from linnix_exporter import __version__, log
from linnix_exporter.config import OtlpSettings
from linnix_exporter.figures import FAMILIES, Family, Figure, HistogramFigure, figures
from linnix_exporter.state import Tick

_log = log.get("otlp")

# Cumulative everywhere: counters stay monotonic across pushes, like /metrics.
_CUMULATIVE: dict[type, AggregationTemporality] = {
    k: AggregationTemporality.CUMULATIVE
    for k in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


def make_exporter(s: OtlpSettings) -> MetricExporter:
    if s.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=s.endpoint,
            insecure=s.insecure,
            headers=s.headers,
            timeout=s.timeout_seconds,
            preferred_temporality=_CUMULATIVE,
        )
    from linnix_exporter.sinks.otlp_http import HttpMetricExporter

    return HttpMetricExporter(s.endpoint, s.headers, s.timeout_seconds, _CUMULATIVE)


def make_resource(node_name: str = "", env: dict[str, str] | None = None) -> Resource:
    """service.name (OTEL_SERVICE_NAME wins, else ours), service.version, host.name,
    process.pid, k8s.node.name when given; OTEL_RESOURCE_ATTRIBUTES merged by the SDK."""
    env = dict(os.environ) if env is None else env
    attrs: dict[str, Any] = {
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    if node_name:
        attrs["k8s.node.name"] = node_name
    from_env = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not from_env:
        attrs["service.name"] = "linnix-exporter"
    return Resource.create(attrs)


class _LastError(logging.Handler):
    """Keeps the SDK exporter's last complaint instead of printing one per retry."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = " ".join(record.getMessage().split())[:300]


class OtlpSink:
    def __init__(
        self,
        settings: OtlpSettings,
        latest: Callable[[], Tick | None],
        errors: Callable[[], int],
        resource: Resource,
        exporter: MetricExporter | None = None,
    ) -> None:
        self.settings = settings
        self._latest = latest
        self._errors = errors
        self._exporter = exporter or make_exporter(settings)
        self._reader = InMemoryMetricReader(preferred_temporality=_CUMULATIVE)
        self._provider = MeterProvider(resource=resource, metric_readers=[self._reader])
        self._pinned: dict[str, list[Observation]] = {}
        self._healthy: bool | None = None
        self.pushes = {"success": 0, "failure": 0}
        self._sdk_errors = _LastError()
        sdk_log = logging.getLogger("opentelemetry")
        sdk_log.addHandler(self._sdk_errors)
        sdk_log.propagate = False
        sdk_log.setLevel(logging.WARNING)
        meter = self._provider.get_meter("linnix_exporter", __version__)
        for fam in FAMILIES.values():
            if fam.otel is not None:
                self._instrument(meter, fam)

    def _instrument(self, meter: Any, fam: Family) -> None:
        assert fam.otel is not None
        if fam.kind == "histogram":
            # The API has no observable histogram, and the kernel gives cumulative log2
            # buckets, not samples: push them as counters (count, sum, bucket{le}).
            for suffix, unit in (
                (".count", "{process}"),
                (".sum", fam.unit),
                (".bucket", "{process}"),
            ):
                name = fam.otel + suffix
                meter.create_observable_counter(name, [self._callback(name)], unit, fam.help)
            return
        make = {
            "counter": meter.create_observable_counter,
            "gauge": meter.create_observable_gauge,
            "updown": meter.create_observable_up_down_counter,
        }[fam.kind]
        make(fam.otel, [self._callback(fam.otel)], fam.unit, fam.help)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return self._pinned.get(name, [])

        return observe

    def _pin(self, tick: Tick | None) -> None:
        """Turn one tick into observations, before the SDK calls the callbacks."""
        pinned: dict[str, list[Observation]] = {}
        for fig in figures(tick, self._errors()):
            fam = fig.family
            if fam.otel is None:
                continue
            if isinstance(fig, HistogramFigure):
                pinned[fam.otel + ".count"] = [Observation(fig.count)]
                pinned[fam.otel + ".sum"] = [Observation(fig.sum)]
                pinned[fam.otel + ".bucket"] = [
                    Observation(c, {"le": "+Inf" if b == float("inf") else repr(b)})
                    for b, c in fig.buckets
                ]
            elif isinstance(fig, Figure):
                attrs = dict(zip(fam.attrs, fig.labels, strict=True))
                pinned.setdefault(fam.otel, []).append(Observation(fig.value, attrs))
        self._pinned = pinned

    def push(self) -> bool:
        """Collect the newest tick and export it once; True if the collector took it."""
        self._pin(self._latest())
        data = self._reader.get_metrics_data()
        if data is None:  # only after shutdown
            return False
        try:
            result = self._exporter.export(
                data, timeout_millis=self.settings.timeout_seconds * 1000
            )
        except Exception as e:  # an exporter bug must not end the push loop
            self._sdk_errors.message = f"{type(e).__name__}: {e}"
            result = MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        transport_error = getattr(self._exporter, "last_error", None)
        if not ok and transport_error:
            self._sdk_errors.message = str(transport_error)
        self.pushes["success" if ok else "failure"] += 1
        if ok != self._healthy:
            if ok:
                _log.info("otlp export ok", endpoint=self.settings.endpoint)
            else:
                _log.warning(
                    "otlp export failing",
                    endpoint=self.settings.endpoint,
                    error=self._sdk_errors.message or None,
                )
            self._healthy = ok
        return ok

    def run(self, stop: threading.Event) -> None:
        """Push every export interval until `stop` is set."""
        while not stop.wait(self.settings.interval_seconds):
            self.push()

    def shutdown(self) -> None:
        self._exporter.shutdown(timeout_millis=2000)
        self._provider.shutdown()
