"""log.py's lines: fields in order, levels filtered, both renderers (fixtures, no I/O
but a captured stderr)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from linnix_exporter import log


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []
    log.configure("info", sink=got.append)
    yield got
    log.configure("info", "json")


def test_fields_in_order_and_levels_filtered(lines: list[dict[str, Any]]) -> None:
    lg = log.get("hooks")
    lg.debug("not shown")
    lg.info("calibrated %d kinds", 4, hook="uprobe", cost_ns=16000.5)
    lg.warning("held", by=12)
    assert [list(f) for f in lines] == [
        ["timestamp", "level", "event", "hook", "cost_ns"],
        ["timestamp", "level", "event", "by"],
    ]
    assert [(f["level"], f["event"]) for f in lines] == [
        ("info", "calibrated 4 kinds"),
        ("warning", "held"),
    ]
    stamp = lines[0]["timestamp"]  # 2026-12-07T05:51:21.799844Z
    assert len(stamp) == 27 and stamp[10] == "T" and stamp.endswith("Z")
    log.configure("error", sink=lines.append)
    lg.warning("below error")
    lg.error("failed", error="EPERM")
    assert [f["event"] for f in lines[2:]] == ["failed"]


def test_renderers() -> None:
    fields = {
        "timestamp": "2026-12-07T05:51:21.799844Z",
        "level": "error",
        "event": "collector failed",
        "collector": "hooks",
        "obj": object,
    }
    assert json.loads(log.json_line(fields)) == {**fields, "obj": repr(object)}
    assert log.console_line(fields) == (
        "2026-12-07T05:51:21.799844Z [error    ] collector failed               "
        "collector=hooks obj=<class 'object'>"
    )
    assert log.console_line({**fields, "collector": None, "obj": 1}).endswith("obj=1")


def test_json_on_stderr_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("info", "auto")  # pytest's captured stderr is no terminal
    log.get("web").info("listening", port=10924)
    out = json.loads(capsys.readouterr().err)
    assert (out["event"], out["port"]) == ("listening", 10924)
    log.configure("info", "json")
