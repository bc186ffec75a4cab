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


VERIFICATION = (REPO / "docs" / "verification.md").read_text()


def verification_rows() -> list[tuple[set[str], list[tuple[str, str]]]]:
    """docs/verification.md's table: (the families a row names, the tests it names as
    `file.py::test_name`)."""
    rows = []
    for line in VERIFICATION.splitlines():
        if not line.startswith(("| `linnix_", "| `process_")):
            continue
        cells = line.split(" | ")
        families = set(re.findall(r"`((?:linnix|process)_[a-z_]+)`", cells[0]))
        tests = re.findall(r"\b([a-z_]+\.py)::([A-Za-z0-9_]+)", cells[1])
        rows.append((families, tests))
    return rows


def test_verification_doc_has_a_row_for_every_served_family() -> None:
    documented = set().union(*(families for families, _ in verification_rows()))
    served = exported_names()
    assert not served - documented, f"served, no row in docs/verification.md: {served - documented}"
    assert not documented - served, f"rows for families not served: {documented - served}"


def test_verification_doc_names_tests_that_exist() -> None:
    for families, tests in verification_rows():
        assert tests, f"a row names no test: {sorted(families)}"
        for file, name in tests:
            path = REPO / "tests" / file
            assert path.exists(), f"{file} (row {sorted(families)})"
            assert re.search(rf"^def {name}\(", path.read_text(), re.M), (
                f"{file}::{name} (row {sorted(families)}) does not exist"
            )


def test_every_family_not_pushed_says_why() -> None:
    """A family left out of OTLP has a row in README's mapping table saying why."""
    from linnix_exporter.figures import FAMILIES

    for name in [f.prom for f in FAMILIES.values() if f.otel is None]:
        assert re.search(rf"^\| `{name}` \| \(not pushed: ", README, re.M), name
