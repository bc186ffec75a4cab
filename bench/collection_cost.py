"""Collection cost vs number of BPF programs loaded (goal: <= 5 us CPU per program with
1,000 loaded), measured as the daemon lives: cold ticks after an idle interval, owner
scans included, programs that actually run.

Loads N trivial programs with the raw bpf() syscall and runs each of them once before
every tick (BPF_PROG_TEST_RUN), so every program's counters move as on a busy node and
no row can be reused from the tick before. Then ticks the exporter's state machine
in-process (program stats, an owner scan every tick, rates, top-K with the default
--bpf.top-programs 50; no probes) with each read method (BPF iterators: stats and
owners; bpf() syscalls and the /proc walk) in the same run: --cold-rounds ticks, each
after --idle seconds of sleep (the daemon ticks every 10 s: everything it touches is
cold by then), and 30 ticks back to back (warm, for comparison). CPU is this thread's
(time.thread_time: the iterators run inside our read(), so their kernel time counts).

Then, with the same N programs loaded, the real daemon (probes on) is started twice:
with --bpf.top-programs large enough to list every program, and with the default 50.
Over --scrapes sequential scrapes on one keep-alive connection (as Prometheus does) it
reports the /metrics body size, plain and gzip, the scrape latency p50/p99 (wall clock:
note the load average printed with it) and the daemon's CPU per scrape from
/proc/PID/stat (robust to other load on the machine).

Usage: python -m bench.collection_cost [N ...] [--scrapes 100] [--cold-rounds 3]
                                       [--idle 10] [--no-daemon]
       (default N: 10 100 1000)
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import math
import statistics
import time

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from bench.common import header, loadavg
from linnix_exporter.cli import build_parser
from linnix_exporter.config import run_config
from linnix_exporter.kernel.iter_loader import load_iterators
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.state import Exporter
from linnix_exporter.wiring import Iterators, kernel_sources
from tests.kernel_helpers import daemon, proc_stat_cpu_seconds
from tests.support import trivial_prog

ROUNDS = 30


def measure(n: int, method: str, scans: bool, cold_rounds: int, idle: float) -> dict[str, float]:
    fds = trivial_prog.load_many(n, prefix="lnx_bench")
    iters = Iterators()
    if method == "iterator":
        stats_reader, owners, why = load_iterators()
        if owners is None:
            raise SystemExit(f"owners iterator unavailable: {why}")
        iters = Iterators(stats_reader, owners)
    try:
        # scans: an owner scan in every tick, as the daemon does when programs appear;
        # else none in the measured ticks (the daemon's default: one a minute).
        refresh = "1ms" if scans else "1h"
        flags = ["run", "--no-probes.enabled", "--bpf.owner-refresh", refresh]
        cfg = run_config(build_parser().parse_args(flags), {})
        stats = StatsSwitch()
        stats.enable("auto")
        ex = Exporter(cfg, kernel_sources(cfg, stats, None, iters))
        reg = CollectorRegistry(auto_describe=False)
        reg.register(TickCollector(lambda: ex.latest, lambda: 0))
        ex.tick()
        ex.tick()
        total = len(ex.latest.snapshot.programs) if ex.latest else n

        def tick() -> float:
            for fd in fds:  # every program ran since the last tick
                trivial_prog.run(fd)
            c = time.thread_time()
            ex.tick()
            return time.thread_time() - c

        cold = []
        for _ in range(cold_rounds):
            time.sleep(idle)
            cold.append(tick())
        warm, scrapes = [], []
        body = b""
        for _ in range(ROUNDS):
            warm.append(tick())
            c = time.thread_time()
            body = generate_latest(reg)
            scrapes.append(time.thread_time() - c)
        ex.close()
        stats.close()
        return {
            "programs": total,
            "cold_ms": statistics.median(cold) * 1e3 if cold else math.nan,
            "cold_max_ms": max(cold) * 1e3 if cold else math.nan,
            "cold_us_per_prog": statistics.median(cold) / total * 1e6 if cold else math.nan,
            "warm_ms": statistics.median(warm) * 1e3,
            "warm_us_per_prog": statistics.median(warm) / total * 1e6,
            "scrape_ms": statistics.median(scrapes) * 1e3,
            "metrics_bytes": len(body),
        }
    finally:
        for r in (iters.programs, iters.owners):
            if r is not None:
                r.close()
        trivial_prog.close_all(fds)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list: with fewer than 100
    values, p99 is the maximum."""
    ranked = sorted(xs)
    return ranked[max(0, min(len(ranked), math.ceil(p / 100 * len(ranked))) - 1)]


def scrape_series(port: int, n: int, gzip: bool) -> tuple[list[float], int]:
    """n sequential GETs of /metrics on one keep-alive connection: (latencies, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Accept-Encoding": "gzip"} if gzip else {}
    lat, size = [], 0
    try:
        for _ in range(n):
            t = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            r = conn.getresponse()
            body = r.read()
            lat.append(time.perf_counter() - t)
            if r.status != 200:
                raise SystemExit(f"/metrics answered {r.status}")
            size = len(body)
    finally:
        conn.close()
    return lat, size


def measure_daemon(n_loaded: int, top: int | None, scrapes: int) -> dict[str, float]:
    """Real daemon with n_loaded extra programs; top None = list them all."""
    fds = trivial_prog.load_many(n_loaded, prefix="lnx_bench")
    try:
        flags = ["--collect.interval", "5s"]
        if top is None:
            flags += ["--bpf.top-programs", str(n_loaded + 100)]
        with daemon(*flags) as d:
            d.wait_ready()
            m = d.wait_tick(1)  # the second tick: rates, so every series is present
            pid = d.proc.pid
            out: dict[str, float] = {
                "programs": m["linnix_bpf_programs{}"],
                "unlisted": m["linnix_bpf_unlisted_programs{}"],
                "collect_ms": m["linnix_exporter_collect_duration_seconds{}"] * 1e3,
            }
            la = loadavg()
            for gz in (False, True):
                c0 = proc_stat_cpu_seconds(pid)
                lat, size = scrape_series(d.port, scrapes, gz)
                cpu = proc_stat_cpu_seconds(pid) - c0
                k = "gzip" if gz else "plain"
                out[f"{k}_bytes"] = size
                out[f"{k}_p50_ms"] = percentile(lat, 50) * 1e3
                out[f"{k}_p99_ms"] = percentile(lat, 99) * 1e3
                out[f"{k}_cpu_ms"] = cpu / scrapes * 1e3
            out["loadavg"] = float(la.split()[0])
            d.stop()
        return out
    finally:
        trivial_prog.close_all(fds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", nargs="*", type=int, default=[10, 100, 1000])
    ap.add_argument("--scrapes", type=int, default=100)
    ap.add_argument("--cold-rounds", type=int, default=3)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--no-daemon", action="store_true", help="in-process ticks only")
    args = ap.parse_args()
    sizes = args.sizes
    if args.scrapes < 1 or any(n < 1 for n in sizes):
        ap.error("sizes and --scrapes must be >= 1")
    extra = f" --scrapes {args.scrapes} --cold-rounds {args.cold_rounds} --idle {args.idle:g}"
    extra += " --no-daemon" if args.no_daemon else ""
    print(header("python -m bench.collection_cost " + " ".join(map(str, sizes)) + extra))
    print(
        f"CPU of this thread per tick (time.thread_time), every program run before each "
        f"tick, top-programs 50; cold: median and worst of "
        f"{args.cold_rounds} ticks each after {args.idle:g} s idle; warm: median of "
        f"{ROUNDS} ticks back to back"
    )
    print(
        "| read method | owner scan | programs | cold tick | per program (cold) | worst cold tick "
        "| warm tick | per program (warm) | /metrics encode CPU | /metrics size |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for method, scans in itertools.product(("iterator", "syscall"), (True, False)):
            r = measure(n, method, scans, args.cold_rounds, args.idle)
            print(
                f"| {method} | {'every tick' if scans else 'none'} | {r['programs']:.0f} "
                f"| {r['cold_ms']:.2f} ms "
                f"| {r['cold_us_per_prog']:.1f} us | {r['cold_max_ms']:.2f} ms "
                f"| {r['warm_ms']:.2f} ms | {r['warm_us_per_prog']:.1f} us "
                f"| {r['scrape_ms']:.2f} ms | {r['metrics_bytes']:,.0f} B |"
            )
    if args.no_daemon:
        return
    print(
        f"\nreal daemon (probes on, iterator), {args.scrapes} sequential scrapes each way on one "
        "keep-alive connection; daemon CPU per scrape from /proc/PID/stat (10 ms ticks)"
    )
    print(
        "| loaded | programs (unlisted) | listing | plain size | gzip size | plain p50 / p99 "
        "| gzip p50 / p99 | daemon CPU per scrape plain / gzip | last collect (wall) "
        "| loadavg 1 min |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for top in (None, 50):
            r = measure_daemon(n, top, args.scrapes)
            print(
                f"| {n} | {r['programs']:.0f} ({r['unlisted']:.0f}) "
                f"| {'all' if top is None else f'top {top}'} "
                f"| {r['plain_bytes']:,.0f} B | {r['gzip_bytes']:,.0f} B "
                f"| {r['plain_p50_ms']:.1f} / {r['plain_p99_ms']:.1f} ms "
                f"| {r['gzip_p50_ms']:.1f} / {r['gzip_p99_ms']:.1f} ms "
                f"| {r['plain_cpu_ms']:.1f} / {r['gzip_cpu_ms']:.1f} ms "
                f"| {r['collect_ms']:.1f} ms | {r['loadavg']:.2f} |"
            )


if __name__ == "__main__":
    main()
