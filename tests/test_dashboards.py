"""The Grafana dashboards: committed JSON matches the generator, every panel has a unit
and uses the `datasource` variable, every query names exported metrics only, is
filtered by job and instance, and parses (promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards import generate as gen
from linnix_exporter.figures import FAMILIES
from tests.kernel_helpers import REPO

DIR = REPO / "dashboards"
UIDS = {"linnix-overview", "linnix-bpf-programs", "linnix-fleet"}
DS = {"type": "prometheus", "uid": "${datasource}"}


BOARDS: dict[str, dict[str, Any]] = gen.dashboards()


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but rows, the ones inside collapsed rows included."""
    return (p for p in gen.iter_panels(d["panels"]) if p["type"] != "row")


def exprs(d: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(title, raw expression) of every target."""
    for p in panels(d):
        for t in p["targets"]:
            yield p["title"], t["expr"]


def all_exprs() -> list[tuple[str, str, str]]:
    return [(f, title, e) for f, d in BOARDS.items() for title, e in exprs(d)]


def strings(x: Any) -> Iterator[str]:
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from strings(v)


def test_committed_json_is_current() -> None:
    assert set(BOARDS) == {"linnix-overview.json", "linnix-bpf-programs.json", "linnix-fleet.json"}
    for name, d in BOARDS.items():
        text = (DIR / name).read_text()
        assert text == gen.render(d), f"dashboards/{name} is stale: run dashboards/generate.py"
        assert json.loads(text) == d
    assert gen.main(["--check"]) == 0


def test_check_names_the_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gen, "HERE", tmp_path)
    assert gen.main([]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BOARDS)
    assert gen.main(["--check"]) == 0
    stale = tmp_path / "linnix-fleet.json"
    stale.write_text(stale.read_text().replace("Linnix: fleet", "Linnix: fleet!"))
    capsys.readouterr()
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "linnix-fleet.json" in err[0], err
    assert "linnix-overview.json" not in err[0]


def test_rendering_is_stable_and_readable() -> None:
    for name, d in BOARDS.items():
        text = gen.render(d)
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name
        assert text == gen.render(gen.dashboards()[name])


def test_dashboard_metadata() -> None:
    uids = [d["uid"] for d in BOARDS.values()]
    assert sorted(uids) == sorted(UIDS)
    for name, d in BOARDS.items():
        assert name == d["uid"] + ".json"
        assert "linnix" in d["tags"]
        assert 36 <= d["schemaVersion"] <= 39
        assert d["id"] is None
        assert "__inputs" not in d and "__requires" not in d
    titles = {d["uid"]: d["title"] for d in BOARDS.values()}
    assert titles == {
        "linnix-overview": "Linnix: eBPF overhead",
        "linnix-bpf-programs": "Linnix: BPF programs",
        "linnix-fleet": "Linnix: fleet",
    }


def test_variables() -> None:
    for name, d in BOARDS.items():
        v = {x["name"]: x for x in d["templating"]["list"]}
        assert v["datasource"]["type"] == "datasource"
        assert v["datasource"]["query"] == "prometheus"
        for var in ("job", "instance"):
            assert v[var]["type"] == "query", (name, var)
            assert v[var]["datasource"] == DS
            q = v[var]["query"]
            q = q["query"] if isinstance(q, dict) else q
            assert q.startswith("label_values(linnix_node_cpus"), q
            assert q.endswith(f", {var})"), q
            assert v[var]["multi"] and v[var]["includeAll"]
        assert "$job" in str(v["instance"]["query"])


def test_every_panel_has_a_unit() -> None:
    for name, d in BOARDS.items():
        for p in panels(d):
            unit = p["fieldConfig"]["defaults"].get("unit")
            assert unit and unit != "none", (name, p["title"])


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for name, d in BOARDS.items():
        for p in panels(d):
            assert p["datasource"] == DS, (name, p["title"])
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"] == DS, (name, p["title"])
                assert "datasource" not in t["expr"]
        assert "DS_" not in gen.render(d)


def _check_layout(name: str, ps: list[dict[str, Any]]) -> None:
    taken: set[tuple[int, int]] = set()
    for p in ps:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, p["title"])
        here = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not here & taken, (name, p["title"])
        taken |= here


def test_panel_ids_unique_and_layout_fits() -> None:
    for name, d in BOARDS.items():
        ids = [p["id"] for p in gen.iter_panels(d["panels"])]
        assert len(ids) == len(set(ids)), name
        _check_layout(name, d["panels"])
        for row in d["panels"]:
            if row.get("collapsed"):
                _check_layout(name, row["panels"])


def test_every_metric_is_exported() -> None:
    for f, title, e in all_exprs():
        names = gen.metric_names(e)
        assert names <= set(FAMILIES), (f, title, names - set(FAMILIES))
        assert names or re.search(r"\bup\{", e), (f, title, e)


def test_counters_are_rated_and_gauges_are_not() -> None:
    ranged = re.compile(r"(\w+)\((linnix_\w+)\{[^}]*\}\[")
    for f, title, e in all_exprs():
        for m in re.finditer(r"linnix_\w+", e):
            n = m.group(0)
            fam = FAMILIES.get(n) or FAMILIES[n.rsplit("_", 1)[0]]
            before = e[: m.start()]
            if fam.kind in ("counter", "histogram"):
                assert re.search(r"\b(rate|increase)\($", before), (f, title, n)
            else:
                assert not re.search(r"\b(rate|increase)\($", before), (f, title, n)
        for fn, n in ranged.findall(e):
            assert fn in ("rate", "increase", "avg_over_time"), (f, title, fn, n)


def test_every_selector_filters_job_and_instance() -> None:
    for f, title, e in all_exprs():
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
        for m in re.finditer(r"\b(linnix_\w+|up)\b(\{)?", bare):
            assert m.group(2), f"{f} {title}: {m.group(1)} without a selector"
        for sel in re.findall(r"\b(?:linnix_\w+|up)\{([^}]*)\}", e):
            assert 'job=~"$job"' in sel and 'instance=~"$instance"' in sel, (f, title, sel)


def test_rate_windows_are_grafana_intervals() -> None:
    allowed = {"$__rate_interval", "$__range", "$__range:$__interval"}
    for f, title, e in all_exprs():
        for w in re.findall(r"\[([^\]]+)\]", e):
            assert w in allowed, (f, title, w)


def test_links_point_to_existing_dashboards() -> None:
    for name, d in BOARDS.items():
        linked = set()
        for s in strings(d):
            linked |= set(re.findall(r"/d/([\w-]+)", s))
        assert linked <= UIDS, (name, linked - UIDS)
        explicit = {re.sub(r"^/d/", "", lk["url"]) for lk in d["links"]}
        assert explicit == UIDS - {d["uid"]}, name
        assert all(lk["keepTime"] and lk["includeVars"] for lk in d["links"])


def test_table_overrides_match_columns() -> None:
    for name, d in BOARDS.items():
        for p in panels(d):
            if p["type"] != "table":
                continue
            org = next(t for t in p["transformations"] if t["id"] == "organize")
            headers = set(org["options"]["renameByName"].values())
            assert p["options"]["sortBy"][0]["displayName"] in headers | {"instance"}
            for o in p["fieldConfig"]["overrides"]:
                if o["matcher"]["id"] == "byName" and o["matcher"]["options"] != "instance":
                    assert o["matcher"]["options"] in headers, (name, p["title"])
            n = len(p["targets"])
            values = {"Value"} if n == 1 else {f"Value #{chr(65 + i)}" for i in range(n)}
            assert set(org["options"]["renameByName"]) == values, (name, p["title"])


def test_queries_substitute_variables() -> None:
    for d in BOARDS.values():
        qs = gen.queries(d, {"job": "node-exporters", "instance": "host-1:10924"})
        assert len(qs) == sum(len(p["targets"]) for p in panels(d))
        for title, q in qs:
            assert "$" not in q, (title, q)
            assert "[[" not in q
            for sel in re.findall(r"\b(?:linnix_\w+|up)\{([^}]*)\}", q):
                assert 'job=~"node-exporters"' in sel and 'instance=~"host-1:10924"' in sel
        # Defaults: "All" becomes the variable's regex, topn its current value.
        assert all("$" not in q for _, q in gen.queries(d, {}))
    by_title = dict(gen.queries(BOARDS["linnix-overview.json"], {"job": "j", "instance": "i"}))
    assert by_title["Top $topn forking commands (per second)"] == (
        'topk(10, sum by (comm) (rate(linnix_process_comm_forks_total{job=~"j", '
        'instance=~"i"}[1m])))'
    )
    assert "[5m])" in by_title["CPU of exited tasks over the time range"]


def test_queries_reject_unknown_variables() -> None:
    d = json.loads(gen.render(BOARDS["linnix-overview.json"]))
    d["panels"][1]["targets"][0]["expr"] = "linnix_node_cpus{job=~'$nope'}"
    with pytest.raises(KeyError):
        gen.queries(d, {})


def test_metric_names() -> None:
    mn = gen.metric_names
    assert mn(
        'histogram_quantile(0.9, sum by (le) (rate(linnix_process_lifetime_seconds_bucket{a="b"}'
        "[1m]))) / linnix_process_lifetime_seconds_count + linnix_process_lifetime_seconds_sum"
    ) == {"linnix_process_lifetime_seconds"}
    assert mn('rate(linnix_process_forks_total{comm="linnix_fake_total"}[1m])') == {
        "linnix_process_forks_total"
    }
    # Not a histogram: the suffix stays (and the test above would reject the name).
    assert mn("linnix_bpf_programs_count") == {"linnix_bpf_programs_count"}
    assert mn("up == 0") == set()


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    """promtool 2.42 has no query parser, but `check rules` parses each rule's expr."""
    assert shutil.which("promtool"), "promtool missing: make setup installs Debian's prometheus"
    lines = ["groups:", "  - name: dashboards", "    rules:"]
    for i, (_, q) in enumerate(
        q for d in BOARDS.values() for q in gen.queries(d, {"job": "j", "instance": "i"})
    ):
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(q)}"]
    rules = tmp_path / "rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    p = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_provisioning_files() -> None:
    prov = (DIR / "provisioning" / "dashboards.yaml").read_text()
    assert re.search(r"^apiVersion: 1$", prov, re.M)
    assert re.search(r"^\s+folder: linnix$", prov, re.M)
    assert re.search(r"^\s+path: /var/lib/grafana/dashboards/linnix$", prov, re.M)
    ds = (DIR / "provisioning" / "datasource.yaml").read_text()
    assert re.search(r"^\s+- name: Prometheus$", ds, re.M)
    assert re.search(r"^\s+type: prometheus$", ds, re.M)
    readme = (DIR / "README.md").read_text()
    for name in BOARDS:
        assert name in readme
    assert "generate.py --check" in readme
