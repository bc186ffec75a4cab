"""Exporter CPU, wake-ups and RSS on an idle node at defaults, with a Prometheus-like
scrape every 15 s (goals, issue 12: <= 0.1% of one core; voluntary context switches per
minute <= 2 x (ticks + scrapes) per minute).

Starts the real daemon with its probes and default flags, scrapes /metrics every
--scrape-interval over one keep-alive connection (as Prometheus does), and measures
from outside: CPU as the sum of /proc/PID/task/*/schedstat run time (nanoseconds, per
thread), voluntary context switches from /proc/PID/task/*/status, both over the same
live threads at the start and end of the window, and VmRSS every 5 s. Ticks come from
linnix_exporter_collections_total in the first and last scrape.

With --baseline REV the exporter as it was at that commit runs at the same time, on the
same machine, with its own scraper: before and after side by side in one run. With
--timer the current code also runs with --collect.mode timer beside the default
(on-demand), the measurement that decided the default.

With --hooks the current code also runs with --collector.hooks beside the default
(hooks off), and each run's CPU before the window (start-up: the hooks' calibration)
is printed: the measurement behind the hooks collector's default (issue 19).

With --otlp http|grpc a local OTLP receiver (tests/support/otlp_receiver.py) runs in
this process (its CPU is not counted) and the daemon pushes to it every
--otlp-interval-ms, so the figure includes the push.

Usage: python -m bench.idle_cost [--seconds 600] [--scrape-interval 15] [--baseline REV]
                                 [--timer] [--hooks] [--otlp http|grpc] [-- daemon flags]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import PeriodicScraper, cpu_by_thread, header, loadavg, rev_name, tree_at
from tests.kernel_helpers import REPO, Daemon, daemon, proc_stat_cpu_seconds, proc_status
from tests.kernel_helpers import thread_stats as read_threads
from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver

WARMUP = 20.0  # past start-up and the first ratios, so the window is steady state


@dataclass
class Run:
    name: str
    d: Daemon
    scraper: PeriodicScraper
    rss_kib: list[int] = field(default_factory=list)


@contextlib.contextmanager
def started(
    name: str, flags: list[str], env: dict[str, str], cwd: object, every: float
) -> Iterator[Run]:
    with daemon(*flags, env=env, cwd=cwd) as d:  # type: ignore[arg-type]
        d.wait_ready()
        scraper = PeriodicScraper(d.port, every).start()
        try:
            yield Run(name, d, scraper)
        finally:
            scraper.close()
            d.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--scrape-interval", type=float, default=15)
    ap.add_argument("--baseline", help="also run the exporter at this git revision")
    ap.add_argument("--timer", action="store_true", help="also the current code on a timer")
    ap.add_argument("--hooks", action="store_true", help="also the current code with hooks on")
    ap.add_argument("--otlp", choices=("http", "grpc"))
    ap.add_argument("--otlp-interval-ms", type=int, default=10000)
    ap.add_argument("flags", nargs="*")
    args = ap.parse_args()
    extra = f" --otlp {args.otlp} --otlp-interval-ms {args.otlp_interval_ms}" if args.otlp else ""
    extra += f" --baseline {args.baseline}" if args.baseline else ""
    extra += " --timer" if args.timer else ""
    extra += " --hooks" if args.hooks else ""
    print(
        header(
            f"python -m bench.idle_cost --seconds {args.seconds:g} "
            f"--scrape-interval {args.scrape_interval:g}{extra} {' '.join(args.flags)}"
        )
    )
    print(f"current tree: {rev_name('HEAD')} (+ uncommitted changes, if any)")
    env: dict[str, str] = {}
    rx: GrpcReceiver | HttpReceiver | None = None
    if args.otlp:
        rx = (GrpcReceiver() if args.otlp == "grpc" else HttpReceiver()).start()
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if args.otlp == "grpc" else "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": str(args.otlp_interval_ms),
        }
    with contextlib.ExitStack() as stack:
        variants: list[tuple[str, Path, list[str]]] = [("current", REPO, args.flags)]
        if args.timer:
            timer = [*args.flags, "--collect.mode", "timer"]
            variants.append(("current, --collect.mode timer", REPO, timer))
        if args.hooks:
            variants.append(
                ("current, --collector.hooks", REPO, [*args.flags, "--collector.hooks"])
            )
        if args.baseline:
            old = stack.enter_context(tree_at(args.baseline))
            variants.insert(0, (f"baseline {rev_name(args.baseline)}", old, args.flags))
        runs = [
            stack.enter_context(started(n, flags, env, cwd, args.scrape_interval))
            for n, cwd, flags in variants
        ]
        time.sleep(WARMUP)
        before = {r.name: read_threads(r.d.proc.pid) for r in runs}
        stat0 = {r.name: proc_stat_cpu_seconds(r.d.proc.pid) for r in runs}
        first = {r.name: r.scraper.last for r in runs}
        scrapes0 = {r.name: r.scraper.count for r in runs}
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(5.0, max(0.0, args.seconds - (time.monotonic() - t0))))
            for r in runs:
                r.rss_kib.append(proc_status(r.d.proc.pid, "VmRSS"))
        after = {r.name: read_threads(r.d.proc.pid) for r in runs}
        stat1 = {r.name: proc_stat_cpu_seconds(r.d.proc.pid) for r in runs}
        window = time.monotonic() - t0
        last = {r.name: r.scraper.last for r in runs}
        scrapes = {r.name: r.scraper.count - scrapes0[r.name] for r in runs}
        la = loadavg()
    if rx is not None:
        print(f"OTLP pushes received: {len(rx.requests)} (every {args.otlp_interval_ms} ms)")
        rx.stop()
    print(f"window: {window:.0f} s after {WARMUP:.0f} s of warm-up; load average at the end: {la}")
    for r in runs:
        start_s = sum(t.run_ns for t in before[r.name].values()) / 1e9
        print(f"{r.name}: CPU from start to the window (live threads, schedstat): {start_s:.3f} s")
    print(
        "| exporter | CPU (schedstat) | share of one core | /proc/PID/stat (10 ms) "
        "| voluntary switches/min | ticks/min | scrapes/min | bound 2x(ticks+scrapes) "
        "| RSS min-max | CPU by thread |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in runs:
        run_s, switches, by_name = cpu_by_thread(before[r.name], after[r.name])
        ticks = last[r.name].get("linnix_exporter_collections_total{}", 0) - first[r.name].get(
            "linnix_exporter_collections_total{}", 0
        )
        per_min = 60 / window
        threads = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(by_name.items()))
        print(
            f"| {r.name} | {run_s * 1e3:.1f} ms | {run_s / window * 100:.4f}% "
            f"| {(stat1[r.name] - stat0[r.name]) / window * 100:.3f}% "
            f"| {switches * per_min:.1f} | {ticks * per_min:.1f} | {scrapes[r.name] * per_min:.1f} "
            f"| {2 * (ticks + scrapes[r.name]) * per_min:.1f} "
            f"| {min(r.rss_kib) / 1024:.1f}-{max(r.rss_kib) / 1024:.1f} MiB | {threads} |"
        )


if __name__ == "__main__":
    main()
