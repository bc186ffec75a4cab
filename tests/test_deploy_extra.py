"""deploy/systemd and deploy/otel-collector.yaml stay consistent with the exporter.

No systemd runs here and no collector binary is installed: the unit is parsed (and
checked with `systemd-analyze verify` when that binary exists), the collector config is
parsed with Debian's PyYAML in a subprocess, and both are checked against the CLI's
own --help and the metric catalogue.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.kernel_helpers import REPO

UNIT = REPO / "deploy" / "systemd" / "linnix-exporter.service"
ENV = REPO / "deploy" / "systemd" / "linnix-exporter.env"
COLLECTOR = REPO / "deploy" / "otel-collector.yaml"

CAPS = {"CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # keys are case-sensitive in systemd
    cp.read_string(UNIT.read_text())
    return cp


def run_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout


def test_unit_service_section() -> None:
    s = unit()["Service"]
    assert s["ExecStart"].split()[:2] == ["/opt/linnix-exporter/bin/linnix-exporter", "run"]
    assert s["EnvironmentFile"] == "-/etc/default/linnix-exporter"
    assert s["Restart"] == "on-failure"
    assert s["KillSignal"] == "SIGTERM"
    assert s["TimeoutStopSec"] == "30"
    assert s["RuntimeDirectory"] == "linnix-exporter"
    assert s["RuntimeDirectoryPreserve"] == "yes"  # crash marker survives the stop
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_hardening() -> None:
    s = unit()["Service"]
    want = {
        "User": "root",
        "DynamicUser": "no",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectControlGroups": "yes",
        "LockPersonality": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in want.items():
        assert s.get(key) == value, key
    assert set(s["ReadWritePaths"].split()) == {"/lib/modules", "/run/linnix-exporter"}
    # The syscall allow-list must keep what the exporter exists for.
    allowed = s["SystemCallFilter"].split()
    assert "@system-service" in allowed
    assert {"bpf", "perf_event_open", "mount"} <= set(allowed)
    assert not [a for a in allowed if a.startswith("~")]
    # Each of these breaks the exporter (see the unit's comments): never set.
    for key in (
        "ProtectKernelModules",
        "ProtectKernelTunables",
        "MemoryDenyWriteExecute",
        "ProtectProc",
        "ProcSubset",
        "PrivateDevices",
        "DeviceAllow",
        "IPAddressDeny",
        "PrivateNetwork",
    ):
        assert key not in s, key


def test_capabilities_are_exactly_the_justified_ones() -> None:
    s = unit()["Service"]
    text = UNIT.read_text()
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert set(s[key].split()) == CAPS, key
    named = set(re.findall(r"CAP_[A-Z_]+", text))
    # Every capability granted has its own comment line saying why.
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for cap in CAPS:
        assert re.search(rf"^#\s+{cap}\s+\S", comments, re.M), f"{cap} not justified"
    # Any other capability is only mentioned as being left out.
    for cap in named - CAPS:
        assert cap not in s.get("CapabilityBoundingSet", "") + s.get("AmbientCapabilities", "")
    # The daemon itself checks for CAP_SYS_ADMIN and CAP_BPF/CAP_PERFMON.
    from linnix_exporter.kernel import host

    assert set(host.CAP_NAMES.values()) <= CAPS


def test_flags_in_unit_exist() -> None:
    help_text = run_help()
    flags = [a for a in unit()["Service"]["ExecStart"].split() if a.startswith("-")]
    for f in flags:
        assert re.search(rf"(^|[\s\[,]){re.escape(f.split('=')[0])}\b", help_text), f


def test_env_file_variables_exist() -> None:
    help_text = run_help()
    known = set(re.findall(r"\[env\s+(LINNIX_EXPORTER_[A-Z_]+)\]", help_text))
    assert known, "help no longer lists [env ...] variables"
    readme = (REPO / "README.md").read_text()
    lines = [ln.lstrip("#").strip() for ln in ENV.read_text().splitlines()]
    assigned = [ln.split("=", 1)[0] for ln in lines if re.match(r"^[A-Z][A-Z0-9_]*=", ln)]
    assert assigned
    for var in assigned:
        if var.startswith("LINNIX_EXPORTER_"):
            assert var in known, var
        else:
            assert var.startswith("OTEL_") and var in readme, var
    # Active (uncommented) lines use systemd's KEY=value syntax.
    for ln in ENV.read_text().splitlines():
        if ln.strip() and not ln.lstrip().startswith("#"):
            assert re.match(r"^[A-Z][A-Z0-9_]*=\S*$", ln), ln


def test_env_file_defaults_match_help() -> None:
    from linnix_exporter.config import RUN_OPTIONS

    defaults = {o.env: o for o in RUN_OPTIONS}
    help_text = run_help()
    for ln in ENV.read_text().splitlines():
        m = re.match(r"^#(LINNIX_EXPORTER_[A-Z_]+)=(\S+)$", ln)
        # Examples, not defaults: console log format, a node name.
        if not m or m.group(1) in ("LINNIX_EXPORTER_LOG_FORMAT", "LINNIX_EXPORTER_NODE_NAME"):
            continue
        var, value = m.groups()
        assert var in defaults, var
        assert re.search(rf"\[env\s+{var}\]\s+\(default:\s+{re.escape(value)}\)", help_text), (
            var,
            value,
        )


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_analyze_verify() -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True)
    problems = [
        ln
        for ln in (r.stdout + r.stderr).splitlines()
        if ln.strip() and "/opt/linnix-exporter/bin/linnix-exporter is not executable" not in ln
    ]
    assert not problems, problems


def collector() -> dict:
    if not shutil.which("/usr/bin/python3"):
        pytest.skip("no Debian python3")
    r = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            str(COLLECTOR),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 and "No module named 'yaml'" in r.stderr:
        pytest.skip("PyYAML not installed for /usr/bin/python3")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_collector_pipeline_is_consistent() -> None:
    cfg = collector()
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"metrics"}
    for kind in ("receivers", "processors", "exporters"):
        declared = set(cfg[kind])
        used = {c for p in pipelines.values() for c in p.get(kind, [])}
        assert used <= declared, (kind, used - declared)
        assert declared <= used, (kind, "declared but unused", declared - used)
    m = pipelines["metrics"]
    assert m["processors"][0] == "memory_limiter" and m["processors"][-1] == "batch"
    assert m["receivers"] == ["otlp"]
    assert m["exporters"] == ["prometheusremotewrite"]


def test_collector_endpoints() -> None:
    cfg = collector()
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    prw = cfg["exporters"]["prometheusremotewrite"]
    assert prw["endpoint"].endswith("/api/v1/write")
    assert prw["resource_to_telemetry_conversion"]["enabled"] is True
    assert cfg["processors"]["resource/drop_pid"]["attributes"] == [
        {"key": "process.pid", "action": "delete"}
    ]


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """OTel -> Prometheus name as prometheusremotewrite builds it with metric suffixes
    (the collector's default): non-alphanumerics split words, unit suffix unless already
    a word, unit "1" on a gauge -> ratio, {annotations} dropped, _total on counters."""
    words = [w for w in re.split(r"[^A-Za-z0-9]", name) if w]
    base = re.sub(r"\{[^}]*\}", "", unit or "")
    suffix = {"s": "seconds", "By": "bytes", "1": ""}.get(base, base)
    if suffix and suffix not in words:
        words.append(suffix)
    if unit == "1" and kind == "gauge":
        words = [w for w in words if w != "ratio"] + ["ratio"]
    if kind == "counter":
        words = [w for w in words if w != "total"] + ["total"]
    return "_".join(words)


def test_collector_comment_lists_every_renamed_metric() -> None:
    from linnix_exporter.figures import FAMILIES

    text = COLLECTOR.read_text()
    listed = dict(re.findall(r"^#\s+(\w+)\s+arrives as (\w+)\s*$", text, re.M))
    renamed = {
        f.prom: prometheus_name(f.otel, f.unit, f.kind)
        for f in FAMILIES.values()
        if f.otel and prometheus_name(f.otel, f.unit, f.kind) != f.prom
    }
    assert listed == renamed
    # The examples named as unchanged really are.
    assert prometheus_name("linnix.overhead.ratio", "1", "gauge") == "linnix_overhead_ratio"
