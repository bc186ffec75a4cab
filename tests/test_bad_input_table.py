"""Bad input through the real command line, in one table: invalid flags, environment
values (LINNIX_EXPORTER_*, OTEL_*) and web config files. Every case must end the process
with exit 2 and exactly one line on stderr that names the culprit, and no traceback.
No kernel needed: configuration is refused before anything is touched. The cases
tests/test_config.py (BAD) and tests/test_webconfig.py (bcrypt) already run through the
CLI are not repeated here; this table adds the rest of every flag, variable and
web-config mistake. Runtime ~15 s (one process per case)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kernel_helpers import REPO
from tests.support.certs import self_signed

GOOD_CERT_FILES = ("server.crt", "server.key")
TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
NO_SYS_ADMIN = ("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin")
OTLP_ON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # web config text, written to {tmp}/web.yml; "{tmp}" in argv/env is the folder
    web_yml: str | bytes | None = None
    needles: tuple[str, ...] = ()  # every one must be on the single stderr line


def flag(name: str, value: str, *needles: str) -> Case:
    return Case(f"flag {name}={value!r}", (name, value), needles=(name, *needles))


def env(name: str, value: str, *needles: str, extra: dict[str, str] | None = None) -> Case:
    return Case(
        f"env {name}={value!r}", (), {**(extra or {}), name: value}, needles=(name, *needles)
    )


def web(id_: str, text: str | bytes, *needles: str) -> Case:
    return Case(
        f"web.config {id_}",
        ("--web.config.file", "{tmp}/web.yml"),
        web_yml=text,
        needles=("--web.config.file", "web.yml", *needles),
    )


TABLE: list[Case] = [
    # ---- flags ------------------------------------------------------------------------
    flag("--collect.interval", "0s"),
    flag("--collect.interval", "-1s"),
    flag("--collect.interval", "1d"),
    flag("--overhead.budget", "0"),
    flag("--overhead.budget", "200%"),
    flag("--web.listen-address", ":70000"),
    flag("--web.listen-address", ":http"),
    flag("--bpf.stats-method", "magic", "magic"),
    flag("--bpf.read-method", "telepathy", "telepathy"),
    flag("--bpf.top-programs", "-1"),
    flag("--bpf.top-programs", "many"),
    flag("--bpf.exclude-name", "[a-"),
    flag("--bpf.owner-refresh", "never"),
    flag("--bpf.node-budget", "0"),
    flag("--bpf.node-budget", "150%"),
    flag("--attribution.pod-logs-path", "var/log/pods"),
    flag("--probes.comm-slots", "1"),
    flag("--probes.comm-slots", "1e9"),
    flag("--probes.top-comms", "lots"),
    flag("--probes.load-timeout", "0s"),
    flag("--log.format", "xml", "xml"),
    Case("flag without value", ("--collect.interval",), needles=("--collect.interval",)),
    Case("boolean flag with value", ("--probes.enabled=maybe",), needles=("--probes.enabled",)),
    Case("stray positional", ("extra",), needles=("extra",)),
    # ---- environment ------------------------------------------------------------------
    env("LINNIX_EXPORTER_COLLECT_INTERVAL", "ten"),
    env("LINNIX_EXPORTER_OVERHEAD_BUDGET", "2"),
    env("LINNIX_EXPORTER_WEB_LISTEN_ADDRESS", "localhost"),
    env("LINNIX_EXPORTER_WEB_TELEMETRY_PATH", "no-slash"),
    env("LINNIX_EXPORTER_BPF_STATS_METHOD", "on"),
    env("LINNIX_EXPORTER_BPF_READ_METHOD", "both"),
    env("LINNIX_EXPORTER_BPF_TOP_PROGRAMS", "many"),
    env("LINNIX_EXPORTER_BPF_INCLUDE_NAME", "("),
    env("LINNIX_EXPORTER_BPF_OWNER_REFRESH", "-5s"),
    env("LINNIX_EXPORTER_BPF_NODE_BUDGET", "lots"),
    env("LINNIX_EXPORTER_ATTRIBUTION_POD_LOGS_PATH", "pods"),
    env("LINNIX_EXPORTER_PROMETHEUS_ENABLED", "2"),
    env("LINNIX_EXPORTER_LOG_LEVEL", "trace"),
    env("LINNIX_EXPORTER_WEB_CONFIG_FILE", "{tmp}/none.yml", "none.yml"),
    env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "pigeon", extra=OTLP_ON),
    env("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "=x", extra=OTLP_ON),
    env("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "abc", extra=OTLP_ON),
    env("OTEL_METRIC_EXPORT_INTERVAL", "0", extra=OTLP_ON),
    env("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", extra=OTLP_ON),
    env(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "{tmp}/no-ca.pem",
        "no-ca.pem",
        extra={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4318"},
    ),
    # ---- web config files ---------------------------------------------------------------
    Case(
        "web.config missing file",
        ("--web.config.file", "{tmp}/missing.yml"),
        needles=("--web.config.file", "missing.yml", "No such file"),
    ),
    Case(
        "web.config is a directory",
        ("--web.config.file", "{tmp}"),
        needles=("--web.config.file",),
    ),
    web("not YAML", "tls_server_config: [\n", "invalid YAML"),
    web("binary junk", b"\x00\xff\xfe\x89PNG\r\n\x1a\n\x00\x00", ""),
    web("a list", "- a\n- b\n", "mapping"),
    web("unknown key", "basic_auth: {}\n", "basic_auth"),
    web("unknown tls key", TLS + "  certfile: x\n", "certfile"),
    web("cert without key", "tls_server_config:\n  cert_file: server.crt\n", "key_file"),
    web(
        "missing cert path",
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
        "nope.crt",
    ),
    web(
        "cert is not a certificate",
        "tls_server_config:\n  cert_file: web.yml\n  key_file: web.yml\n",
        "certificate",
    ),
    web("bad min_version", TLS + "  min_version: TLS14\n", "TLS14"),
    web("md5 hash", "basic_auth_users:\n  bob: 5f4dcc3b5aa765d61d8327deb882cf99\n", "bob"),
    web("users not a mapping", "basic_auth_users: [alice]\n", "basic_auth_users"),
    web("http2 server config", "http_server_config: {http2: false}\n", "http_server_config"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return self_signed(tmp_path_factory.mktemp("badinput"))


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_bad_input_exits_2_with_one_clear_line(case: Case, certs: Path) -> None:
    if case.web_yml is not None:
        data = case.web_yml.encode() if isinstance(case.web_yml, str) else case.web_yml
        (certs / "web.yml").write_bytes(data)
    argv = [a.replace("{tmp}", str(certs)) for a in case.argv]
    env = {k: v.replace("{tmp}", str(certs)) for k, v in case.env.items()}
    p = subprocess.run(
        # Without CAP_SYS_ADMIN: a case wrongly accepted stops at the capability check
        # (exit 1) instead of loading probes or switching stats on.
        [*NO_SYS_ADMIN, sys.executable, "-m", "linnix_exporter", "run", *argv],
        # Nothing inherited: a stray LINNIX_*/OTEL_* of the caller must not decide the case.
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("linnix-exporter"), line
    for needle in case.needles:
        assert needle.replace("{tmp}", str(certs)) in line, (needle, line)
