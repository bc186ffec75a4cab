"""Command line: `linnix-exporter run` starts the daemon; `snapshot`, `compare` and `prove`
are the tools in linnix_exporter/tools/ (each module registers its own subcommand).

Exit codes: 0 clean shutdown, 1 the host cannot run us (capability, kernel, port),
2 bad configuration (flags, env).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client.registry import CollectorRegistry

from linnix_exporter import __version__, log
from linnix_exporter.config import (
    RUN_OPTIONS,
    ArgParser,
    ConfigError,
    RunConfig,
    add_options,
    deprecated_flags,
)
from linnix_exporter.config import run_config as resolve_run_config
from linnix_exporter.kernel import host
from linnix_exporter.kernel.attribution import Attributor
from linnix_exporter.kernel.bpf_syscall import BpfError, online_cpus
from linnix_exporter.kernel.prog_iter import IterLink
from linnix_exporter.kernel.progstats import OwnerScanner, ProgramReads, ProgSource, scan_owners
from linnix_exporter.kernel.self_usage import SelfUsageReader
from linnix_exporter.kernel.stats_cost import StatsCalibrator
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.state import Exporter, ProbeSource, Sources, StatsSource, schedule_for
from linnix_exporter.stats_schedule import StatsSchedule
from linnix_exporter.tools import TOOLS
from linnix_exporter.web import Server, serve

if TYPE_CHECKING:
    from linnix_exporter.kernel.owner_iter import OwnerIterReader
    from linnix_exporter.sinks.otlp import OtlpSink

EXIT_HOST = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(
        prog="linnix-exporter",
        description="Measures what eBPF costs this node: kernel run time of every BPF "
        "program, the Linnix process probes, and the exporter's own CPU, against an "
        "overhead budget. Serves Prometheus metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgParser)
    run = sub.add_parser(
        "run",
        help="run the exporter daemon",
        description="Load the probes, turn on BPF statistics and serve /metrics, /healthz "
        "and /readyz until SIGTERM/SIGINT. Every option can also be set by the environment "
        "variable shown; a flag wins over its variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_options(run, RUN_OPTIONS)
    for name in TOOLS:
        importlib.import_module(f"linnix_exporter.tools.{name}").add_parser(sub)
    return parser


class Fatal(Exception):
    """Start-up cannot go on; str() is the one line for the user."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command != "run":
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    try:
        cfg = resolve_run_config(args)
    except ConfigError as e:
        print(f"linnix-exporter: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log.configure(cfg.log_level, cfg.log_format)
    for old, new in deprecated_flags(RUN_OPTIONS, args):
        log.get("main").warning("deprecated flag, use the new spelling", flag=old, use=new)
    try:
        return run(cfg)
    except Fatal as e:
        print(f"linnix-exporter: error: {e}", file=sys.stderr)
        return EXIT_HOST


def _ready(exporter: Exporter, cfg: RunConfig) -> tuple[bool, str]:
    tick = exporter.latest
    if tick is None:
        return False, "no collection yet"
    if cfg.probes_enabled and not tick.probes_attached:
        return False, "probes not attached"
    if not tick.snapshot.stats.enabled:
        return False, f"BPF statistics are off (method {tick.snapshot.stats.method})"
    return True, "ready"


def run(cfg: RunConfig) -> int:
    logger = log.get("main")
    # Listing every program (BPF_PROG_GET_NEXT_ID) and BPF_ENABLE_STATS need
    # CAP_SYS_ADMIN; it also covers CAP_BPF/CAP_PERFMON for loading and attaching.
    missing = host.missing_caps((host.CAP_SYS_ADMIN,))
    if missing:
        raise Fatal(
            f"missing capability {', '.join(missing)}: needed to list all BPF programs and "
            "turn on their statistics; run as root or grant it (e.g. setcap/securityContext)"
        )
    # bcc compiles the probes and the stats iterator: it needs tracefs, headers, BTF.
    bcc_ok = True
    if cfg.probes_enabled or cfg.bpf_read_method != "syscall":
        try:
            for line in host.prepare():
                logger.info("host prepared", action=line)
        except host.HostError as e:
            if cfg.probes_enabled or cfg.bpf_read_method == "iterator":
                raise Fatal(str(e)) from None
            logger.warning("cannot compile BPF here, reading programs with bpf()", error=str(e))
            bcc_ok = False

    stats = StatsSwitch()
    probes: ProbeSource | None = None
    server: Server | None = None
    otlp: tuple[OtlpSink, threading.Thread] | None = None
    exporter: Exporter | None = None
    stop = threading.Event()

    # Installed before anything is switched on: a SIGTERM during start-up then ends in
    # the same clean-up as one later (start-up finishes, the loop sees `stop` at once).
    # The handler runs in the main thread between two bytecodes, wherever that thread is
    # (inside a log write, say): it takes no lock that thread may hold. stop.set() is
    # safe because the main thread never waits on `stop` (the loop sleeps in select()).
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        if exporter is not None:
            exporter.kick()  # its loop sleeps until kicked (on demand: no timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        restored = stats.recover_after_crash()
        if restored is not None:
            logger.warning("restored kernel.bpf_stats_enabled left by a killed run", value=restored)
        state = stats.enable(cfg.bpf_stats_method)
        log_stats = logger.info if state.enabled else logger.warning
        log_stats("bpf stats", enabled=state.enabled, method=state.method, note=stats.error or None)
        calibrator: StatsCalibrator | None = None
        if state.enabled:
            try:
                calibrator = StatsCalibrator()
            except BpfError as e:
                logger.warning("cannot load the stats calibration program", error=str(e))
        stats_schedule = StatsSchedule(
            stats,
            cfg.bpf_stats_mode,
            cfg.collect_interval,
            cfg.overhead_budget,
            cfg.bpf_stats_budget_share,
            calibrator,
        )
        stats_schedule.start()  # nothing reads the counters yet: a moment off loses no run

        if cfg.probes_enabled:
            probes = _load_probes(cfg)
            logger.info("probes attached", program_ids=sorted(probes.program_ids))

        iters = _open_iterators(cfg) if bcc_ok else Iterators()
        sources = kernel_sources(cfg, stats_schedule, probes, iters)
        exporter = Exporter(cfg, sources)
        signal.set_wakeup_fd(exporter.wakeup_fd, warn_on_full_buffer=False)
        exporter.tick()
        registry = CollectorRegistry(auto_describe=False)
        # `otlp` is bound later (the sink starts after the server): the lambda reads it then.
        # On demand, reading the current tick may tick first (Exporter.current).
        collector = TickCollector(
            exporter.current,
            lambda: exporter.errors_total,
            lambda: otlp[0].status if otlp is not None else None,
        )
        registry.register(collector)
        try:
            server = Server(
                cfg.web_listen_address,
                registry,
                cfg.web_telemetry_path if cfg.prometheus_enabled else None,
                lambda: _ready(exporter, cfg),
                cfg.web_config_file,
                collector.version,  # one encoding per tick, not per scrape
            )
        except OSError as e:
            host_, port = cfg.web_listen_address
            raise Fatal(f"cannot listen on {host_ or '*'}:{port}: {e.strerror}") from None
        serve(server)
        logger.info(
            "listening",
            address=f"{server.server_address[0]!s}:{server.port}",
            path=cfg.web_telemetry_path,
            interval=cfg.collect_interval,
            tls=cfg.web_config_file is not None and cfg.web_config_file.tls is not None,
            basic_auth=cfg.web_config_file is not None and cfg.web_config_file.auth is not None,
        )

        if cfg.otlp is not None:
            otlp = _start_otlp(cfg, exporter, stop)

        exporter.run(stop, schedule_for(cfg, stats_schedule))
        return 0
    finally:
        signal.set_wakeup_fd(-1)
        if received:
            logger.info("stopping", signal=signal.Signals(received[0]).name)
        # Every exit path: stop pushing and serving, detach the probes, put stats back.
        if otlp is not None:
            otlp_sink, otlp_thread = otlp
            stop.set()
            otlp_thread.join(timeout=cfg.otlp.timeout_seconds + 1 if cfg.otlp else 1)
            otlp_sink.shutdown()
        if server is not None:
            server.shutdown()
            server.server_close()
        if exporter is not None:
            exporter.close()
        if probes is not None:
            probes.close()
        stats.close()


def kernel_sources(
    cfg: RunConfig,
    stats: StatsSource,
    probes: ProbeSource | None = None,
    iters: Iterators | None = None,
) -> Sources:
    """The real readers a tick takes (the daemon, benches)."""
    iters = iters or Iterators()
    owners = iters.owners
    return Sources(
        programs=ProgramReads(iters.programs),
        owners=OwnerScanner(
            cfg.bpf_owner_refresh,
            scan=owners.scan if owners else scan_owners,
            budget=cfg.bpf_owner_scan_budget,
            close=owners.close if owners else None,
            attribute=Attributor(cfg.attribution_pod_logs_path),
        ),
        self_usage=SelfUsageReader(),
        stats=stats,
        online_cpus=online_cpus,
        probes=probes,
        collector_ids=iters.ids,
    )


def _start_otlp(
    cfg: RunConfig, exporter: Exporter, stop: threading.Event
) -> tuple[OtlpSink, threading.Thread]:
    from linnix_exporter.sinks.otlp import OtlpSink, make_resource

    assert cfg.otlp is not None
    sink = OtlpSink(
        cfg.otlp,
        exporter.current,  # on demand, a push ticks first when the last tick is stale
        lambda: exporter.errors_total,
        make_resource(cfg.node_name),
    )
    thread = threading.Thread(target=sink.run, args=(stop,), name="otlp", daemon=True)
    thread.start()
    log.get("main").info(
        "otlp push",
        endpoint=cfg.otlp.endpoint,
        protocol=cfg.otlp.protocol,
        interval=cfg.otlp.interval_seconds,
    )
    return sink, thread


@dataclass(frozen=True)
class Iterators:
    """What the iterator child gave us: None members mean the syscall / /proc paths."""

    programs: ProgSource | None = None
    owners: OwnerIterReader | None = None

    @property
    def ids(self) -> frozenset[int]:
        """Our collector programs: labelled ours, their run time is in our CPU."""
        return frozenset(
            r.prog_id
            for r in (self.programs, self.owners)
            if isinstance(r, IterLink)  # the syscall path has no program of its own
        )


def _open_iterators(cfg: RunConfig) -> Iterators:
    """The BPF stats iterator (all programs in one read) and the owners iterator (every
    program and link fd on the host in one read) where the kernel allows them."""
    if cfg.bpf_read_method == "syscall":
        return Iterators()
    from linnix_exporter.kernel import prog_iter

    main_log = log.get("main")
    try:
        # No BTF pre-check here: parsing vmlinux BTF in the daemon would keep ~8 MB
        # resident. The loader child checks it and reports why it cannot load.
        reader, owners, why = prog_iter.load_iterators(timeout=cfg.probes_load_timeout)
    except prog_iter.IterError as e:
        if cfg.bpf_read_method == "iterator":
            raise Fatal(f"cannot load the BPF stats iterator: {e}") from None
        main_log.warning("bpf iterator unavailable, reading programs with bpf()", error=str(e))
        return Iterators()
    main_log.info("bpf stats iterator loaded", program_id=reader.prog_id)
    if owners is None:
        main_log.warning("owners iterator unavailable, scanning /proc for owners", error=why)
    else:
        main_log.info("bpf owners iterator loaded", program_id=owners.prog_id)
    return Iterators(reader, owners)


def _load_probes(cfg: RunConfig) -> ProbeSource:
    from linnix_exporter.kernel.probes import ProbeError, Probes

    try:
        return Probes.load(comm_slots=cfg.probes_comm_slots, timeout=cfg.probes_load_timeout)
    except ProbeError as e:
        raise Fatal(f"cannot load the probes: {e}") from None
