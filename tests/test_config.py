"""Configuration: flags beat env, env beats defaults, bad values are one line + exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linnix_exporter.cli import build_parser
from linnix_exporter.config import (
    RUN_OPTIONS,
    ConfigError,
    RunConfig,
    deprecated_flags,
    otlp_settings,
    parse_duration,
    parse_listen_address,
    parse_ratio,
    run_config,
)


def cfg(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return run_config(build_parser().parse_args(["run", *argv]), env or {})


def test_defaults() -> None:
    c = cfg([])
    assert c.web_listen_address == ("", 10924)
    assert c.web_telemetry_path == "/metrics"
    assert c.collect_interval == 10.0
    assert c.overhead_budget == 0.01
    assert c.probes_enabled is True
    assert c.bpf_node_budget == 0.05
    assert c.attribution_pod_logs_path == "/var/log/pods"
    other = cfg(["--bpf.node-budget", "10%"], {"LINNIX_EXPORTER_ATTRIBUTION_POD_LOGS_PATH": "/x"})
    assert other.bpf_node_budget == pytest.approx(0.1)
    assert other.attribution_pod_logs_path == "/x"


def test_flag_beats_env_beats_default() -> None:
    env = {"LINNIX_EXPORTER_COLLECT_INTERVAL": "30s", "LINNIX_EXPORTER_OVERHEAD_BUDGET": "2%"}
    c = cfg(["--collect.interval", "5s"], env)
    assert c.collect_interval == 5.0
    assert c.overhead_budget == pytest.approx(0.02)


def test_boolean_env_and_flag() -> None:
    assert cfg([], {"LINNIX_EXPORTER_PROBES_ENABLED": "false"}).probes_enabled is False
    assert cfg(["--probes.enabled"], {"LINNIX_EXPORTER_PROBES_ENABLED": "false"}).probes_enabled
    assert cfg(["--no-probes.enabled"]).probes_enabled is False


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("2", 2.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1s", "ten", "5 parsecs", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_ratio_and_percent() -> None:
    assert parse_ratio("0.01") == 0.01
    assert parse_ratio("1%") == pytest.approx(0.01)
    for bad in ("0", "1.5", "200%", "x"):
        with pytest.raises(ValueError):
            parse_ratio(bad)


def test_listen_addresses() -> None:
    assert parse_listen_address(":9") == ("", 9)
    assert parse_listen_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost", ":http", ":70000"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


def test_env_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="LINNIX_EXPORTER_BPF_TOP_PROGRAMS"):
        cfg([], {"LINNIX_EXPORTER_BPF_TOP_PROGRAMS": "many"})


def test_program_filters() -> None:
    c = cfg(["--bpf.include-type", "tracepoint,xdp", "--bpf.exclude-name", "^cilium_"])
    assert c.program_filter.active
    assert c.program_filter.keep("fork_probe", "tracepoint")
    assert not c.program_filter.keep("cilium_x", "xdp")
    assert not c.program_filter.keep("foo", "kprobe")


def test_old_spellings_set_the_same_options() -> None:
    """Flags before the dotted scheme still work (cli logs a deprecation line for each);
    the env vars were already LINNIX_EXPORTER_OVERHEAD_BUDGET / _NODE_NAME and stay."""
    old = cfg(["--overhead-budget", "2%", "--node-name", "n1"])
    assert (old.overhead_budget, old.node_name) == (0.02, "n1")
    env = cfg([], {"LINNIX_EXPORTER_OVERHEAD_BUDGET": "3%", "LINNIX_EXPORTER_NODE_NAME": "n2"})
    assert (env.overhead_budget, env.node_name) == (0.03, "n2")
    both = cfg(["--node-name", "old", "--node.name", "new", "--overhead-budget", "2%"])
    assert (both.node_name, both.overhead_budget) == ("new", 0.02)  # the new spelling wins
    args = build_parser().parse_args(["run", "--node-name", "x", "--overhead.budget", "1%"])
    assert deprecated_flags(RUN_OPTIONS, args) == [("--node-name", "--node.name")]


BAD = [
    (["--collect.interval", "soon"], {}, "--collect.interval"),
    (["--overhead.budget", "7"], {}, "--overhead.budget"),
    (["--overhead-budget", "7"], {}, "--overhead-budget"),  # the spelling the user typed
    (["--bpf.node-budget", "1.5"], {}, "--bpf.node-budget"),
    (["--attribution.pod-logs-path", "./pods"], {}, "--attribution.pod-logs-path"),
    (["--web.listen-address", "nohost"], {}, "--web.listen-address"),
    (["--web.telemetry-path", "metrics"], {}, "--web.telemetry-path"),
    (["--bpf.include-name", "("], {}, "--bpf.include-name"),
    (["--log.level", "loud"], {}, "--log.level"),
    (["--no-such-flag"], {}, "unrecognized arguments"),
    ([], {"LINNIX_EXPORTER_LOG_FORMAT": "xml"}, "LINNIX_EXPORTER_LOG_FORMAT"),
    ([], {"LINNIX_EXPORTER_PROBES_ENABLED": "maybe"}, "LINNIX_EXPORTER_PROBES_ENABLED"),
    ([], {"LINNIX_EXPORTER_PROBES_COMM_SLOTS": "1"}, "LINNIX_EXPORTER_PROBES_COMM_SLOTS"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:21"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ([], {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:99999"}, "bad port"),
    (["--otlp.enabled"], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "not supported"),
    (["--otlp.enabled"], {"OTEL_EXPORTER_OTLP_PROTOCOL": "pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    (["--otlp.enabled"], {"OTEL_EXPORTER_OTLP_HEADERS": "api-key"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    (["--otlp.enabled"], {"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "OTEL_METRIC_EXPORT_INTERVAL"),
    (["--otlp.enabled"], {"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    (["--otlp.enabled"], {"OTEL_RESOURCE_ATTRIBUTES": "node"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ([], {"LINNIX_EXPORTER_OTLP_ENABLED": "perhaps"}, "LINNIX_EXPORTER_OTLP_ENABLED"),
]


@pytest.mark.parametrize(("argv", "env", "needle"), BAD)
def test_bad_input_exits_2_with_one_line(argv: list[str], env: dict[str, str], needle: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "run", *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert needle in lines[0]
    assert "Traceback" not in p.stderr


def test_help_documents_every_option() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0
    for flag in (
        "--web.listen-address",
        "--web.telemetry-path",
        "--log.level",
        "--log.format",
        "--collect.interval",
        "--overhead.budget",
        "LINNIX_EXPORTER_WEB_LISTEN_ADDRESS",
    ):
        assert flag in p.stdout


def test_otlp_off_unless_asked() -> None:
    assert cfg([]).otlp is None
    assert cfg(["--no-otlp.enabled"], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).otlp is None


def test_otlp_http_endpoint_rules() -> None:
    base = cfg([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).otlp
    assert base is not None and base.protocol == "http/protobuf"
    assert base.endpoint == "http://c:4318/v1/metrics"  # generic: signal path appended
    specific = cfg(
        [],
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m:443/custom",
        },
    ).otlp
    assert specific is not None and specific.endpoint == "https://m:443/custom"  # as is
    default = cfg(["--otlp.enabled"]).otlp
    assert default is not None and default.endpoint == "http://localhost:4318/v1/metrics"
    assert default.interval_seconds == 60.0 and default.timeout_seconds == 10.0


def test_otlp_grpc_headers_interval() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "Api-Key=a%20b,x-tenant=t1",
        "OTEL_METRIC_EXPORT_INTERVAL": "10000",
    }
    o = cfg([], env).otlp
    assert o is not None
    assert (o.protocol, o.endpoint, o.insecure) == ("grpc", "http://c:4317", True)
    assert o.headers == {"api-key": "a b", "x-tenant": "t1"}
    assert o.interval_seconds == 10.0


def test_otlp_compression_values() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert otlp_settings({**base, "OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"})
    assert otlp_settings({**base, "OTEL_EXPORTER_OTLP_COMPRESSION": "none"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_COMPRESSION: 'deflate'"):
        otlp_settings({**base, "OTEL_EXPORTER_OTLP_COMPRESSION": "deflate"})
    grpc = {**base, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}  # the gRPC exporter knows it
    assert otlp_settings({**grpc, "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "deflate"})


def test_otlp_tls_files_load_at_startup(tmp_path: Path) -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:4318"}
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_CERTIFICATE: .*no usable CA"):
        otlp_settings({**base, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(junk)})
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_CLIENT_KEY: .*needs a client cert"):
        otlp_settings({**base, "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(junk)})
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: .*not a usable"):
        otlp_settings({**base, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(junk)})
    with pytest.raises(ConfigError, match="no such file"):
        otlp_settings({**base, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "none.pem")})


def test_collector_switches_node_exporter_spelling() -> None:
    def cfg(*argv: str, env: dict[str, str] | None = None) -> RunConfig:
        return run_config(build_parser().parse_args(["run", *argv]), env or {})

    default = cfg()
    # hooks is off by default (its calibration costs start-up CPU; collectors.DEFAULT_OFF)
    assert default.collectors == {"self", "probes", "programs", "owners", "statistics"}
    assert "hooks" in cfg("--collector.hooks").collectors
    off = cfg("--collector.hooks", "--no-collector.owners", "--no-collector.statistics")
    assert off.collectors == {"self", "probes", "programs", "hooks"}
    # Env as every other flag; a flag wins over its variable.
    by_env = cfg(env={"LINNIX_EXPORTER_COLLECTOR_SELF": "false"})
    assert "self" not in by_env.collectors
    flag_wins = cfg("--collector.self", env={"LINNIX_EXPORTER_COLLECTOR_SELF": "false"})
    assert "self" in flag_wins.collectors
    # One switch in effect for the probes; programs off takes the owners with it.
    assert not cfg("--no-collector.probes").probes_enabled
    assert cfg("--no-probes.enabled").collectors == {"self", "programs", "owners", "statistics"}
    # ... and the hooks, which label the programs just read
    assert cfg("--collector.hooks", "--no-collector.programs").collectors == {
        "self",
        "probes",
        "statistics",
    }


def test_bad_collector_switch_is_one_line() -> None:
    with pytest.raises(ConfigError, match="LINNIX_EXPORTER_COLLECTOR_OWNERS"):
        run_config(
            build_parser().parse_args(["run"]), {"LINNIX_EXPORTER_COLLECTOR_OWNERS": "maybe"}
        )
