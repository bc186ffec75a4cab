"""TickCollector.exposition writes the /metrics body itself: byte for byte what
prometheus_client's encoders write for the same collector (text 0.0.4 and OpenMetrics),
checked on the sink's hand-built tick, on awkward label values and values, and through
the HTTP server's format choice (web.direct_format)."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from prometheus_client import openmetrics
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_om
from prometheus_client.registry import CollectorRegistry

from linnix_exporter.figures import PushStatus
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.tick import Tick
from linnix_exporter.topk import TopKView
from linnix_exporter.web import direct_format
from tests.fixtures import prog
from tests.test_prometheus_sink import make_tick


def both(c: TickCollector) -> None:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    assert c.exposition(False) == generate_latest(reg)
    assert c.exposition(True) == generate_om(reg)


def test_same_bytes_as_prometheus_client_on_a_full_tick() -> None:
    tick = make_tick()
    both(TickCollector(lambda: tick, lambda: 3, lambda: PushStatus(7, 2, 1234.5)))
    body = TickCollector(lambda: tick, lambda: 0).exposition(False).decode()
    assert "linnix_process_lifetime_seconds_bucket" in body  # the histogram is in it
    assert "linnix_bpf_program_runs_total{" in body


def test_same_bytes_with_no_tick_yet() -> None:
    both(TickCollector(lambda: None, lambda: 0))


@pytest.mark.parametrize(
    "name",
    ['quo"te', "back\\slash", "new\nline", 'all\\"\n', "ünïcode", ""],
)
def test_label_values_escaped_as_prometheus_client_does(name: str) -> None:
    """Program names come from the kernel (BTF or 15 bytes of anything)."""
    tick = make_tick()
    odd = [p._replace(name=name) if p.id == 2 else p for p in tick.snapshot.programs]
    snap = dataclasses.replace(tick.snapshot, programs=tuple(odd))
    tick = dataclasses.replace(tick, snapshot=snap, program_by_key={p.identity: p for p in odd})
    body = TickCollector(lambda: tick, lambda: 0).exposition(False).decode()
    escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    assert f'name="{escaped}"' in body  # the odd name is served, escaped
    both(TickCollector(lambda: tick, lambda: 0))


@pytest.mark.parametrize("value", [0, 1e-9, 12345678.0, 1.5e21, float("inf"), float("nan")])
def test_values_formatted_as_prometheus_client_does(value: float) -> None:
    """Go-style exponents from 1e7 up, +Inf, NaN: floatToGoString, shared."""
    tick = make_tick()
    programs = TopKView(listed={}, rest=(value, 1, 0), rest_keys=1)
    tick = dataclasses.replace(tick, programs=programs, budget_ratio=value)
    both(TickCollector(lambda: tick, lambda: 0))


def test_direct_only_for_the_default_escaping() -> None:
    """The server writes directly the two formats exposition() writes, and leaves the
    escaping schemes a scraper may ask for to prometheus_client."""
    prometheus_242 = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert direct_format(choose_encoder(prometheus_242)[0]) is True
    assert direct_format(choose_encoder("")[0]) is False  # curl, wrk
    assert direct_format(choose_encoder("text/plain;version=0.0.4")[0]) is False
    dots = "application/openmetrics-text;version=1.0.0;escaping=dots"
    assert direct_format(choose_encoder(dots)[0]) is None
    utf8 = "text/plain;version=1.0.0;escaping=allow-utf-8"
    assert direct_format(choose_encoder(utf8)[0]) is None
    assert direct_format(functools.partial(lambda r: b"", escaping="underscores")) is None
    assert openmetrics.exposition.UNDERSCORES == "underscores"


def test_program_names_survive_a_tick_type_change() -> None:
    """The per-family headers are cached by name: a second tick with other families
    (no probes, no owners) still writes exactly what prometheus_client writes."""
    full = make_tick()
    bare = Tick(
        snapshot=dataclasses.replace(full.snapshot, programs=(prog(5, 10, 1, name="x"),)),
        rates=None,
        programs=TopKView(listed={}, rest=(0, 0, 0), rest_keys=0),
        comms=TopKView(listed={}, rest=(0, 0, 0, 0), rest_keys=0),
        budget_ratio=0.0,
        collect_seconds=0.001,
        seq=1,
    )
    ticks = [full]
    c = TickCollector(lambda: ticks[-1], lambda: 0)
    both(c)
    ticks.append(bare)
    both(c)


def test_label_cache_keeps_only_the_last_body() -> None:
    """A crowded node's listing turns over: label sets of programs no longer listed are
    dropped, so the cache holds at most one body's labelled samples."""
    base = make_tick()
    ticks = [base]
    c = TickCollector(lambda: ticks[-1], lambda: 0)
    for i in range(30):
        progs = [p._replace(name=f"turn{i}_{p.id}") for p in base.snapshot.programs]
        snap = dataclasses.replace(base.snapshot, programs=tuple(progs))
        ticks.append(
            dataclasses.replace(base, snapshot=snap, program_by_key={p.identity: p for p in progs})
        )
        body = c.exposition(False).decode()
    labelled = sum(1 for ln in body.splitlines() if "{" in ln and not ln.startswith("#"))
    assert 0 < len(c._pairs) <= labelled
    assert all("turn29_" in v or "turn" not in v for v in c._pairs.values())
