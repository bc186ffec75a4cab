"""Wiring: the daemon's parts built from a RunConfig, shared by cli.py, tests and
benches. Each builder does one thing (the host, statistics, probes, iterators, the
sources, the ticker, the HTTP server, the OTLP sink); cli.run() calls them in order and
owns their clean-up. Start-up failures are errors.Fatal with one line for the user.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.registry import CollectorRegistry

from linnix_exporter import log
from linnix_exporter.collectors.probes import ProbeSource
from linnix_exporter.collectors.statistics import StatsSource
from linnix_exporter.config import RunConfig
from linnix_exporter.errors import Fatal
from linnix_exporter.kernel import host
from linnix_exporter.kernel.attribution import Attributor, CgroupPods
from linnix_exporter.kernel.bpf_syscall import BpfError, online_cpus
from linnix_exporter.kernel.hook_cost import calibrate_now
from linnix_exporter.kernel.hooks import HooksReader
from linnix_exporter.kernel.prog_iter import IterLink
from linnix_exporter.kernel.progstats import OwnerScanner, ProgramReads, ProgSource, scan_owners
from linnix_exporter.kernel.self_usage import SelfUsageReader
from linnix_exporter.kernel.stats_cost import StatsCalibrator
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.schedule import Clock, Ticker, schedule_for
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.state import Exporter, Sources
from linnix_exporter.stats_control import StatsController
from linnix_exporter.tick import HOOKS
from linnix_exporter.web import Server, serve

if TYPE_CHECKING:
    from linnix_exporter.kernel.owner_iter import OwnerIterReader
    from linnix_exporter.sinks.otlp import OtlpSink

_log = log.get("main")


def check_host(cfg: RunConfig) -> bool:
    """Fatal if this host cannot run us; False: bcc cannot compile here (the syscall
    path still works)."""
    # Listing every program (BPF_PROG_GET_NEXT_ID) and BPF_ENABLE_STATS need
    # CAP_SYS_ADMIN; it also covers CAP_BPF/CAP_PERFMON for loading and attaching.
    missing = host.missing_caps((host.CAP_SYS_ADMIN,))
    if missing:
        raise Fatal(
            f"missing capability {', '.join(missing)}: needed to list all BPF programs and "
            "turn on their statistics; run as root or grant it (e.g. setcap/securityContext)"
        )
    # bcc compiles the probes and the stats iterator: it needs tracefs, headers, BTF.
    if cfg.probes_enabled or cfg.bpf_read_method != "syscall":
        try:
            for line in host.prepare():
                _log.info("host prepared", action=line)
        except host.HostError as e:
            if cfg.probes_enabled or cfg.bpf_read_method == "iterator":
                raise Fatal(str(e)) from None
            _log.warning("cannot compile BPF here, reading programs with bpf()", error=str(e))
            return False
    return True


def start_stats(cfg: RunConfig, switch: StatsSwitch, now: float) -> StatsController:
    """Statistics on (as --bpf.stats-method says), their cost calibrated, and the
    controller that samples them (--bpf.stats-mode)."""
    restored = switch.recover_after_crash()
    if restored is not None:
        _log.warning("restored kernel.bpf_stats_enabled left by a killed run", value=restored)
    state = switch.enable(cfg.bpf_stats_method)
    log_stats = _log.info if state.enabled else _log.warning
    log_stats("bpf stats", enabled=state.enabled, method=state.method, note=switch.error or None)
    calibrator: StatsCalibrator | None = None
    if state.enabled:
        try:
            calibrator = StatsCalibrator()
        except BpfError as e:
            _log.warning("cannot load the stats calibration program", error=str(e))
    ctl = StatsController(
        switch,
        cfg.bpf_stats_mode,
        cfg.overhead_budget,
        cfg.bpf_stats_budget_share,
        calibrator,
    )
    ctl.start(now)  # nothing reads the counters yet: a moment off loses no run
    return ctl


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


def open_iterators(cfg: RunConfig) -> Iterators:
    """The BPF stats iterator (all programs in one read) and the owners iterator (every
    program and link fd on the host in one read) where the kernel allows them."""
    if cfg.bpf_read_method == "syscall":
        return Iterators()
    from linnix_exporter.kernel import iter_loader
    from linnix_exporter.kernel.prog_iter import IterError

    try:
        # No BTF pre-check here: parsing vmlinux BTF in the daemon would keep ~8 MB
        # resident. The loader child checks it and reports why it cannot load.
        reader, owners, why = iter_loader.load_iterators(timeout=cfg.probes_load_timeout)
    except IterError as e:
        if cfg.bpf_read_method == "iterator":
            raise Fatal(f"cannot load the BPF stats iterator: {e}") from None
        _log.warning("bpf iterator unavailable, reading programs with bpf()", error=str(e))
        return Iterators()
    _log.info("bpf stats iterator loaded", program_id=reader.prog_id)
    if owners is None:
        _log.warning("owners iterator unavailable, scanning /proc for owners", error=why)
    else:
        _log.info("bpf owners iterator loaded", program_id=owners.prog_id)
    return Iterators(reader, owners)


def load_probes(cfg: RunConfig) -> ProbeSource:
    from linnix_exporter.kernel.probes import ProbeError, Probes

    try:
        probes = Probes.load(comm_slots=cfg.probes_comm_slots, timeout=cfg.probes_load_timeout)
    except ProbeError as e:
        raise Fatal(f"cannot load the probes: {e}") from None
    _log.info("probes attached", program_ids=sorted(probes.program_ids))
    return probes


def kernel_sources(
    cfg: RunConfig,
    stats: StatsSource,
    probes: ProbeSource | None = None,
    iters: Iterators | None = None,
) -> Sources:
    """The real readers a tick takes (the daemon, tests, benches)."""
    iters = iters or Iterators()
    owners = iters.owners
    attribute = Attributor(cfg.attribution_pod_logs_path)
    hooks = None
    if HOOKS in cfg.collectors:
        hooks = HooksReader(calibrate_now, pods=CgroupPods(attribute.pod))
    return Sources(
        programs=ProgramReads(iters.programs),
        owners=OwnerScanner(
            cfg.bpf_owner_refresh,
            scan=owners.scan if owners else scan_owners,
            budget=cfg.bpf_owner_scan_budget,
            close=owners.close if owners else None,
            attribute=attribute,
        ),
        self_usage=SelfUsageReader(),
        stats=stats,
        online_cpus=online_cpus,
        probes=probes,
        hooks=hooks,
        collector_ids=iters.ids,
        enabled=cfg.collectors,
    )


def make_ticker(
    cfg: RunConfig, sources: Sources, stats: StatsController | None, clock: Clock | None = None
) -> Ticker:
    """The exporter over `sources`, run on the schedule cfg and `stats` call for."""
    clock = clock or Clock()
    return Ticker(
        Exporter(cfg, sources, clock.now),
        schedule_for(cfg, stats),
        cfg.collect_interval,
        stats,
        clock,
    )


def ready(ticker: Ticker, cfg: RunConfig) -> tuple[bool, str]:
    """/readyz: a tick was read, the probes are attached, statistics are on."""
    tick = ticker.latest
    if tick is None:
        return False, "no collection yet"
    if cfg.probes_enabled and not tick.probes_attached:
        return False, "probes not attached"
    if not tick.snapshot.stats.enabled:
        return False, f"BPF statistics are off (method {tick.snapshot.stats.method})"
    return True, "ready"


def start_server(cfg: RunConfig, ticker: Ticker, otlp: list[OtlpSink]) -> Server:
    """/metrics (one encoding per tick, not per scrape), /healthz, /readyz; serving.
    `otlp`: the push sink once started (its status is served)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = TickCollector(
        lambda: ticker.latest,
        lambda: ticker.errors_total,
        lambda: otlp[0].status if otlp else None,
    )
    registry.register(collector)
    try:
        server = Server(
            cfg.web_listen_address,
            registry,
            cfg.web_telemetry_path if cfg.prometheus_enabled else None,
            lambda: ready(ticker, cfg),
            cfg.web_config_file,
            collector.version,
            ticker.fresh,  # on demand, a scrape that finds the tick stale ticks first
        )
    except OSError as e:
        host_, port = cfg.web_listen_address
        raise Fatal(f"cannot listen on {host_ or '*'}:{port}: {e.strerror}") from None
    serve(server)
    _log.info(
        "listening",
        address=f"{server.server_address[0]!s}:{server.port}",
        path=cfg.web_telemetry_path,
        interval=cfg.collect_interval,
        tls=cfg.web_config_file is not None and cfg.web_config_file.tls is not None,
        basic_auth=cfg.web_config_file is not None and cfg.web_config_file.auth is not None,
    )
    return server


def start_otlp(
    cfg: RunConfig, ticker: Ticker, stop: threading.Event
) -> tuple[OtlpSink, threading.Thread]:
    from linnix_exporter.sinks.otlp import OtlpSink, make_resource

    assert cfg.otlp is not None
    sink = OtlpSink(
        cfg.otlp,
        ticker.fresh,  # on demand, a push ticks first when the last tick is stale
        lambda: ticker.errors_total,
        make_resource(cfg.node_name),
    )
    thread = threading.Thread(target=sink.run, args=(stop,), name="otlp", daemon=True)
    thread.start()
    _log.info(
        "otlp push",
        endpoint=cfg.otlp.endpoint,
        protocol=cfg.otlp.protocol,
        interval=cfg.otlp.interval_seconds,
    )
    return sink, thread
