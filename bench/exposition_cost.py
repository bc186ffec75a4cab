"""Encoding one /metrics body (issue 20): prometheus_client's encoders over
TickCollector.collect() (the code before) against TickCollector.exposition() (written
directly), on a tick the size of a crowded node's at default flags: --programs listed
programs with owners, --comms listed commands, the lifetime histogram. CPU per body
from time.thread_time: warm (median of --warm back to back) and cold (median of --cold,
each after --idle s asleep, as the daemon encodes once per tick).

Usage: python -m bench.exposition_cost [--programs 57] [--comms 31] [--warm 50]
          [--cold 5] [--idle 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_om
from prometheus_client.registry import CollectorRegistry

from bench.common import header
from linnix_exporter.figures import PushStatus
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.snapshot import CommCounts, Owner
from linnix_exporter.tick import Tick
from linnix_exporter.topk import TopKView
from tests.test_prometheus_sink import make_tick


def crowded_tick(programs: int, comms: int) -> Tick:
    base = make_tick()
    progs = [
        p._replace(
            id=100 + i,
            name=f"lnx_crowd{i}",
            tag=f"{100 + i:016x}",
            owners=(Owner(1000 + i % 7, f"agent{i % 7}", "", "", ""),),
        )
        for i, p in enumerate([base.snapshot.programs[1]] * programs)
    ]
    listed = {p.identity: (p.run_time_ns + i, p.run_cnt, 0) for i, p in enumerate(progs)}
    by_comm = {f"comm{i}": CommCounts(i, i, i, i * 1000) for i in range(comms)}
    probes = dataclasses.replace(base.snapshot.probes, by_comm=by_comm)
    snap = dataclasses.replace(base.snapshot, programs=tuple(progs), probes=probes)
    return dataclasses.replace(
        base,
        snapshot=snap,
        programs=TopKView(listed=listed, rest=(5, 5, 0), rest_keys=1950),
        comms=TopKView(
            listed={c: (v.forks, v.execs, v.exits, v.exited_cpu_ns) for c, v in by_comm.items()},
            rest=(1, 1, 1, 0),
            rest_keys=1,
        ),
        program_by_key={p.identity: p for p in progs},
    )


def timed(fn: Callable[[], bytes], warm: int, cold: int, idle: float) -> tuple[float, float, int]:
    size = len(fn())
    w = []
    for _ in range(warm):
        t = time.thread_time()
        fn()
        w.append(time.thread_time() - t)
    c = []
    for _ in range(cold):
        time.sleep(idle)
        t = time.thread_time()
        fn()
        c.append(time.thread_time() - t)
    return statistics.median(w), statistics.median(c), size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=57)
    ap.add_argument("--comms", type=int, default=31)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--idle", type=float, default=5.0)
    args = ap.parse_args()
    print(header("python -m bench.exposition_cost " + " ".join(sys.argv[1:])))
    tick = crowded_tick(args.programs, args.comms)
    c = TickCollector(lambda: tick, lambda: 0, lambda: PushStatus(3, 0, 1.0))
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    assert c.exposition(False) == generate_latest(reg)  # the same bytes, or no figures
    assert c.exposition(True) == generate_om(reg)
    arms: list[tuple[str, str, Callable[[], bytes]]] = [
        ("before: prometheus_client over collect()", "text 0.0.4", lambda: generate_latest(reg)),
        ("now: TickCollector.exposition", "text 0.0.4", lambda: c.exposition(False)),
        ("before: prometheus_client over collect()", "OpenMetrics", lambda: generate_om(reg)),
        ("now: TickCollector.exposition", "OpenMetrics", lambda: c.exposition(True)),
    ]
    print(f"\n{args.programs} programs and {args.comms} commands listed; CPU per body")
    print("| encoder | format | bytes | warm (median) | cold after sleep (median) |")
    print("|---|---|---:|---:|---:|")
    for name, fmt, fn in arms:
        w, cold, size = timed(fn, args.warm, args.cold, args.idle)
        print(f"| {name} | {fmt} | {size} | {w * 1e3:.2f} ms | {cold * 1e3:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
