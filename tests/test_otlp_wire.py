"""otlp_wire.WireEncoder writes the ExportMetricsServiceRequest that otlp.metrics_data
and the OTLP package's encode_metrics build: both decoded by the real
opentelemetry-proto classes and compared field by field, on hand-built ticks."""

from __future__ import annotations

import dataclasses

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from linnix_exporter.sinks.otlp import SCOPE, make_resource, metrics_data
from linnix_exporter.sinks.otlp_wire import WireEncoder, _varint, key_values
from linnix_exporter.tick import Tick
from linnix_exporter.topk import TopKView
from tests.test_prometheus_sink import make_tick

START_NS = 1_765_000_000_000_000_000
BOOT_NS = 1_764_990_000_000_000_000


def check(tick: Tick | None, errors: int = 0) -> ExportMetricsServiceRequest:
    resource = make_resource("node-a")  # OTEL_RESOURCE_ATTRIBUTES merged from the env
    wire = WireEncoder(resource.attributes, resource.schema_url, SCOPE.name, SCOPE.version or "")
    ours = ExportMetricsServiceRequest.FromString(wire.encode(tick, errors, START_NS, BOOT_NS))
    sdk = encode_metrics(metrics_data(tick, errors, resource, START_NS, BOOT_NS))
    assert ours == sdk
    return ours


def test_same_message_as_the_sdk_on_a_full_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ebpf")
    req = check(make_tick(), errors=2)
    metrics = req.resource_metrics[0].scope_metrics[0].metrics
    kinds = {m.WhichOneof("data") for m in metrics}
    assert kinds == {"sum", "gauge", "histogram"}  # every kind was compared
    assert any(len(m.sum.data_points) > 1 for m in metrics)  # and points with attributes
    attrs = {a.key: a.value for a in req.resource_metrics[0].resource.attributes}
    assert attrs["process.pid"].int_value > 0  # an int attribute, as the SDK types it
    assert attrs["team"].string_value == "ebpf"


def test_same_message_with_no_tick_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tick: points stamped with the clock, frozen here at one reading."""
    monkeypatch.setattr("time.time_ns", lambda: 1_765_000_123_000_000_000)
    req = check(None, errors=1)
    assert req.resource_metrics[0].scope_metrics[0].metrics  # build info and errors


@pytest.mark.parametrize("value", [0.0, -1.5, 1e300, float("inf")])
def test_values_and_odd_labels(value: float) -> None:
    tick = make_tick()
    odd = [p._replace(name='q"\\\nü') if p.id == 2 else p for p in tick.snapshot.programs]
    snap = dataclasses.replace(tick.snapshot, programs=tuple(odd))
    tick = dataclasses.replace(
        tick,
        snapshot=snap,
        program_by_key={p.identity: p for p in odd},
        programs=TopKView(listed=tick.programs.listed, rest=(value, 1, 0), rest_keys=1),
        budget_ratio=value,
    )
    check(tick)


def test_varints_by_hand() -> None:
    """Worked from the protobuf encoding guide: 150 is 96 01; -1 as int64 is ten bytes."""
    assert _varint(0) == b"\x00"
    assert _varint(150) == b"\x96\x01"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"
    # KeyValue{key: "a", value: {bool_value: true}} in field 7: 3a 07 0a 01 61 12 02 10 01
    assert key_values(7, [("a", True)]) == bytes.fromhex("3a070a016112021001")
