"""`compare` carries the hook figures of `snapshot --collector.hooks` reports: each
program's whole price (run time + hooks) and its multiplier, beside the run time. The
reports are tests/fixtures/reports/{baseline,current}.json (10 s windows, 2 CPUs; see
tests/test_compare.py) with hook figures added here, worked out by hand:

handle_fork (tracepoint, 5 ms of run time in both windows):
  baseline hooks 10 ms -> whole 15 ms = 0.15 % of a core, 3.0x its run time
  current  hooks 45 ms -> whole 50 ms = 0.5 % of a core (+233.3 %), 10.0x
every other program: no hook cost (0 ns), whole = its run time, 1.0x (idle_prog: n/a)
totals: baseline 56.01 + 10 = 66.01 ms = 0.6601 % of a core, 66.01 / 56.01 = 1.2x
        current  65.53 + 45 = 110.53 ms = 1.105 % of a core, 110.53 / 65.53 = 1.7x
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from linnix_exporter import cli
from linnix_exporter.tools.compare_model import load_report
from tests.kernel_helpers import REPO
from tests.test_compare import assert_png

FIX = REPO / "tests" / "fixtures" / "reports"
WINDOW_NS = 10 * 1_000_000_000
HOOK_NS = {"baseline": 10_000_000, "current": 45_000_000}  # handle_fork's


def with_hooks(src: str, side: str, out: Path) -> str:
    """The fixture report with hook figures, as snapshot --collector.hooks writes them."""
    doc: dict[str, Any] = json.loads((FIX / src).read_text())
    total_hook = 0.0
    for prog in doc["program_stats"].values():
        hook = float(HOOK_NS[side]) if prog["name"] == "handle_fork" else 0.0
        total_hook += hook
        rt = prog["runtime_ns"]
        prog["hooks"] = (
            [{"hook": "tracepoint", "target": "sched_process_fork"}]
            if prog["name"] == "handle_fork"
            else []
        )
        prog["hook_ns"] = hook
        prog["hook_uncalibrated"] = False
        prog["whole_cpu_percent"] = (rt + hook) / WINDOW_NS * 100
        prog["hook_multiplier"] = (rt + hook) / rt if rt else None
    rt = doc["total_runtime_ns"]
    doc["hooks"] = {
        "costs": [
            {"hook": "tracepoint", "source": "measured", "cost_ns": 1000.0, "reason": ""},
            {"hook": "kprobe", "source": "unsupported", "cost_ns": 0.0, "reason": "no PMU"},
        ],
        "calibration_cpu_seconds": 0.8,
        "uncalibrated_programs": 0,
        "total_hook_ns": total_hook,
        "total_hook_node_cpu_percent": total_hook / WINDOW_NS / 2 * 100,
        "total_whole_cpu_percent": (rt + total_hook) / WINDOW_NS * 100,
        "total_hook_multiplier": (rt + total_hook) / rt,
        "cost_node_cpu_percent": (rt + total_hook) / WINDOW_NS / 2 * 100,
    }
    path = out / f"{side}.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    return (
        with_hooks("baseline.json", "baseline", tmp_path),
        with_hooks("current.json", "current", tmp_path),
    )


def test_hook_figures_are_read(pair: tuple[str, str]) -> None:
    base = load_report(pair[0])  # validated against snapshot.schema.json on the way
    fork = next(p for p in base.programs if p.name == "handle_fork")
    assert (fork.hook_ns, fork.whole_pct) == (10_000_000, pytest.approx(0.15))
    assert base.totals.hook_ns == 10_000_000
    assert base.totals.whole_pct == pytest.approx(0.6601)
    assert base.totals.multiplier == pytest.approx(66.01 / 56.01)
    # a report without them: unknown, never 0
    plain = load_report(str(FIX / "baseline.json"))
    assert plain.totals.hook_ns is None and plain.totals.multiplier is None
    assert all(p.hook_ns is None and p.whole_pct is None for p in plain.programs)


def test_json_carries_whole_price_and_multiplier(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compare", *pair, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    fork = next(r for r in doc["programs"] if r["name"] == "handle_fork")
    b, c = fork["baseline"], fork["current"]
    assert (b["hook_ns"], c["hook_ns"]) == (10_000_000, 45_000_000)
    assert b["whole_cpu_percent"] == pytest.approx(0.15)
    assert c["whole_cpu_percent"] == pytest.approx(0.5)
    assert (b["hook_multiplier"], c["hook_multiplier"]) == (pytest.approx(3.0), pytest.approx(10.0))
    assert fork["change"]["whole_cpu_percent"]["pct"] == pytest.approx((0.5 / 0.15 - 1) * 100)
    # the run time did not move: the gate's figure says so
    assert fork["change"]["estimated_cpu_percent"]["pct"] == pytest.approx(0.0)
    tot = doc["totals"]
    assert tot["baseline"]["whole_cpu_percent"] == pytest.approx(0.6601)
    assert tot["current"]["whole_cpu_percent"] == pytest.approx(1.1053)
    assert tot["current"]["hook_multiplier"] == pytest.approx(110.53 / 65.53)
    idle = next(r for r in doc["programs"] if r["name"] == "idle_prog")
    assert idle["baseline"]["hook_multiplier"] is None  # never ran: no ratio


def test_markdown_shows_whole_price_beside_run_time(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compare", *pair, "--all"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("| program | type | match"))
    assert head.endswith("| whole price (% of a core) | Δ | x run time |")
    fork = next(line for line in out.splitlines() if line.startswith("| handle_fork |"))
    assert fork.endswith("| 0.15% → 0.5% | +233.3% | 3.0x → 10.0x |"), fork
    totals = next(line for line in out.splitlines() if line.startswith("| all programs |"))
    assert totals.endswith("| 0.6601% → 1.105% | +67.4% | 1.2x → 1.7x |"), totals
    assert "Whole price = run time +" in out
    # new and gone programs carry theirs too
    new = next(line for line in out.splitlines() if line.startswith("| new_prog |"))
    assert new.endswith("| 0.02% | 1.0x |"), new


def test_one_side_without_hooks_shows_na(
    pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["compare", str(FIX / "baseline.json"), pair[1], "--format", "text"]) == 0
    out = capsys.readouterr().out
    fork = next(line for line in out.splitlines() if line.startswith("handle_fork"))
    assert "n/a → 0.5%" in fork and "n/a → 10.0x" in fork, fork


def test_reports_without_hooks_render_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    base, cur = str(FIX / "baseline.json"), str(FIX / "current.json")
    assert cli.main(["compare", base, cur]) == 0
    out = capsys.readouterr().out
    assert "whole price" not in out and "x run time" not in out


def test_chart_draws_the_hook_part(pair: tuple[str, str], tmp_path: Path) -> None:
    from linnix_exporter.tools import charts
    from linnix_exporter.tools.compare_match import compare

    cmp = compare(load_report(pair[0]), load_report(pair[1]))
    fork = next(r for r in cmp.matched if r.name == "handle_fork")
    # the hatched part: whole - run time, 0.15 - 0.05 and 0.5 - 0.05 % of a core
    assert charts._hooks(fork.base) == pytest.approx(0.1)
    assert charts._hooks(fork.cur) == pytest.approx(0.45)
    assert charts._hooks(load_report(str(FIX / "baseline.json")).totals) == 0.0
    png = tmp_path / "chart.png"
    charts.draw(cmp, str(png))
    assert_png(png)
