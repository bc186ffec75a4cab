"""Configuration: one table of options, read from flags, then LINNIX_EXPORTER_* env vars,
then defaults (flags win). Every value passes the same parser whatever its source, so a
bad env var fails exactly like a bad flag: one line naming the option, exit 2."""

from __future__ import annotations

import argparse
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from linnix_exporter.collectors import DEFAULT_OFF as COLLECTOR_DEFAULT_OFF
from linnix_exporter.collectors import HELP as COLLECTOR_HELP
from linnix_exporter.collectors import NAMES as COLLECTOR_NAMES
from linnix_exporter.collectors import enabled_collectors
from linnix_exporter.errors import ConfigError
from linnix_exporter.program_filter import ProgramFilter
from linnix_exporter.snapshot import ALWAYS, AUTO, SAMPLED
from linnix_exporter.tick import PROBES

if TYPE_CHECKING:
    from linnix_exporter.webconfig import WebConfig

ENV_PREFIX = "LINNIX_EXPORTER_"
ON_DEMAND, TIMER = "on-demand", "timer"  # --collect.mode
DEFAULT_PORT = 10924  # 9100-9999 is fully allocated on the Prometheus port list


# ---- value parsers (each raises ValueError with a short reason) -----------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'10s', '500ms', '5m', '1h' or plain seconds -> seconds (> 0)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 10s, 500ms, 5m)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


def parse_ratio(text: str) -> float:
    """'0.01' or '1%' -> 0.01, within (0, 1]."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"invalid ratio {text!r} (use e.g. 0.01 or 1%)") from None
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1] (or 0-100%), got {text!r}")
    return value


def parse_count(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"not a whole number: {text!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip().lower() not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text.strip().lower()

    return parse


def parse_regex(text: str) -> re.Pattern[str] | None:
    if text == "":
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"invalid regular expression {text!r}: {e}") from None


def parse_list(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def parse_listen_address(text: str) -> tuple[str, int]:
    """'host:port', ':port' or '[v6]:port' -> (host, port); empty host = all interfaces."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"invalid listen address {text!r} (use host:port or :port)")
    host = host.removeprefix("[").removesuffix("]")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"invalid port in listen address {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in listen address {text!r}")
    return host, number


def parse_tristate(text: str) -> bool | None:
    """'' or 'auto' -> None (decide later), else a boolean."""
    return None if text.strip().lower() in ("", "auto") else parse_bool(text)


def parse_path(text: str) -> str:
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise ValueError(f"must be an absolute URL path like /metrics, got {text!r}")
    return text


def parse_fs_path(text: str) -> str:
    """An absolute filesystem path (it need not exist yet)."""
    if not text.startswith("/") or "\0" in text:
        raise ValueError(f"must be an absolute path, got {text!r}")
    return text


def parse_web_config(text: str) -> WebConfig | None:
    """'' -> None (plain HTTP, no auth), else the checked web-config file."""
    if text.strip() == "":
        return None
    from linnix_exporter.webconfig import load  # imports yaml: only when used

    return load(text.strip())


# ---- the option table -----------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    flag: str
    parse: Callable[[str], Any]
    default: str
    help: str
    metavar: str | None = None
    boolean: bool = False
    # Earlier spellings of the flag, still accepted with a deprecation line in the log.
    # The env var is derived from `dest`, so it is the same for every spelling.
    deprecated: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace(".", "_").replace("-", "_")

    def old_dest(self, i: int) -> str:
        """Where argparse keeps a value given under deprecated[i]."""
        return f"{self.dest}__deprecated{i}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "--web.listen-address",
        parse_listen_address,
        f":{DEFAULT_PORT}",
        "Address to serve /metrics, /healthz and /readyz on: host:port, :port or [v6]:port.",
        "ADDR",
    ),
    Option("--web.telemetry-path", parse_path, "/metrics", "URL path of the metrics.", "PATH"),
    Option(
        "--web.config.file",
        parse_web_config,
        "",
        "Web config file (exporter-toolkit format) enabling TLS and/or basic auth on the "
        "HTTP endpoint; basic auth then covers every path, /healthz and /readyz included.",
        "FILE",
    ),
    Option(
        "--collect.interval",
        parse_duration,
        "10s",
        "How often the kernel is read. Ratios are computed over the measured time "
        "between two reads. Shorter costs more CPU.",
        "DURATION",
    ),
    Option(
        "--collect.mode",
        parse_choice(ON_DEMAND, TIMER),
        ON_DEMAND,
        "When the kernel is read. on-demand: when a scrape or an OTLP push finds the last "
        "read older than --collect.interval (concurrent consumers share one read; nothing "
        "wakes up in between). timer: every --collect.interval, whoever asks.",
        "MODE",
    ),
    Option(
        "--overhead.budget",
        parse_ratio,
        "0.01",
        "Overhead budget as a share of the node (0.01 or 1%%), exported as "
        "linnix_overhead_budget_ratio for alert rules to compare against.",
        "RATIO",
        deprecated=("--overhead-budget",),
    ),
    Option(
        "--bpf.stats-method",
        parse_choice("auto", "enable_stats_fd", "sysctl", "off"),
        "auto",
        "How to turn on kernel BPF run-time statistics: auto tries BPF_ENABLE_STATS "
        "(off again when we exit, even after SIGKILL), then the sysctl "
        "kernel.bpf_stats_enabled (restored on exit). off: never touch them.",
        "METHOD",
    ),
    Option(
        "--bpf.stats-mode",
        parse_choice(ALWAYS, SAMPLED, AUTO),
        AUTO,
        "When statistics are on. always: all the time. sampled: only for a window at the "
        "end of each interval, as long as the stats budget share allows (5-50%%). auto: "
        "always, switching to sampled while statistics' cost to every program run would "
        "pass --bpf.stats-budget-share of the overhead budget.",
        "MODE",
    ),
    Option(
        "--bpf.stats-budget-share",
        parse_ratio,
        "0.5",
        "Share of --overhead.budget the cost of statistics may take (0.5 or 50%%) before "
        "auto samples them, and that sampled mode sizes its window to.",
        "RATIO",
    ),
    Option(
        "--bpf.read-method",
        parse_choice("auto", "iterator", "syscall"),
        "auto",
        "How to read every program's statistics: iterator (one BPF iterator read for all "
        "programs, kernel 5.19+), syscall (3 bpf() calls per program), auto: iterator, "
        "falling back to syscall.",
        "METHOD",
    ),
    Option(
        "--bpf.top-programs",
        parse_count(0, 100_000),
        "50",
        "List at most this many programs (largest run time first; ours always); the "
        'rest add up in one series with name="[other]". Owners are bounded the same way '
        '(owner_comm="[other]").',
        "N",
    ),
    Option(
        "--bpf.include-name",
        parse_regex,
        "",
        "Only list programs whose name matches this regex (others go to [other]).",
        "REGEX",
    ),
    Option(
        "--bpf.exclude-name",
        parse_regex,
        "",
        "Never list programs whose name matches this regex.",
        "REGEX",
    ),
    Option(
        "--bpf.include-type",
        parse_list,
        "",
        "Only list programs of these types, comma-separated (e.g. tracepoint,xdp).",
        "TYPES",
    ),
    Option("--bpf.exclude-type", parse_list, "", "Never list programs of these types.", "TYPES"),
    Option(
        "--bpf.owner-refresh",
        parse_duration,
        "60s",
        "Rescan for program owners (one read of the owners iterator, else a /proc walk) at "
        "least this often (and when programs appear).",
        "DURATION",
    ),
    Option(
        "--bpf.owner-scan-budget",
        parse_ratio,
        "0.0002",
        "Share of one core owner scans may take (0.0002 = 0.02%%): after a scan that took "
        "c seconds of CPU the next waits at least c / budget, however many programs "
        "appear. A scan is one read of the owners iterator (about 50 ms with 200,000 fds "
        "on the host), else a /proc walk (about 1 s); the read of every map's memory that "
        "follows it counts too (about 30 us per map).",
        "RATIO",
    ),
    Option(
        "--bpf.node-budget",
        parse_ratio,
        "0.05",
        "Budget for all BPF programs on the node together (everyone's, ours included) as a "
        "share of the node, exported as linnix_bpf_budget_ratio for alert rules.",
        "RATIO",
    ),
    Option(
        "--attribution.pod-logs-path",
        parse_fs_path,
        "/var/log/pods",
        "The kubelet's pod log directory (entries <namespace>_<pod>_<uid>): names the pod "
        "of a program owner's cgroup. Read-only; absent outside Kubernetes.",
        "DIR",
    ),
    Option(
        "--probes.enabled",
        parse_bool,
        "true",
        "Load the Linnix process probes (fork/exec/exit). Without them the exporter "
        "only measures other programs.",
        boolean=True,
    ),
    Option(
        "--probes.comm-slots",
        parse_count(16, 65536),
        "1024",
        "Size of the in-kernel per-command LRU map.",
        "N",
    ),
    Option(
        "--probes.top-comms",
        parse_count(0, 10_000),
        "30",
        'List at most this many command names; the rest add up in comm="[other]".',
        "N",
    ),
    Option(
        "--probes.load-timeout",
        parse_duration,
        "60s",
        "Give up if compiling and attaching the probes takes longer.",
        "DURATION",
    ),
    *(
        Option(
            f"--collector.{name}",
            parse_bool,
            "false" if name in COLLECTOR_DEFAULT_OFF else "true",
            f"Enable the {name} collector: {COLLECTOR_HELP[name]}.",
            boolean=True,
        )
        for name in COLLECTOR_NAMES
    ),
    Option(
        "--prometheus.enabled",
        parse_bool,
        "true",
        "Serve Prometheus metrics on the telemetry path (/healthz and /readyz are always served).",
        boolean=True,
    ),
    Option(
        "--otlp.enabled",
        parse_tristate,
        "auto",
        "Push metrics over OTLP. auto: on when OTEL_EXPORTER_OTLP_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set. The OTLP target is configured with "
        "the standard OTEL_* variables (see README).",
        boolean=True,
    ),
    Option(
        "--node.name",
        str,
        "",
        "Name of this node: k8s.node.name on the OTLP resource (e.g. from the downward "
        "API); a fleet's Prometheus agent sets the same name as the instance label.",
        "NAME",
        deprecated=("--node-name",),
    ),
    Option(
        "--log.level", parse_choice("debug", "info", "warn", "error"), "info", "Log level.", "LEVEL"
    ),
    Option(
        "--log.format",
        parse_choice("auto", "json", "console"),
        "auto",
        "Log format: auto is console on a terminal and JSON otherwise.",
        "FORMAT",
    ),
)


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for o in options:
        helptext = f"{o.help} [env {o.env}] (default: {o.default or 'unset'})"
        if o.boolean:
            parser.add_argument(
                o.flag,
                dest=o.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=helptext,
            )
        else:
            parser.add_argument(o.flag, dest=o.dest, default=None, metavar=o.metavar, help=helptext)
        for i, old in enumerate(o.deprecated):  # not in --help; see deprecated_flags()
            parser.add_argument(old, dest=o.old_dest(i), default=None, help=argparse.SUPPRESS)


def deprecated_flags(options: Sequence[Option], args: argparse.Namespace) -> list[tuple[str, str]]:
    """(old spelling, new flag) of every deprecated spelling given on the command line."""
    return [
        (old, o.flag)
        for o in options
        for i, old in enumerate(o.deprecated)
        if getattr(args, o.old_dest(i), None) is not None
    ]


def resolve(
    options: Sequence[Option], args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Flag, else env var, else default; each parsed by the option's parser."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for o in options:
        given, flag = getattr(args, o.dest, None), o.flag
        for i, old in enumerate(o.deprecated):  # the new spelling wins over an old one
            if given is None and getattr(args, o.old_dest(i), None) is not None:
                given, flag = getattr(args, o.old_dest(i)), old
        if isinstance(given, bool):
            out[o.dest] = given
            continue
        source, raw = (flag, given) if given is not None else (o.env, env.get(o.env))
        if raw is None:
            source, raw = "default", o.default
        try:
            out[o.dest] = o.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return out


@dataclass(frozen=True)
class RunConfig:
    web_listen_address: tuple[str, int]
    web_telemetry_path: str
    collect_interval: float
    collect_mode: str
    overhead_budget: float
    bpf_stats_method: str
    bpf_stats_mode: str
    bpf_stats_budget_share: float
    bpf_read_method: str
    bpf_top_programs: int
    bpf_include_name: re.Pattern[str] | None
    bpf_exclude_name: re.Pattern[str] | None
    bpf_include_type: frozenset[str]
    bpf_exclude_type: frozenset[str]
    bpf_owner_refresh: float
    bpf_owner_scan_budget: float
    probes_enabled: bool
    probes_comm_slots: int
    probes_top_comms: int
    probes_load_timeout: float
    prometheus_enabled: bool
    otlp_enabled: bool | None
    node_name: str
    log_level: str
    log_format: str
    otlp: OtlpSettings | None = None  # resolved from OTEL_* when OTLP is on
    web_config_file: WebConfig | None = None  # --web.config.file: TLS / basic auth
    bpf_node_budget: float = 0.05
    attribution_pod_logs_path: str = "/var/log/pods"
    # The collectors a tick reads (collectors.enabled_collectors of --collector.<name>).
    collectors: frozenset[str] = frozenset(COLLECTOR_NAMES) - COLLECTOR_DEFAULT_OFF

    @property
    def program_filter(self) -> ProgramFilter:
        """Which programs may get their own series (--bpf.include-*/exclude-*)."""
        return ProgramFilter(
            self.bpf_include_name,
            self.bpf_exclude_name,
            self.bpf_include_type,
            self.bpf_exclude_type,
        )


def run_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> RunConfig:
    env = os.environ if env is None else env
    values = resolve(RUN_OPTIONS, args, env)
    on = values["otlp_enabled"]
    if on is None:
        on = bool(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        )
    values["otlp_enabled"] = on
    values["otlp"] = otlp_settings(env) if on else None
    switched_on = frozenset(n for n in COLLECTOR_NAMES if values.pop(f"collector_{n}"))
    # One switch in effect: --no-collector.probes is --no-probes.enabled.
    values["probes_enabled"] = values["probes_enabled"] and PROBES in switched_on
    values["collectors"] = enabled_collectors(switched_on, values["probes_enabled"])
    return RunConfig(**values)


# ---- OpenTelemetry environment (the variables users already know) ---------------------

OTLP_PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class OtlpSettings:
    protocol: str  # grpc | http/protobuf
    endpoint: str  # full URL: for HTTP including the /v1/metrics path
    insecure: bool  # gRPC only: plain text when the endpoint scheme is http
    headers: dict[str, str]
    timeout_seconds: float
    interval_seconds: float
    compression: str = "none"  # gzip | none (| deflate for gRPC)
    # HTTP transport: CA bundle and client certificate, loaded at start-up (None for
    # http:// without TLS variables). The gRPC exporter reads the same variables itself.
    tls: ssl.SSLContext | None = None


def _env(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of `names` that is set (signal-specific before generic), with its name."""
    for n in names:
        v = env.get(n)
        if v is not None and v.strip() != "":
            return n, v.strip()
    return None


def _url(name: str, text: str) -> str:
    u = urllib.parse.urlsplit(text)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"{name}: {text!r} is not an http(s) URL (e.g. http://collector:4318)")
    try:
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{name}: bad port in {text!r}") from None
    return text


def _headers(name: str, text: str) -> dict[str, str]:
    """W3C-baggage-like 'k1=v1,k2=v2' with URL-encoded values, as the OTel spec says."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key):
            raise ConfigError(f"{name}: {item.strip()!r} is not key=value")
        out[key.lower()] = urllib.parse.unquote(value.strip())
    return out


def _millis(name: str, text: str) -> float:
    try:
        ms = float(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number of milliseconds") from None
    if not 0 < ms < 1e9:
        raise ConfigError(f"{name}: must be a positive number of milliseconds, got {text!r}")
    return ms / 1000


OTLP_COMPRESSIONS = ("gzip", "none")  # HTTP (ours); the gRPC exporter also knows deflate
_OTLP_CA = ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
_OTLP_CERT = (
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
)
_OTLP_KEY = ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")


def _otlp_tls(env: Mapping[str, str], endpoint: str) -> ssl.SSLContext | None:
    """The OTLP CA and client certificate, loaded now: found at the first push, a
    missing file would be a crash (or a silent failure) long after start-up."""
    ca, cert, key = _env(env, *_OTLP_CA), _env(env, *_OTLP_CERT), _env(env, *_OTLP_KEY)
    for found in (ca, cert, key):
        if found is not None and not os.access(found[1], os.R_OK):
            why = "no such file" if not os.path.exists(found[1]) else "not readable"
            raise ConfigError(f"{found[0]}: cannot read {found[1]!r} ({why})")
    if key is not None and cert is None:
        raise ConfigError(f"{key[0]}: a client key needs a client certificate too")
    if urllib.parse.urlsplit(endpoint).scheme != "https" and ca is None and cert is None:
        return None  # plain HTTP: no CA bundle to load
    try:
        ctx = ssl.create_default_context(cafile=ca[1] if ca else None)
    except (ssl.SSLError, OSError, ValueError) as e:
        assert ca is not None
        raise ConfigError(f"{ca[0]}: {ca[1]!r} holds no usable CA certificate ({e})") from None
    if cert is not None:
        try:
            ctx.load_cert_chain(cert[1], key[1] if key else None)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise ConfigError(
                f"{cert[0]}: {cert[1]!r} is not a usable client certificate and key ({e})"
            ) from None
    return ctx


def otlp_settings(env: Mapping[str, str]) -> OtlpSettings:
    """Read and check the OTEL_* variables; a bad one is a ConfigError naming it."""
    found = _env(env, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = found[1].lower() if found else "http/protobuf"
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigError(
            f"{found[0] if found else 'protocol'}: {protocol!r} is not supported "
            f"(use {' or '.join(OTLP_PROTOCOLS)})"
        )
    specific = _env(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    generic = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    default_base = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"
    if specific:
        endpoint = _url(*specific)  # used as is
    else:
        base = _url(*generic) if generic else default_base
        # The generic endpoint is a base URL: HTTP appends the signal's path.
        endpoint = base if protocol == "grpc" else base.rstrip("/") + "/v1/metrics"
    headers: dict[str, str] = {}
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"):
        if (h := _env(env, name)) is not None:
            headers.update(_headers(*h))
    timeout = _env(env, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    interval = _env(env, "OTEL_METRIC_EXPORT_INTERVAL")
    attrs = _env(env, "OTEL_RESOURCE_ATTRIBUTES")
    if attrs:
        _headers(*attrs)  # same key=value,... syntax: fail now, not at the first push
    comp = _env(env, "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
    known = OTLP_COMPRESSIONS + (("deflate",) if protocol == "grpc" else ())
    if comp is not None and comp[1].lower() not in known:
        raise ConfigError(f"{comp[0]}: {comp[1]!r} is not supported (use {', '.join(known)})")
    return OtlpSettings(
        protocol=protocol,
        endpoint=endpoint,
        insecure=urllib.parse.urlsplit(endpoint).scheme == "http",
        headers=headers,
        timeout_seconds=_millis(*timeout) if timeout else 10.0,
        interval_seconds=_millis(*interval) if interval else 60.0,
        compression=comp[1].lower() if comp else "none",
        tls=_otlp_tls(env, endpoint),
    )
