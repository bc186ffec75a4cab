"""The README stays true: its metrics table and option table match what the code does."""

from __future__ import annotations

import re

from linnix_exporter.config import RUN_OPTIONS
from linnix_exporter.figures import PushStatus
from linnix_exporter.sinks.prometheus import TickCollector
from tests.kernel_helpers import REPO
from tests.test_prometheus_sink import make_tick

README = (REPO / "README.md").read_text()


def exported_names() -> set[str]:
    names = set()
    tick = make_tick()
    push = PushStatus(3, 1, 1.0)  # OTLP on: its self-metrics appear too
    for fam in TickCollector(lambda: tick, lambda: 0, lambda: push).collect():
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
    return names


def test_metrics_table_matches_exporter() -> None:
    table = set(re.findall(r"^\| `((?:linnix|process)_[a-z_]+)` \| [a-z]+ \|", README, re.M))
    assert table == exported_names()


def test_every_option_documented() -> None:
    for o in RUN_OPTIONS:
        assert f"`{o.flag}`" in README, o.flag
        assert o.env.removeprefix("LINNIX_EXPORTER_") in README, o.env


def test_otel_mapping_table_matches_catalogue() -> None:
    from linnix_exporter.figures import FAMILIES

    rows = dict(re.findall(r"^\| `((?:linnix|process)_[a-z_]+)` \| `([a-z_.]+)`", README, re.M))
    pushed = {f.prom: f.otel for f in FAMILIES.values() if f.otel}
    assert rows == pushed


def test_every_family_not_pushed_says_why() -> None:
    """A family left out of OTLP has a row in README's mapping table saying why."""
    from linnix_exporter.figures import FAMILIES

    for name in [f.prom for f in FAMILIES.values() if f.otel is None]:
        assert re.search(rf"^\| `{name}` \| \(not pushed: ", README, re.M), name
