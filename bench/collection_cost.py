"""Collection cost vs number of BPF programs loaded (goal: <= 5 us CPU per program with
1,000 loaded). Loads N trivial programs with the raw bpf() syscall, then times full
ticks of the exporter's state machine (program stats, owners, rates, top-K) in-process,
with each read method (BPF iterator, bpf() syscalls) in the same run, with the default
--bpf.top-programs 50.

Then, with the same N programs loaded, the real daemon (probes on) is started twice:
with --bpf.top-programs large enough to list every program, and with the default 50.
Over --scrapes sequential scrapes on one keep-alive connection (as Prometheus does) it
reports the /metrics body size, plain and gzip, the scrape latency p50/p99 (wall clock:
note the load average printed with it) and the daemon's CPU per scrape from
/proc/PID/stat (robust to other load on the machine).

Usage: python -m bench.collection_cost [N ...] [--scrapes 100] [--no-daemon]
       (default N: 10 100 1000)
"""

from __future__ import annotations

import argparse
import http.client
import math
import statistics
import time

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from bench.common import cpu_seconds, header
from linnix_exporter.cli import Iterators, build_parser, kernel_sources
from linnix_exporter.config import run_config
from linnix_exporter.kernel.bpf_syscall import ProgReader
from linnix_exporter.kernel.prog_iter import IterProgReader
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.state import Exporter
from tests.kernel_helpers import daemon, proc_stat_cpu_seconds
from tests.support import trivial_prog

ROUNDS = 30


def measure(n: int, method: str) -> dict[str, float]:
    fds = trivial_prog.load_many(n, prefix="lnx_bench")
    source = IterProgReader.load() if method == "iterator" else None
    try:
        cfg = run_config(build_parser().parse_args(["run", "--no-probes.enabled"]), {})
        stats = StatsSwitch()
        stats.enable("auto")
        ex = Exporter(cfg, kernel_sources(cfg, stats, None, Iterators(source)))
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
        ex.close()
        stats.close()
        return {
            "programs": total,
            "tick_ms": statistics.median(ticks) * 1e3,
            "tick_us_per_prog": statistics.median(ticks) / total * 1e6,
            "syscalls_us_per_prog": statistics.median(reads) / total * 1e6,
            "scrape_ms": statistics.median(scrapes) * 1e3,
            "metrics_bytes": len(body),
        }
    finally:
        if source:
            source.close()
        trivial_prog.close_all(fds)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list: with fewer than 100
    values, p99 is the maximum."""
    ranked = sorted(xs)
    return ranked[max(0, min(len(ranked), math.ceil(p / 100 * len(ranked))) - 1)]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


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
    ap.add_argument("--no-daemon", action="store_true", help="in-process ticks only")
    args = ap.parse_args()
    sizes = args.sizes
    if args.scrapes < 1 or any(n < 1 for n in sizes):
        ap.error("sizes and --scrapes must be >= 1")
    extra = f" --scrapes {args.scrapes}" + (" --no-daemon" if args.no_daemon else "")
    print(header("python -m bench.collection_cost " + " ".join(map(str, sizes)) + extra))
    print(f"median of {ROUNDS} ticks, CPU time (getrusage) of this process, top-programs 50")
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
                f"| {r['metrics_bytes']:,.0f} B |"
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
