"""Command line: `linnix-exporter run` starts the daemon; `snapshot`, `compare` and `prove`
are the tools in linnix_exporter/tools/ (each module registers its own subcommand).
The daemon's parts are built in wiring.py; exit codes are in errors.py.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from linnix_exporter import __version__, log, wiring
from linnix_exporter.config import (
    RUN_OPTIONS,
    ArgParser,
    RunConfig,
    add_options,
    deprecated_flags,
)
from linnix_exporter.config import run_config as resolve_run_config
from linnix_exporter.errors import EXIT_HOST, EXIT_OK, EXIT_USAGE, ConfigError, Fatal
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.tools import TOOLS

if TYPE_CHECKING:
    from linnix_exporter.collectors.probes import ProbeSource
    from linnix_exporter.schedule import Ticker
    from linnix_exporter.sinks.otlp import OtlpSink
    from linnix_exporter.web import Server


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


def run(cfg: RunConfig) -> int:
    logger = log.get("main")
    bcc_ok = wiring.check_host(cfg)
    stats = StatsSwitch()
    probes: ProbeSource | None = None
    server: Server | None = None
    otlp: list[OtlpSink] = []  # the push sink once started (its status is served)
    otlp_thread: threading.Thread | None = None
    ticker: Ticker | None = None
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
        if ticker is not None:
            ticker.kick()  # its loop sleeps until kicked (on demand: no timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        controller = wiring.start_stats(cfg, stats, time.monotonic())
        probes = wiring.load_probes(cfg) if cfg.probes_enabled else None
        iters = wiring.open_iterators(cfg) if bcc_ok else wiring.Iterators()
        sources = wiring.kernel_sources(cfg, controller, probes, iters)
        ticker = wiring.make_ticker(cfg, sources, controller)
        signal.set_wakeup_fd(ticker.wakeup_fd, warn_on_full_buffer=False)
        ticker.tick()
        server = wiring.start_server(cfg, ticker, otlp)
        if cfg.otlp is not None:
            sink, otlp_thread = wiring.start_otlp(cfg, ticker, stop)
            otlp.append(sink)
        ticker.run(stop)
        return EXIT_OK
    finally:
        signal.set_wakeup_fd(-1)
        if received:
            logger.info("stopping", signal=signal.Signals(received[0]).name)
        # Every exit path: stop pushing and serving, detach the probes, put stats back.
        if otlp_thread is not None:
            stop.set()
            otlp_thread.join(timeout=cfg.otlp.timeout_seconds + 1 if cfg.otlp else 1)
            otlp[0].shutdown()
        if server is not None:
            server.shutdown()
            server.server_close()
        if ticker is not None:
            ticker.exporter.close()
        if probes is not None:
            probes.close()
        stats.close()
