"""The shipped Prometheus rules (alerts/rules.py and the files it renders): valid for
promtool, unit-tested, not stale, named after metrics the exporter really has, and every
alert documented in docs/runbooks.md. Fast: promtool and text only, no kernel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alerts import rules
from linnix_exporter.figures import FAMILIES

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / rules.RULES_FILE
PROMETHEUSRULE_FILE = REPO / rules.PROMETHEUSRULE_FILE
UNIT_TESTS = sorted((REPO / "alerts" / "tests").glob("*.yaml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if exe is None:
        pytest.fail(
            "promtool not found: it comes from Debian's prometheus package, which "
            "scripts/setup.sh installs (run `make setup` as root)",
            pytrace=False,
        )
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def alerts_data() -> list[dict[str, rules.Yaml]]:
    out = []
    for g in rules.groups_yaml():
        assert isinstance(g, dict) and isinstance(g["rules"], list)
        out += [r for r in g["rules"] if isinstance(r, dict) and "alert" in r]
    return out


def rule_texts() -> list[str]:
    """Every expression and annotation of the rules (annotations may query metrics)."""
    texts = []
    for g in rules.groups_yaml():
        assert isinstance(g, dict) and isinstance(g["rules"], list)
        for r in g["rules"]:
            assert isinstance(r, dict)
            texts.append(str(r["expr"]))
            annotations = r.get("annotations", {})
            assert isinstance(annotations, dict)
            texts += [str(v) for v in annotations.values()]
    return texts


def test_promtool_check_rules() -> None:
    res = promtool("check", "rules", RULES_FILE)
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(rules.alert_names()) + len(rules.recording_names())
    assert f"SUCCESS: {n} rules found" in res.stdout, res.stdout


def test_promtool_unit_tests() -> None:
    assert UNIT_TESTS, "no promtool unit tests in alerts/tests/"
    res = promtool("test", "rules", *UNIT_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_committed_files_are_not_stale() -> None:
    for rel, text in rules.outputs().items():
        path = REPO / rel
        assert path.exists(), f"{rel} missing: run .venv/bin/python -m alerts.rules"
        assert path.read_text() == text, f"{rel} is stale: run .venv/bin/python -m alerts.rules"
    assert rules.stale() == []


def test_check_cli_reports_a_stale_file_in_one_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "alerts.rules", "--check", "--root"]
    ok = subprocess.run([*cmd, str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert rules.render(tmp_path) == [tmp_path / p for p in rules.outputs()]
    (tmp_path / rules.PROMETHEUSRULE_FILE).write_text("edited by hand\n")
    bad = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and str(rules.PROMETHEUSRULE_FILE) in bad.stderr
    assert rules.stale(tmp_path) == [rules.PROMETHEUSRULE_FILE]


def test_metric_names_exist_in_the_catalogue() -> None:
    served = set()
    for name, fam in FAMILIES.items():
        if fam.kind == "histogram":
            served |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            served.add(name)
        if fam.kind == "counter":
            assert name.endswith("_total"), name
    recorded = set(rules.recording_names())
    used, used_records = set(), set()
    for text in rule_texts():
        # linnix_* not inside a recording rule's name (level:metric:operations)
        used |= set(re.findall(r"(?<![\w:])linnix_\w+\b(?!:)", text))
        used_records |= set(re.findall(r"(?<![\w:])[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", text))
    assert len(used) >= 10
    assert used - served == set(), "metrics not in linnix_exporter.figures.FAMILIES"
    assert used_records - recorded == set(), "recording rules used but not defined"
    for name in recorded:
        level, metric, _ = name.split(":")
        assert metric in served or f"{metric}_total" in served, name
        assert level in {"instance", "instance_program", "instance_owner", "job"}, name


def test_every_alert_has_severity_annotations_and_for() -> None:
    alerts = alerts_data()
    assert [a["alert"] for a in alerts] == rules.alert_names()
    assert len(set(rules.alert_names())) == len(alerts)
    for a in alerts:
        name = a["alert"]
        assert isinstance(name, str) and re.fullmatch(r"Linnix[A-Z][A-Za-z]+", name), name
        labels, annotations = a["labels"], a["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels.get("severity") in SEVERITIES, name
        for key in ("summary", "description", "runbook_url"):
            assert isinstance(annotations.get(key), str) and annotations[key], (name, key)
        if not str(a["expr"]).startswith("absent("):  # absent() has no series to describe
            assert "{{ $labels.instance }}" in str(annotations["description"]), name
        assert isinstance(a.get("for"), str) and DURATION.fullmatch(str(a["for"])), name


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_runbook_url_has_a_section() -> None:
    anchors = github_anchors(RUNBOOKS.read_text())
    for a in alerts_data():
        annotations = a["annotations"]
        assert isinstance(annotations, dict)
        url = str(annotations["runbook_url"])
        base, _, anchor = url.partition("#")
        assert base == rules.RUNBOOK_BASE and base.endswith("/docs/runbooks.md"), url
        assert anchor == str(a["alert"]).lower() and anchor in anchors, url
    for name in rules.recording_names():
        assert f"`{name}`" in RUNBOOKS.read_text(), f"{name}: not in the runbooks' table"
    # and no section for an alert that does not exist
    sections = set(re.findall(r"^## (Linnix\w+)$", RUNBOOKS.read_text(), re.M))
    assert sections == set(rules.alert_names())


def test_prometheusrule_holds_the_same_groups() -> None:
    text = PROMETHEUSRULE_FILE.read_text()
    for line in (
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        "  name: linnix-exporter",
        "  labels:",
        "    app.kubernetes.io/name: linnix-exporter",
        "    role: alert-rules",
        "spec:",
    ):
        assert f"\n{line}\n" in text, line
    # Everything under spec:, one level less indented, is the rule file's groups: byte
    # for byte, so the two files cannot say different things.
    spec = text.split("\nspec:\n", 1)[1]
    assert all(not line or line.startswith("  ") for line in spec.splitlines())
    groups_text = "".join(line[2:] + "\n" for line in spec.splitlines())
    rule_file = RULES_FILE.read_text()
    assert groups_text == rule_file[rule_file.index("groups:\n") :]


def test_prometheusrule_spec_passes_promtool(tmp_path: Path) -> None:
    spec = PROMETHEUSRULE_FILE.read_text().split("\nspec:\n", 1)[1]
    path = tmp_path / "spec.yaml"
    path.write_text("".join(line[2:] + "\n" for line in spec.splitlines()))
    res = promtool("check", "rules", path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_and_recording_rule_is_unit_tested() -> None:
    order = "".join(f"  - {g.name}\n" for g in rules.groups())
    for path in UNIT_TESTS:  # promtool's group order is random without it
        assert f"\ngroup_eval_order:\n{order}" in path.read_text(), path.name
    text = "\n".join(p.read_text() for p in UNIT_TESTS)
    for name in rules.alert_names():
        cases = re.findall(rf"alertname: {name}\n +exp_alerts:(.*)\n(.*)", text)
        silent = [c for c in cases if c[0].strip() == "[]"]
        firing = [c for c in cases if c[0].strip() == "" and "exp_labels:" in c[1]]
        assert len(silent) >= 2, f"{name}: needs silent cases (pending, under, resolved)"
        assert firing, f"{name}: needs a firing case"
        assert f"runbooks.md#{name.lower()}" in text, f"{name}: annotations not checked"
    for name in rules.recording_names():
        assert re.search(rf"- expr: {re.escape(name)}\n", text), f"{name}: no promql_expr_test"


def test_for_override_shortens_every_alert() -> None:
    text = rules.render_rules(for_override="5s")
    fors = re.findall(r"^ +for: (\S+)$", text, re.M)
    assert fors == ["5s"] * len(rules.alert_names())
    assert text.replace("for: 5s", "") == re.sub(r"for: \S+", "", rules.render_rules())
    with pytest.raises(ValueError):
        rules.render_rules(for_override="5 seconds")


def test_generation_parameters() -> None:
    p = rules.Params(
        job_matcher='job="bpf-cost"',
        target_labels=("cluster", "job", "instance"),
        foreign_program_ratio=0.1,
        far_over_budget_factor=3,
    )
    text = rules.render_rules(p)
    assert 'absent(up{job="bpf-cost"})' in text and 'up{job="bpf-cost"} == 0' in text
    assert "on(cluster, job, instance) group_left()" in text
    assert "(3 * linnix_overhead_budget_ratio)" in text and "> 0.1\n" in text
    assert "cluster_job:linnix_overhead_ratio:max_avg5m" in rules.recording_names(p)
    # The budget is always the node's gauge, never a number written in the rules.
    assert "0.01" not in rules.render_rules()
    for bad in (
        {"job_matcher": "linnix-exporter"},
        {"target_labels": ("instance",)},
        {"far_over_budget_factor": 1.0},
        {"foreign_program_ratio": 0.0},
    ):
        with pytest.raises(ValueError):
            rules.Params(**bad)
