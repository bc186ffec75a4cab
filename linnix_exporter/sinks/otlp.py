"""OTLP sink: pushes the same figures as /metrics to an OpenTelemetry collector.

Each push turns one Tick's figures (figures.py) into the OpenTelemetry SDK's metrics data
model (MetricsData) and hands it to an OTLP exporter, so every data point of a push
describes the tick /metrics serves, stamped with that tick's time. The SDK's
instrument/aggregation pipeline is skipped on purpose: our values are already cumulative
snapshots read from the kernel, re-aggregating them cost ~2.5 ms of the ~6 ms a push
took, and skipping it also lets the lifetime buckets go out as a real OTLP histogram
(the API has no observable histogram).

This module calls the exporter itself: it sees each push's result, logs once per state
change instead of once per attempt, and never queues data, so a dead or slow collector
costs one bounded, timed-out call per interval and no memory.

The gRPC exporter (and grpcio, ~10 MB resident) is imported only when gRPC is chosen;
HTTP/protobuf uses our stdlib transport (otlp_http.py) instead of the SDK's, which would
bring `requests` (~6 MB), and writes the request itself (otlp_wire.py): the SDK's data
model and the protobuf classes (~4 MB) are imported only for gRPC.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from linnix_exporter import __version__, log
from linnix_exporter.config import OtlpSettings
from linnix_exporter.figures import HistogramFigure, PushStatus
from linnix_exporter.kernel.host import name_thread
from linnix_exporter.sinks.otlp_http import HttpMetricExporter
from linnix_exporter.sinks.otlp_wire import WireEncoder, points_by_metric
from linnix_exporter.tick import Tick

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData

_log = log.get("otlp")

SCOPE = InstrumentationScope("linnix_exporter", __version__)


def boot_unix_ns() -> int:
    """Unix time of boot in ns: CLOCK_BOOTTIME stamps (program load times) + this."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def metrics_data(
    tick: Tick | None, errors_total: int, resource: Resource, start_ns: int, boot_ns: int
) -> MetricsData:
    """One tick's figures in the SDK's data model, points stamped with the tick's time
    and started as otlp_wire.points_by_metric says. The gRPC exporter's input;
    otlp_wire.WireEncoder writes the same message for HTTP."""
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )

    # Counters stay monotonic across pushes, like /metrics: every Sum and Histogram is
    # built cumulative (the exporters' own temporality preference only applies to the
    # SDK's instrument pipeline, which this sink does not use).
    temporality = AggregationTemporality.CUMULATIVE
    now_ns = int(tick.snapshot.wall_time * 1e9) if tick else time.time_ns()
    metrics = []
    for name, (fam, pts) in points_by_metric(tick, errors_total, start_ns, boot_ns).items():
        points: list[Any] = []
        for fig, start in pts:
            if isinstance(fig, HistogramFigure):
                bounds, counts = fig.per_bucket()
                points.append(
                    HistogramDataPoint(
                        attributes={},
                        start_time_unix_nano=start,
                        time_unix_nano=now_ns,
                        count=int(fig.count),
                        sum=fig.sum,
                        bucket_counts=counts,
                        explicit_bounds=bounds,
                        # Unknown: the kernel keeps buckets, not extremes (optional).
                        min=None,  # type: ignore[arg-type]
                        max=None,  # type: ignore[arg-type]
                    )
                )
            else:
                attrs = dict(zip(fam.attrs, fig.labels, strict=True))
                points.append(NumberDataPoint(attrs, start, now_ns, fig.value))
        data: Sum | Gauge | Histogram
        if fam.kind == "histogram":
            data = Histogram(points, temporality)
        elif fam.kind in ("counter", "updown"):
            data = Sum(points, temporality, is_monotonic=fam.kind == "counter")
        else:
            data = Gauge(points)
        metrics.append(Metric(name, fam.help, fam.unit, data))
    scope = ScopeMetrics(SCOPE, metrics, "")
    return MetricsData([ResourceMetrics(resource, [scope], "")])


def make_exporter(s: OtlpSettings) -> MetricExporter | HttpMetricExporter:
    if s.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=s.endpoint,
            insecure=s.insecure,
            headers=s.headers,
            timeout=s.timeout_seconds,
        )
    return HttpMetricExporter(
        s.endpoint, s.headers, s.timeout_seconds, compress=s.compression == "gzip", tls=s.tls
    )


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
        fresh: Callable[[], Tick | None],  # schedule.Ticker.fresh: may tick on demand
        errors: Callable[[], int],
        resource: Resource,
        exporter: MetricExporter | HttpMetricExporter | None = None,
    ) -> None:
        self.settings = settings
        self._fresh = fresh
        self._errors = errors
        self._resource = resource
        self._start_ns = time.time_ns()
        self._boot_ns = boot_unix_ns()
        self._exporter = exporter or make_exporter(settings)
        self._wire = WireEncoder(
            resource.attributes, resource.schema_url, SCOPE.name, SCOPE.version or ""
        )
        self._healthy: bool | None = None
        # Read by scrapes from another thread: replaced whole (one immutable tuple).
        self.status = PushStatus(0, 0, 0.0)
        self._sdk_errors = _LastError()
        sdk_log = logging.getLogger("opentelemetry")
        sdk_log.addHandler(self._sdk_errors)
        sdk_log.propagate = False
        sdk_log.setLevel(logging.WARNING)

    def push(self) -> bool:
        """Collect the newest tick and export it once; True if the collector took it."""
        ok = self._export()
        st = self.status
        self.status = (
            PushStatus(st.ok + 1, st.failed, time.time())
            if ok
            else PushStatus(st.ok, st.failed + 1, st.last_ok_wall_time)
        )
        transport_error = getattr(self._exporter, "last_error", None)
        if not ok and transport_error:
            self._sdk_errors.message = str(transport_error)
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

    def _export(self) -> bool:
        exporter, timeout = self._exporter, self.settings.timeout_seconds
        try:
            tick, errors = self._fresh(), self._errors()
            if isinstance(exporter, HttpMetricExporter):
                body = self._wire.encode(tick, errors, self._start_ns, self._boot_ns)
                return exporter.post(body, timeout)
            from opentelemetry.sdk.metrics.export import MetricExportResult

            data = metrics_data(tick, errors, self._resource, self._start_ns, self._boot_ns)
            return (
                exporter.export(data, timeout_millis=timeout * 1000) is MetricExportResult.SUCCESS
            )
        except Exception as e:  # an exporter bug must not end the push loop
            self._sdk_errors.message = f"{type(e).__name__}: {e}"
            return False

    def run(self, stop: threading.Event) -> None:
        """Push every export interval until `stop` is set. On demand (the default), the
        push reads a tick taken at that moment: one wake-up for both."""
        name_thread("linnix-otlp")
        while not stop.wait(self.settings.interval_seconds):
            self.push()

    def shutdown(self) -> None:
        self._exporter.shutdown(timeout_millis=2000)
