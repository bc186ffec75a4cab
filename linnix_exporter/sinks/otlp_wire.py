"""The OTLP/HTTP request body written directly in protobuf's wire format.

An ExportMetricsServiceRequest built from one tick's figures, the same message
otlp.metrics_data + the OTLP package's encode_metrics build (tests/test_otlp_wire.py
decodes both with the real opentelemetry-proto classes and compares them), without
either: the SDK's metrics data model and the generated protobuf classes cost ~4 MiB
resident on import, a tenth of the 40 MB goal, and each push built two object trees
(the SDK's, then protobuf's) of every data point. Only the field numbers below are
needed (opentelemetry/proto/metrics/v1/metrics.proto, common/v1/common.proto).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping

from linnix_exporter.figures import Family, Figure, HistogramFigure, figures
from linnix_exporter.tick import Tick

# One OTLP metric: its family and its points, each a figure with its start time.
Points = tuple[Family, list[tuple[Figure | HistogramFigure, int]]]


def points_by_metric(
    tick: Tick | None, errors_total: int, start_ns: int, boot_ns: int
) -> dict[str, Points]:
    """One tick's figures grouped by OTel metric name, in order of first figure, each
    with its point's start time: cumulative series (counters, up-down sums, histograms)
    start at `start_ns` (when the exporter started), or, for a series that counts from
    earlier (a program loaded before us), at `boot_ns` (boot_unix_ns(), taken once so
    a series' start never moves) + its boottime stamp; gauges at 0. A family without an
    OTel name is left out; a histogram is one point. What both OTLP encoders walk
    (otlp.metrics_data for gRPC, WireEncoder for HTTP)."""
    out: dict[str, Points] = {}
    for fig in figures(tick, errors_total):
        fam = fig.family
        if fam.otel is None:
            continue
        if isinstance(fig, HistogramFigure):
            out[fam.otel] = (fam, [(fig, start_ns)])
            continue
        start = 0
        if fam.kind in ("counter", "updown"):
            start = boot_ns + fig.since_boot_ns if fig.since_boot_ns else start_ns
        out.setdefault(fam.otel, (fam, []))[1].append((fig, start))
    return out


_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, ten bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _message(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


def _string(field: int, s: str) -> bytes:
    return _message(field, s.encode()) if s else b""  # proto3: "" is not written


def _fixed64(field: int, n: int) -> bytes:
    return _tag(field, 1) + _FIXED64.pack(n) if n else b""


def _double(field: int, x: float) -> bytes:
    return _tag(field, 1) + _DOUBLE.pack(x)


def _any_value(v: object) -> bytes:
    """AnyValue, by Python type as the OTLP encoder chooses it (bool before int)."""
    if isinstance(v, bool):
        return _tag(2, 0) + _varint(int(v))
    if isinstance(v, int):
        return _tag(3, 0) + _varint(v)
    if isinstance(v, float):
        return _double(4, v)
    return _message(1, str(v).encode())


def key_values(field: int, attrs: Iterable[tuple[str, object]]) -> bytes:
    """Repeated KeyValue (key = 1, value = 2) in `field`."""
    return b"".join(_message(field, _string(1, k) + _message(2, _any_value(v))) for k, v in attrs)


class WireEncoder:
    """One per sink: the resource, the scope and each family's metric header are
    written once; a point's attributes once per label set, kept while the label set is
    in the push (on a crowded node the listing turns over: old sets would pile up)."""

    def __init__(
        self,
        resource_attributes: Mapping[str, object],
        resource_schema_url: str,
        scope_name: str,
        scope_version: str,
    ) -> None:
        self._resource = _message(1, key_values(1, resource_attributes.items()))
        self._resource_schema = _string(3, resource_schema_url)
        self._scope = _message(1, _string(1, scope_name) + _string(2, scope_version))
        self._headers: dict[str, bytes] = {}
        self._attrs: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}  # last push's
        self._used: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}  # this push's

    def _header(self, fam: Family, name: str) -> bytes:
        h = self._headers.get(name)
        if h is None:
            h = self._headers[name] = _string(1, name) + _string(2, fam.help) + _string(3, fam.unit)
        return h

    def _attributes(self, field: int, names: tuple[str, ...], labels: tuple[str, ...]) -> bytes:
        key = (names, labels)
        a = self._used.get(key) or self._attrs.get(key)
        if a is None:
            a = key_values(field, zip(names, labels, strict=True))
        self._used[key] = a
        return a

    def encode(self, tick: Tick | None, errors_total: int, start_ns: int, boot_ns: int) -> bytes:
        """otlp.metrics_data's message: points stamped with the tick's time; cumulative
        series start at `start_ns` or at their own boottime stamp + `boot_ns`."""
        now_ns = int(tick.snapshot.wall_time * 1e9) if tick else time.time_ns()
        now = _FIXED64.pack(now_ns)
        self._used = {}
        metrics = []
        for name, (fam, pts) in points_by_metric(tick, errors_total, start_ns, boot_ns).items():
            encoded = []
            for fig, start in pts:
                if isinstance(fig, HistogramFigure):
                    bounds, counts = fig.per_bucket()
                    point = (
                        _fixed64(2, start)
                        + _tag(3, 1)
                        + now
                        + _fixed64(4, int(fig.count))
                        + _double(5, fig.sum)
                        + _message(6, struct.pack(f"<{len(counts)}Q", *counts))
                        + _message(7, struct.pack(f"<{len(bounds)}d", *bounds))
                    )
                else:
                    point = (
                        _fixed64(2, start)
                        + _tag(3, 1)
                        + now
                        + _tag(4, 1)
                        + _DOUBLE.pack(fig.value)
                        + (self._attributes(7, fam.attrs, fig.labels) if fam.attrs else b"")
                    )
                encoded.append(_message(1, point))
            body = b"".join(encoded)
            if fam.kind == "histogram":
                data = _message(9, body + _tag(2, 0) + _varint(_CUMULATIVE))
            elif fam.kind in ("counter", "updown"):
                monotonic = _tag(3, 0) + b"\x01" if fam.kind == "counter" else b""
                data = _message(7, body + _tag(2, 0) + _varint(_CUMULATIVE) + monotonic)
            else:
                data = _message(5, body)
            metrics.append(_message(2, self._header(fam, name) + data))
        self._attrs = self._used
        scope_metrics = _message(2, self._scope + b"".join(metrics))
        return _message(1, self._resource + scope_metrics + self._resource_schema)
