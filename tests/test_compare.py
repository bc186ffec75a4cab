"""`linnix-exporter compare` on hand-made reports (tests/fixtures/reports/): every expected
figure below is worked out by hand from the fixture numbers (10 s windows, 2 CPUs), never
by calling the code under test. No kernel needed.

baseline.json                              current.json
tc_ingress sched_cls tag aa x2: 20 ms,     x3 (one loaded during the window): 16 ms,
  40,000 runs each -> 0.4 % of a core        40,000 runs each -> 0.48 % (+20 %)
tc_egress sched_cls tag bb: 10 ms, 10,000  tag 99 (rebuilt): 10.5 ms, 10,500 (+5 %)
handle_fork tracepoint tag cc: 5 ms        the same
old_probe kprobe: 1 ms, 2,000 runs         gone
tiny cgroup_skb: 10 us, 100 runs           30 us, 300 runs: 0.0001 % -> 0.0003 % (+200 %)
idle_prog lsm: 0                           0
                                           new_prog xdp: 2 ms, 4,000 runs (0.02 %)
totals: 56.01 ms, 102,100 runs             65.53 ms, 144,800 runs
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from linnix_exporter import cli
from linnix_exporter.tools import compare_match, compare_model
from linnix_exporter.tools.compare_match import (
    MATCH_NAME,
    MATCH_TAG,
    aggregate,
    check_gate,
    match,
    regressed,
    type_key,
)
from linnix_exporter.tools.compare_model import Change, Gate, Prog, load_report
from tests.kernel_helpers import REPO

FIX = REPO / "tests" / "fixtures" / "reports"
BASE = str(FIX / "baseline.json")
CUR = str(FIX / "current.json")
SEED = str(FIX / "seed_baseline.json")
OTHER = str(FIX / "other_host.json")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["compare", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def rows_by_name(argv_json: dict[str, object], key: str) -> dict[str, dict[str, object]]:
    rows = argv_json[key]
    assert isinstance(rows, list)
    return {r["name"]: r for r in rows}


def p(
    pid: int,
    name: str,
    tag: str | None,
    rt: int,
    runs: int,
    ptype: str = "sched_cls",
    node: float | None = 0.0,
) -> Prog:
    return Prog(pid, name, ptype, tag, rt, runs, 0, runs / 10, rt / 1e7, node, "present")


# ---- matching and aggregation ---------------------------------------------------------


def test_fixture_matching_and_deltas() -> None:
    b, c = load_report(BASE), load_report(CUR)
    cmp = compare_match.compare(b, c)
    rows = {r.name: r for r in cmp.matched}
    assert set(rows) == {"tc_ingress", "tc_egress", "handle_fork", "tiny", "idle_prog"}
    assert [r.name for r in cmp.new] == ["new_prog"]
    assert [r.name for r in cmp.gone] == ["old_probe"]

    ing = rows["tc_ingress"]
    assert ing.match == MATCH_TAG
    assert ing.base is not None and ing.cur is not None
    assert (ing.base.instances, ing.cur.instances) == (2, 3)
    assert (ing.base.runtime_ns, ing.cur.runtime_ns) == (40_000_000, 48_000_000)
    assert ing.base.core_pct == pytest.approx(0.4)
    assert ing.cur.core_pct == pytest.approx(0.48)
    assert ing.base.node_pct == pytest.approx(0.2)
    assert ing.cur.node_pct == pytest.approx(0.24)
    assert (ing.base.events_per_sec, ing.cur.events_per_sec) == (8_000, 12_000)
    assert (ing.base.avg_ns, ing.cur.avg_ns) == (500, 400)
    assert Change(ing.base.core_pct, ing.cur.core_pct).pct == pytest.approx(20.0)
    assert ing.cur.partial and not ing.base.partial  # one instance loaded in the window

    # Rebuilt program: tag changed, so it falls back to name+type and carries both tags.
    eg = rows["tc_egress"]
    assert eg.match == MATCH_NAME
    assert eg.tags == ("bb" * 8, "99" * 8)
    assert eg.base is not None and eg.cur is not None
    assert Change(eg.base.core_pct, eg.cur.core_pct).pct == pytest.approx(5.0)

    # Sorted by |delta CPU|: 0.08, 0.005, 0.0002, then the unchanged ones by name.
    assert [r.name for r in cmp.matched] == [
        "tc_ingress",
        "tc_egress",
        "tiny",
        "handle_fork",
        "idle_prog",
    ]
    assert b.totals.core_pct == pytest.approx(0.5601)
    assert c.totals.core_pct == pytest.approx(0.6553)
    assert b.totals.avg_ns == pytest.approx(56_010_000 / 102_100)
    assert cmp.warnings == ()


def test_duplicates_are_aggregated_not_paired() -> None:
    """2 instances of tag A before; 1 of A and 1 of a new tag B after: A is one row 2 -> 1,
    B is new (nothing left on the baseline side with that name+type)."""
    base = [p(1, "cil", "a" * 16, 100, 10), p(2, "cil", "a" * 16, 300, 30)]
    cur = [p(3, "cil", "a" * 16, 50, 5), p(4, "cil", "b" * 16, 70, 7)]
    matched, new, gone = match(base, cur)
    assert len(matched) == 1 and matched[0].match == MATCH_TAG
    m = matched[0]
    assert m.base is not None and m.cur is not None
    assert (m.base.instances, m.base.runtime_ns, m.base.run_count) == (2, 400, 40)
    assert (m.cur.instances, m.cur.runtime_ns) == (1, 50)
    assert [(r.match, r.tags) for r in new] == [("new", ("b" * 16,))]
    assert gone == []


def test_leftover_tags_on_both_sides_match_by_name_and_type() -> None:
    base = [p(1, "x", "a" * 16, 100, 10), p(2, "x", "b" * 16, 200, 10), p(3, "x", None, 1, 1)]
    cur = [p(4, "x", "a" * 16, 100, 10), p(5, "x", "c" * 16, 500, 10)]
    matched, new, gone = match(base, cur)
    by = {r.match: r for r in matched}
    assert set(by) == {MATCH_TAG, MATCH_NAME}
    loose = by[MATCH_NAME]
    assert loose.base is not None and loose.cur is not None
    # b-tagged and untagged baseline instances together vs the c-tagged one.
    assert (loose.base.instances, loose.base.runtime_ns, loose.cur.runtime_ns) == (2, 201, 500)
    assert loose.tags == ("b" * 16, "c" * 16)
    assert new == [] and gone == []


def test_same_name_other_type_is_another_program() -> None:
    matched, new, gone = match([p(1, "x", None, 1, 1, "xdp")], [p(2, "x", None, 1, 1, "lsm")])
    assert matched == [] and [r.type for r in new] == ["lsm"] and [r.type for r in gone] == ["xdp"]


def test_aggregate_weighted_mean_and_missing_node_share() -> None:
    a = aggregate([p(1, "x", None, 1_000, 1), p(2, "x", None, 3_000, 9, node=None)])
    assert a.avg_ns == 400  # 4,000 ns / 10 runs, not the mean of 1,000 and 333
    assert a.node_pct is None
    assert aggregate([p(1, "x", None, 0, 0)]).avg_ns is None


@pytest.mark.parametrize(
    ("seed", "kernel"),
    [
        ("SchedCLS", "sched_cls"),
        ("TracePoint", "tracepoint"),
        ("RawTracepoint", "raw_tracepoint"),
        ("CGroupSKB", "cgroup_skb"),
        ("Extension", "ext"),
        ("LSM", "lsm"),
        ("XDP", "xdp"),
    ],
)
def test_cilium_and_kernel_type_names_fold_together(seed: str, kernel: str) -> None:
    assert type_key(seed) == type_key(kernel)


def test_distinct_types_stay_distinct() -> None:
    keys = {type_key(t) for t in ("sched_cls", "sched_act", "raw_tracepoint", "tracepoint")}
    assert len(keys) == 4


def test_seed_format_is_normalised(capsys: pytest.CaptureFixture[str]) -> None:
    s = load_report(SEED)
    assert s.kind == "seed" and s.window_seconds == 10.0 and s.online_cpus is None
    assert all(x.tag is None and x.node_pct is None for x in s.programs)
    cmp = compare_match.compare(s, load_report(CUR))
    rows = {r.name: r for r in cmp.matched}
    assert set(rows) == {"tc_ingress", "handle_fork"}
    assert all(r.match == MATCH_NAME for r in cmp.matched)
    ing = rows["tc_ingress"]
    assert ing.base is not None and ing.base.core_pct == pytest.approx(0.4)
    assert [r.name for r in cmp.gone] == ["old_probe"]
    assert {r.name for r in cmp.new} == {"tc_egress", "tiny", "idle_prog", "new_prog"}
    assert len(cmp.warnings) == 1 and "seed_baseline.json" in cmp.warnings[0]
    for missing in ("tag", "node share", "host", "measured window"):
        assert missing in cmp.warnings[0]
    rc, out, _ = run(capsys, SEED, CUR, "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["baseline"]["format"] == "seed"
    ing_json = rows_by_name(doc, "programs")["tc_ingress"]
    assert ing_json["change"]["node_cpu_percent"] is None  # not in the seed report
    assert ing_json["change"]["estimated_cpu_percent"]["pct"] == pytest.approx(20.0)


def test_window_differences_are_warned() -> None:
    cmp = compare_match.compare(load_report(BASE), load_report(OTHER))
    text = "\n".join(cmp.warnings)
    assert "CPU counts differ (2 vs 4)" in text
    assert "kernels differ (6.18.0 vs 6.1.0)" in text
    assert "hosts differ" in text
    assert "current window was interrupted" in text
    assert "statistics were off in the current window" in text
    assert len(cmp.warnings) == 5


# ---- the gate -------------------------------------------------------------------------


def test_regressed_rule() -> None:
    assert regressed(Change(1.0, 1.2), 19.99)
    assert not regressed(Change(1.0, 1.2), 20.0)  # "more than", even with float rounding
    assert not regressed(Change(0.16 * 3 / 1.2, 0.16 + 0.16 + 0.16), 20.0)
    assert regressed(Change(0.0, 0.5), 1000.0)  # from nothing to something
    assert not regressed(Change(0.0, 0.0), 0.0)
    assert not regressed(Change(1.0, 0.5), 0.0)  # an improvement never fails


@pytest.mark.parametrize(
    ("flags", "rc", "items"),
    [
        ((), 0, []),
        (("--max-regression", "20.01"), 0, []),  # tc_ingress +20 %, total +17 %
        (("--max-regression", "20"), 0, []),  # exactly 20 % is not more than 20 %
        (("--max-regression", "19.99"), 1, ["tc_ingress (sched_cls)"]),
        (("--max-regression", "16.9%"), 1, ["total", "tc_ingress (sched_cls)"]),
        (("--max-regression", "17.1"), 1, ["tc_ingress (sched_cls)"]),
        # tiny: +200 %, but 0.0003 % of a core is under the default floor (0.01 %)
        (("--max-regression", "25"), 0, []),
        (("--max-regression", "25", "--min-cpu-percent", "0.0003"), 1, ["tiny (cgroup_skb)"]),
        (("--max-regression", "25", "--min-cpu-percent", "0.00031"), 0, []),
        # new_prog: 0.02 % of a core, listed always, fails only with --fail-on-new
        (("--fail-on-new",), 1, ["new_prog (xdp)"]),
        (("--fail-on-new", "--min-cpu-percent", "0.021"), 0, []),
        (("--fail-on-new", "--min-cpu-percent", "0"), 1, ["new_prog (xdp)"]),
    ],
)
def test_gate_exit_codes(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], rc: int, items: list[str]
) -> None:
    code, out, err = run(capsys, BASE, CUR, *flags)
    assert code == rc
    failed = [ln.split(": ")[2] for ln in err.splitlines() if "gate failed" in ln]
    assert failed == items
    for item in items:
        assert f"- {item}:" in out  # also in the summary's Gate section


def test_gate_reversed_improvements_and_gone_never_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Current as the baseline: every share fell, old_probe is "new" and new_prog "gone".
    code, out, err = run(capsys, CUR, BASE, "--max-regression", "0", "--min-cpu-percent", "0")
    assert code == 0, err
    assert "passed" in out


def test_gate_on_total_alone() -> None:
    b = load_report(BASE)
    more = dataclasses.replace(b.totals, core_pct=b.totals.core_pct * 1.5)
    cmp = compare_match.compare(b, dataclasses.replace(b, totals=more))
    assert [x.item for x in check_gate(cmp, Gate(49.9, 0.01, False))] == ["total"]
    assert check_gate(cmp, Gate(50.1, 0.01, False)) == []


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, BASE, CUR, "--format", "json", "--max-regression", "10")
    assert rc == 1
    doc = json.loads(out)
    ing = rows_by_name(doc, "programs")["tc_ingress"]
    assert ing["match"] == MATCH_TAG
    assert ing["baseline"]["instances"] == 2 and ing["current"]["instances"] == 3
    ch = ing["change"]
    assert ch["estimated_cpu_percent"]["delta"] == pytest.approx(0.08)
    assert ch["estimated_cpu_percent"]["pct"] == pytest.approx(20.0)
    assert ch["node_cpu_percent"]["pct"] == pytest.approx(20.0)
    assert ch["events_per_sec"]["pct"] == pytest.approx(50.0)
    assert ch["avg_runtime_ns"]["pct"] == pytest.approx(-20.0)
    tot = doc["totals"]["change"]
    assert tot["estimated_cpu_percent"]["pct"] == pytest.approx((0.6553 / 0.5601 - 1) * 100)
    assert tot["events_per_sec"]["pct"] == pytest.approx((14_480 / 10_210 - 1) * 100)
    assert [r["name"] for r in doc["new"]] == ["new_prog"]
    assert [r["name"] for r in doc["gone"]] == ["old_probe"]
    assert doc["gate"]["passed"] is False
    assert {b["item"] for b in doc["gate"]["breaches"]} == {"total", "tc_ingress (sched_cls)"}


def test_markdown_summary(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, BASE, CUR)
    assert rc == 0
    assert "### Totals" in out and "### New programs" in out and "### Gone programs" in out
    lines = out.splitlines()
    ing = next(ln for ln in lines if ln.startswith("| tc_ingress |"))
    assert "| 2→3* |" in ing and "0.4% → 0.48%" in ing and "+20.0%" in ing
    assert "| 8,000.0 → 12,000.0 | +50.0% |" in ing and "| 500 → 400 | -20.0% |" in ing
    total = next(ln for ln in lines if ln.startswith("| all programs |"))
    assert "0.5601% → 0.6553%" in total and "+17.0%" in total
    assert "1 idle in both windows not shown" in out
    assert "| idle_prog |" not in out
    _, out_all, _ = run(capsys, BASE, CUR, "--all")
    assert "| idle_prog |" in out_all
    # Table rows come in |Δ CPU| order.
    names = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| t")]
    assert names[:3] == ["tc_ingress", "tc_egress", "tiny"]


def test_text_summary(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, BASE, OTHER, "--format", "text")
    assert rc == 0
    assert "warning: CPU counts differ (2 vs 4)" in out
    assert not any(ln.startswith("|") for ln in out.splitlines())


# ---- the chart ------------------------------------------------------------------------


def assert_png(path: Path, min_bytes: int = 20_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    from PIL import Image

    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_chart_is_a_real_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "chart.png"
    rc, _, _ = run(capsys, BASE, CUR, "--output", str(png))
    assert rc == 0
    width, height = assert_png(png)
    assert width > 1000 and height > 500
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    # Not blank: several distinct colours (bars, text, background).
    assert len({tuple(px) for px in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 10


def test_chart_with_nothing_running_and_top(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, _ = run(capsys, OTHER, OTHER, "--output", str(tmp_path / "a.png"), "--top", "1")
    assert rc == 0
    assert_png(tmp_path / "a.png")


def test_chart_unwritable_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, BASE, CUR, "--output", str(tmp_path / "no" / "dir" / "c.png"))
    assert rc == 2
    assert len(err.splitlines()) == 1 and "c.png" in err


# ---- bad input ------------------------------------------------------------------------


def _v1(**changes: object) -> str:
    doc = json.loads(Path(BASE).read_text())
    doc.update(changes)
    return json.dumps(doc)


def _bad_prog() -> str:
    doc = json.loads(Path(BASE).read_text())
    doc["program_stats"]["10"]["run_count"] = "many"
    return json.dumps(doc)


NO_SCHEMA = Path("/nonexistent/snapshot.schema.json")

# (case, file text, needle with the real schema (CLI), message of the field readers alone)
BAD = [
    ("empty", "", "not JSON", "not JSON"),
    ("not json", "{oops", "not JSON", "not JSON"),
    ("a list", "[1, 2]", "top level is a list", "top level is a list"),
    ("no report", '{"hello": 1}', "not a snapshot report", "not a snapshot report"),
    ("version 2", _v1(schema_version=2), "unsupported schema_version 2", "schema_version 2"),
    (
        "bad field type",
        _bad_prog(),
        "program_stats/10/run_count",
        "program_stats['10'].run_count: expected a whole number >= 0, got a string",
    ),
    (
        "missing total",
        _v1(total_runtime_ns=None),
        "total_runtime_ns",
        "total_runtime_ns: expected a whole number >= 0, got null",
    ),
    ("NaN", _v1(total_events_per_sec=float("nan")), "NaN", "NaN"),
    (
        "stats not object",
        _v1(program_stats=list(range(10_000))),
        "program_stats",
        "program_stats: expected an object, got a list",
    ),
    ("binary", "\xff\xfe", "not", "not"),
]


@pytest.mark.parametrize(("case", "text", "needle", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_report_is_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    text: str,
    needle: str,
    message: str,
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(text.encode("latin-1") if case == "binary" else text.encode())
    for argv in ((str(bad), CUR), (BASE, str(bad))):
        rc, out, err = run(capsys, *argv)
        assert rc == 2
        assert out == ""
        assert len(err.splitlines()) == 1 and len(err) < 400, err
        assert str(bad) in err and needle in err
    # Without the schema file the field readers give the same kind of line.
    with pytest.raises(compare_model.InputError) as e:
        load_report(str(bad), NO_SCHEMA)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value)


def test_missing_required_field_without_schema(tmp_path: Path) -> None:
    doc = json.loads(Path(BASE).read_text())
    del doc["host"]["online_cpus"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(compare_model.InputError, match=r"missing field host\.online_cpus$"):
        load_report(str(bad), NO_SCHEMA)


def test_fixtures_match_the_snapshot_schema() -> None:
    """The hand-made v1 reports are valid reports of the real format (the schema the
    snapshot subcommand is checked against), so these tests exercise real input."""
    import jsonschema

    schema = json.loads(compare_model.SCHEMA_PATH.read_text())
    for name in ("baseline.json", "current.json", "other_host.json"):
        jsonschema.validate(json.loads((FIX / name).read_text()), schema)


def test_missing_file_and_bad_flags_in_a_real_process(tmp_path: Path) -> None:
    cases = [
        ([str(tmp_path / "nope.json"), CUR], ["nope.json", "cannot read"]),
        ([str(tmp_path), CUR], [str(tmp_path), "cannot read"]),
        ([BASE, CUR, "--max-regression", "lots"], ["--max-regression", "'lots'"]),
        ([BASE, CUR, "--max-regression", "-5"], ["--max-regression"]),
        ([BASE, CUR, "--min-cpu-percent", "x"], ["--min-cpu-percent"]),
        ([BASE, CUR, "--top", "0"], ["--top"]),
        ([BASE, CUR, "--format", "html"], ["--format"]),
        ([BASE], ["CURRENT.json"]),
    ]
    for argv, needles in cases:
        r = subprocess.run(
            [sys.executable, "-m", "linnix_exporter", "compare", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert r.returncode == 2, (argv, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (argv, r.stderr)
        for n in needles:
            assert n in lines[0], (argv, lines[0])


def test_schema_validation_is_used_when_present(tmp_path: Path) -> None:
    """With a schema file, a report the field readers would accept but the schema forbids
    (a tag that is not 16 hex digits) is refused, naming where."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "program_stats": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"tag": {"type": "string", "pattern": "^[0-9a-f]{16}$"}},
                },
            }
        },
    }
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(schema))
    doc = json.loads(Path(BASE).read_text())
    doc["program_stats"]["12"]["tag"] = "not-hex"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert load_report(str(bad), NO_SCHEMA).programs  # the field readers alone accept it
    with pytest.raises(compare_model.InputError) as e:
        load_report(str(bad), schema_path)
    assert str(bad) in str(e.value) and "program_stats/12/tag" in str(e.value)
    assert load_report(BASE, schema_path).kind == "v1"


def test_import_is_cheap() -> None:
    """The daemon builds every parser: matplotlib and jsonschema must not come with it."""
    code = (
        "import sys; from linnix_exporter import cli; cli.build_parser(); "
        "bad = [m for m in ('matplotlib', 'jsonschema', 'PIL') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
