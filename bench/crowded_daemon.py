"""The whole daemon on a crowded node (issue 20, points 2 and 3): 2,000 BPF programs run
once a second, 3,000 maps, defaults, each daemon scraped every --scrape-interval s; the
code before (--baseline REV, from a `git archive`) and now side by side in one run, each
with /metrics only and with OTLP over HTTP (every 60 s, to a receiver in this process).

1. Idle (--idle-seconds): CPU by per-thread schedstat over the threads alive at both
   ends (the scrapers keep one connection each, so their handler threads live through
   the window), cross-checked by the daemon's own getrusage (the served
   linnix_exporter_cpu_seconds_total, which keeps the CPU of threads that exited); RSS
   sampled every 5 s; the first tick after start.
2. Storm (--storm-seconds): the same daemons under bench/usage_over_time.py's fork/exec
   storm (stress-ng --fork 2 and a shell loop exec'ing /bin/true): RSS max and at the end.
3. /metrics latency on one daemon at a time (those without OTLP): --clients keep-alive
   scrapers sending at the same instant, --bursts times 1 s apart; then wrk.

With --latency-only, only the daemons without OTLP start, and their bursts alternate
(one round on each, the order swapped every round), so a busy minute of the shared
machine lands on both arms alike.

bench/crowded_node.py measures the per-program tick (issue 20, point 1); this file
reuses its daemon helpers on this bench's own ports.

Usage: python -m bench.crowded_daemon [--baseline REV] [--programs 2000] [--maps 3000]
          [--idle-seconds 600] [--storm-seconds 600] [--scrape-interval 15]
          [--clients 50] [--bursts 40] [--wrk-seconds 20] [--latency-only]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from bench import crowded_node
from bench.collection_cost import percentile
from bench.common import cpu_by_thread, header, loadavg, rev_name, tree_at
from bench.usage_over_time import storm
from tests.kernel_helpers import REPO, proc_status, thread_stats
from tests.support.otlp_receiver import HttpReceiver

crowded_node.PORTS = iter(range(20420, 20499))  # this bench's daemons (shared machine)


def served_cpu(m: dict[str, float]) -> float:
    """The daemon's getrusage (user + system), exited threads included."""
    return sum(v for k, v in m.items() if k.startswith("linnix_exporter_cpu_seconds_total{"))


def sample_rss(runs: dict[str, Any], seconds: float) -> dict[str, list[int]]:
    rss: dict[str, list[int]] = {n: [] for n in runs}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(5)
        for n, r in runs.items():
            rss[n].append(proc_status(r[0].proc.pid, "VmRSS"))
    return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline")
    ap.add_argument("--programs", type=int, default=2000)
    ap.add_argument("--maps", type=int, default=3000)
    ap.add_argument("--idle-seconds", type=float, default=600)
    ap.add_argument("--storm-seconds", type=float, default=600)
    ap.add_argument("--scrape-interval", type=float, default=15)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--bursts", type=int, default=40)
    ap.add_argument("--wrk-seconds", type=int, default=20)
    ap.add_argument("--latency-only", action="store_true")
    args = ap.parse_args()
    print(header("python -m bench.crowded_daemon " + " ".join(sys.argv[1:])))
    print(f"current tree: {rev_name('HEAD')} (+ uncommitted changes, if any)", flush=True)
    with contextlib.ExitStack() as stack:
        trees: list[tuple[str, Path]] = [("current", REPO)]
        if args.baseline:
            old = stack.enter_context(tree_at(args.baseline))
            trees.insert(0, (f"baseline {rev_name(args.baseline)}", old))
        stack.enter_context(crowded_node.crowd(args.programs, args.maps, running=True))
        rx = HttpReceiver().start()
        otlp = rx.exporter_env()
        try:
            if args.latency_only:
                paired_latency(trees, args)
            else:
                run(trees, otlp, args)
        finally:
            rx.stop()


def paired_latency(trees: list[tuple[str, Path]], args: argparse.Namespace) -> None:
    lat: dict[str, list[float]] = {n: [] for n, _ in trees}
    with contextlib.ExitStack() as stack:
        runs = {
            n: stack.enter_context(crowded_node.started(n, t, args.scrape_interval, {}))
            for n, t in trees
        }
        time.sleep(20)  # past start-up and the first ratios
        la = loadavg()
        order = list(runs)
        for i in range(args.bursts):
            for n in order if i % 2 == 0 else order[::-1]:
                d = runs[n][0]
                lat[n] += crowded_node.burst_latencies(d.port, args.clients, 1, 0.0)
                time.sleep(1.0)
    print(
        f"\n/metrics latency, {args.clients} keep-alive scrapers sending at the same instant, "
        f"{args.bursts} rounds per daemon, the daemons' rounds alternated (order swapped "
        f"every round), each daemon also scraped every {args.scrape_interval:g} s; "
        f"{args.programs} programs run once a second, {args.maps} maps; load at start {la}"
    )
    print("| code | requests | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, xs in lat.items():
        print(
            f"| {n} | {len(xs)} | {percentile(xs, 50) * 1e3:.1f} ms | "
            f"{percentile(xs, 90) * 1e3:.1f} ms | {percentile(xs, 99) * 1e3:.1f} ms "
            f"| {max(xs) * 1e3:.1f} ms |"
        )


def run(trees: list[tuple[str, Path]], otlp: dict[str, str], args: argparse.Namespace) -> None:
    results: dict[str, dict[str, float | str]] = {}
    with contextlib.ExitStack() as stack:
        arms: list[tuple[str, Path, dict[str, str]]] = [(n, t, {}) for n, t in trees] + [
            (f"{n} + OTLP", t, otlp) for n, t in trees
        ]
        runs = {
            n: stack.enter_context(crowded_node.started(n, t, args.scrape_interval, e))
            for n, t, e in arms
        }
        time.sleep(20)  # past start-up and the first ratios
        la = loadavg()
        before = {n: (thread_stats(r[0].proc.pid), r[1].last) for n, r in runs.items()}
        rss = sample_rss(runs, args.idle_seconds)
        for n, (d, scraper, info) in runs.items():
            run_s, _, by_name = cpu_by_thread(before[n][0], thread_stats(d.proc.pid))
            m = scraper.last
            results[n] = {
                **info,
                "cpu_ratio": run_s / args.idle_seconds,
                "served_cpu_ratio": (served_cpu(m) - served_cpu(before[n][1])) / args.idle_seconds,
                "scrapes": scraper.count,
                "rss_max_mib": max(rss[n]) / 1024,
                "rss_end_mib": rss[n][-1] / 1024,
                "programs": m.get("linnix_bpf_programs{}", float("nan")),
                "maps": m.get("linnix_bpf_maps{}", float("nan")),
                "threads": ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in sorted(by_name.items())),
                "loadavg": la,
            }
            print(f"[idle] {n}: {results[n]}", flush=True)
        if args.storm_seconds > 0:
            la = loadavg()
            procs = storm(args.storm_seconds + 2)
            try:
                rss = sample_rss(runs, args.storm_seconds)
            finally:
                for p in procs:
                    p.terminate()
                    p.wait()
            for n in runs:
                results[n]["storm_rss_max_mib"] = max(rss[n]) / 1024
                results[n]["storm_rss_end_mib"] = rss[n][-1] / 1024
                print(f"[storm] {n}: max {max(rss[n]) / 1024:.1f} MiB; load {la}", flush=True)
        for n, (_, scraper, _) in runs.items():
            if "OTLP" not in n:
                scraper.close()
        for n, (d, _, _) in runs.items():  # one at a time, the others idle
            if "OTLP" in n:
                continue
            lat = crowded_node.burst_latencies(d.port, args.clients, args.bursts, 1.0)
            results[n].update(
                {
                    "burst_p50": percentile(lat, 50),
                    "burst_p99": percentile(lat, 99),
                    "burst_max": max(lat),
                    "burst_n": len(lat),
                }
            )
            w = crowded_node.wrk_p99(d, args.clients, args.wrk_seconds)
            results[n].update({f"wrk_{k}": v for k, v in w.items()})
            print(f"[latency] {n}: bursts p99 {percentile(lat, 99) * 1e3:.1f} ms; wrk {w}")
    print(
        f"\n{args.programs} programs run once a second, {args.maps} maps held by this "
        f"process; all daemons at once, defaults, each scraped every {args.scrape_interval:g} "
        f"s; CPU over {args.idle_seconds:g} s idle: per-thread schedstat (threads alive at "
        f"both ends) and the daemon's own getrusage as served; RSS sampled every 5 s, idle "
        f"and over {args.storm_seconds:g} s of fork/exec storm; then /metrics latency on one "
        f"daemon at a time ({args.clients} scrapers at the same instant, {args.bursts} "
        f"bursts 1 s apart; wrk {args.clients} clients back to back {args.wrk_seconds} s)"
    )
    print(
        "| code | programs / maps served | first tick (wall) | CPU, schedstat | CPU, getrusage "
        "| RSS idle max / end | RSS storm max / end | /metrics p50 / p99 / max, bursts "
        "| wrk p50 / p99 / max | wrk requests/s | load average |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, r in results.items():
        storm_cells = (
            f"{float(r['storm_rss_max_mib']):.1f} / {float(r['storm_rss_end_mib']):.1f} MiB"
            if "storm_rss_max_mib" in r
            else "-"
        )
        print(
            f"| {n} | {float(r['programs']):.0f} / {float(r['maps']):.0f} "
            f"| {float(r['first_collect_s']) * 1e3:.0f} ms (seq {float(r['first_seq']):.0f}) "
            f"| {float(r['cpu_ratio']) * 100:.3f}% | {float(r['served_cpu_ratio']) * 100:.3f}% "
            f"| {float(r['rss_max_mib']):.1f} / {float(r['rss_end_mib']):.1f} MiB "
            f"| {storm_cells} | {crowded_node.latency_cells(r)} | {r['loadavg']} |"
        )
    for n, r in results.items():
        print(f"{n} CPU by thread: {r['threads']}")


if __name__ == "__main__":
    main()
