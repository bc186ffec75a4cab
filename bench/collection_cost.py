"""Collection cost vs number of BPF programs loaded (goal: <= 5 us CPU per program with
1,000 loaded). Loads N trivial programs with the raw bpf() syscall, then times full
ticks of the exporter's state machine (program stats, owners, rates, top-K) in-process,
with each read method (BPF iterator, bpf() syscalls) in the same run.

Usage: python -m bench.collection_cost [N ...]   (default 10 100 1000)
"""

from __future__ import annotations

import statistics
import sys

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from bench.common import cpu_seconds, header
from linnix_exporter.cli import build_parser
from linnix_exporter.config import run_config
from linnix_exporter.kernel.bpf_syscall import ProgReader
from linnix_exporter.kernel.prog_iter import IterProgReader
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.state import Exporter
from tests.support import trivial_prog

ROUNDS = 30


def measure(n: int, method: str) -> dict[str, float]:
    fds = trivial_prog.load_many(n, prefix="lnx_bench")
    source = IterProgReader.load() if method == "iterator" else None
    try:
        cfg = run_config(build_parser().parse_args(["run", "--no-probes.enabled"]), {})
        stats = StatsSwitch()
        stats.enable("auto")
        ids = frozenset({source.prog_id}) if source else frozenset()
        ex = Exporter(cfg, stats, None, source, ids)
        reg = CollectorRegistry(auto_describe=False)
        reg.register(TickCollector(lambda: ex.latest, lambda: 0))
        ex.tick()
        ex.tick()
        total = len(ex.latest.snapshot.programs) if ex.latest else n
        ticks, reads, scrapes = [], [], []
        reader = source or ProgReader()
        reader.all()
        body = b""
        for _ in range(ROUNDS):
            c = cpu_seconds()
            ex.tick()
            ticks.append(cpu_seconds() - c)
            c = cpu_seconds()
            reader.all()
            reads.append(cpu_seconds() - c)
            c = cpu_seconds()
            body = generate_latest(reg)
            scrapes.append(cpu_seconds() - c)
        stats.close()
        return {
            "programs": total,
            "tick_ms": statistics.median(ticks) * 1e3,
            "tick_us_per_prog": statistics.median(ticks) / total * 1e6,
            "syscalls_us_per_prog": statistics.median(reads) / total * 1e6,
            "scrape_ms": statistics.median(scrapes) * 1e3,
            "metrics_kib": len(body) / 1024,
        }
    finally:
        if source:
            source.close()
        trivial_prog.close_all(fds)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 1000]
    print(header("python -m bench.collection_cost " + " ".join(map(str, sizes))))
    print(f"median of {ROUNDS} ticks, CPU time (getrusage) of this process")
    print(
        "| read method | programs | CPU per tick | per program (tick) | per program (reads "
        "only) | /metrics encode CPU | /metrics size |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for method in ("iterator", "syscall"):
            r = measure(n, method)
            print(
                f"| {method} | {r['programs']:.0f} | {r['tick_ms']:.2f} ms "
                f"| {r['tick_us_per_prog']:.1f} us "
                f"| {r['syscalls_us_per_prog']:.1f} us | {r['scrape_ms']:.2f} ms "
                f"| {r['metrics_kib']:.0f} KiB |"
            )


if __name__ == "__main__":
    main()
