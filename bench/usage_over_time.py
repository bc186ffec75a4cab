"""Exporter CPU and RSS over time, idle and under a fork/exec storm, with /metrics only
and with OTLP over HTTP (goals: RSS <= 40 MiB for both; idle CPU <= 0.1% of a core; OTLP
push <= 0.05% of a core at 10 s).

Runs the real daemon (probes on, default 10 s collection) in four configurations, each
for --seconds: idle /metrics only, idle + OTLP HTTP push every 10 s to a local receiver
(tests/support/otlp_receiver.HttpReceiver, in this process: its CPU is not counted),
storm /metrics only, storm + OTLP. A thread scrapes /metrics every --scrape-interval as
Prometheus would. Every --sample-every seconds the daemon's CPU (utime+stime+cutime+
cstime from /proc/PID/stat, 10 ms resolution: independent of the exporter's own
figures) and its VmRSS are sampled. The storm is `stress-ng --fork 2` plus a shell loop
exec'ing /bin/true, as in bench/probe_cost.py; forks/s, execs/s and our probes' kernel
run time over the window come from the first and last scrape, over the two served ticks'
collection times (the probes' time is spent in the forking tasks, not in the daemon).

Usage: python -m bench.usage_over_time [--seconds 60] [--scrape-interval 15]
                                       [--sample-every 5] [--configs idle,idle+otlp,...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from bench.common import header
from tests.kernel_helpers import Daemon, daemon, proc_stat_cpu_seconds, proc_status
from tests.support.otlp_receiver import HttpReceiver

CONFIGS = ("idle", "idle+otlp", "storm", "storm+otlp")
OTLP_INTERVAL_MS = 10000


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@dataclass
class Sample:
    t: float  # seconds since the window started
    cpu_pct: float  # daemon CPU over the last sample interval, % of one core
    rss_mib: float
    scrapes: int


@dataclass
class Scraper:
    """Scrape /metrics like Prometheus, keeping the first and last parsed scrape."""

    d: Daemon
    every: float
    stop: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    errors: int = 0
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def run(self) -> None:
        """Scrape at once, then every `every` s, and once more when stopped (so the first
        and last scrape span the whole window)."""
        while True:
            stopped = self.stop.is_set()
            try:
                m = self.d.metrics()
                if not self.first:
                    self.first = m
                self.last = m
                self.count += 1
            except (OSError, AssertionError):
                self.errors += 1
            if stopped:
                return
            self.stop.wait(self.every)


def storm(seconds: float) -> list[subprocess.Popen[bytes]]:
    """The fork/exec storm of bench/probe_cost.py: stress-ng forking on 2 workers and a
    shell loop exec'ing /bin/true (stress-ng's exec stressor refuses to run as root)."""
    t = f"{seconds:.0f}"
    cmds = [
        ["stress-ng", "--fork", "2", "--timeout", f"{t}s", "--quiet"],
        ["timeout", t, "sh", "-c", "while :; do /bin/true; done"],
    ]
    return [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]


def run_config(name: str, args: argparse.Namespace) -> dict[str, float]:
    rx: HttpReceiver | None = None
    env: dict[str, str] = {}
    flags = ["--no-otlp.enabled"]
    if name.endswith("+otlp"):
        rx = HttpReceiver().start()
        env = {
            **rx.exporter_env(),
            "OTEL_METRIC_EXPORT_INTERVAL": str(OTLP_INTERVAL_MS),
        }
        flags = ["--otlp.enabled"]
    samples: list[Sample] = []
    try:
        with daemon(*flags, env=env) as d:
            d.wait_ready()
            d.wait_tick(1)  # a second tick: start-up (probe compile in a child) is over
            pid = d.proc.pid
            pushes0 = len(rx.requests) if rx else 0
            la0 = loadavg()
            stress = storm(args.seconds + 2) if name.startswith("storm") else []
            scraper = Scraper(d, args.scrape_interval)
            thread = threading.Thread(target=scraper.run, daemon=True)
            c_start = c_prev = proc_stat_cpu_seconds(pid)
            t_start = t_prev = time.monotonic()
            rss_start = proc_status(pid, "VmRSS") / 1024
            thread.start()
            while t_prev - t_start < args.seconds - 1e-3:
                time.sleep(min(args.sample_every, args.seconds - (t_prev - t_start)))
                c, t = proc_stat_cpu_seconds(pid), time.monotonic()
                samples.append(
                    Sample(
                        t - t_start,
                        (c - c_prev) / (t - t_prev) * 100,
                        proc_status(pid, "VmRSS") / 1024,
                        0,
                    )
                )
                samples[-1].scrapes = scraper.count
                c_prev, t_prev = c, t
            scraper.stop.set()
            thread.join()
            la1 = loadavg()
            for p in stress:
                p.terminate()
                p.wait()
            pushes = (len(rx.requests) - pushes0) if rx else 0
            d.stop()
    finally:
        if rx is not None:
            rx.stop()
    window = t_prev - t_start
    cpu = c_prev - c_start
    print(f"\n### {name} (daemon flags: {' '.join(flags)}; loadavg {la0} -> {la1})")
    print("| t (s) | daemon CPU, % of one core | RSS (MiB) | scrapes so far |")
    print("|---:|---:|---:|---:|")
    print(f"| 0 | | {rss_start:.1f} | 0 |")
    for s in samples:
        print(f"| {s.t:.0f} | {s.cpu_pct:.2f} | {s.rss_mib:.1f} | {s.scrapes} |")
    first, last = scraper.first, scraper.last
    # Counters in a scrape are those of the last tick, so rates are taken over the two
    # served ticks' own collection times, not over when the scrapes happened.
    ts = "linnix_exporter_last_collect_timestamp_seconds{}"
    dt = last.get(ts, 0) - first.get(ts, 0)

    def rate(key: str) -> float:
        return (last.get(key, 0) - first.get(key, 0)) / dt if dt > 0 else float("nan")

    return {
        "window_s": window,
        "cpu_s": cpu,
        "mean_pct": cpu / window * 100,
        "max_pct": max(s.cpu_pct for s in samples),
        "rss_start": rss_start,
        "rss_end": samples[-1].rss_mib,
        "rss_max": max([rss_start] + [s.rss_mib for s in samples]),
        "scrapes": scraper.count,
        "scrape_errors": scraper.errors,
        "pushes": pushes,
        "forks_per_s": rate("linnix_process_forks_total{}"),
        "execs_per_s": rate("linnix_process_execs_total{}"),
        "probe_pct": rate("linnix_probes_run_time_seconds_total{}") * 100,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--scrape-interval", type=float, default=15)
    ap.add_argument("--sample-every", type=float, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    configs = args.configs.split(",")
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration {bad[0]!r} (choose from {', '.join(CONFIGS)})")
    if min(args.seconds, args.scrape_interval, args.sample_every) <= 0:
        ap.error("--seconds, --scrape-interval and --sample-every must be > 0")
    if any(c.startswith("storm") for c in configs) and not shutil.which("stress-ng"):
        raise SystemExit("stress-ng is missing: run make setup")
    print(
        header(
            f"python -m bench.usage_over_time --seconds {args.seconds:g} --scrape-interval "
            f"{args.scrape_interval:g} --sample-every {args.sample_every:g} --configs "
            f"{args.configs}"
        )
    )
    print(
        "daemon: default flags (probes on, --collect.interval 10s); OTLP: HTTP/protobuf every "
        f"{OTLP_INTERVAL_MS / 1000:g} s to a receiver in this process; CPU from /proc/PID/stat "
        "(10 ms ticks, so a 5 s sample resolves 0.2% of a core)"
    )
    results = {c: run_config(c, args) for c in configs}
    print("\n### summary")
    print(
        "| configuration | window | daemon CPU | mean, % of one core | max "
        f"{args.sample_every:g} s sample | RSS "
        "start / end / max (MiB) | scrapes (errors) | OTLP pushes | forks/s | execs/s | "
        "our probes' kernel time, % of one core |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for c, r in results.items():
        print(
            f"| {c} | {r['window_s']:.0f} s | {r['cpu_s']:.2f} s | {r['mean_pct']:.3f}% "
            f"| {r['max_pct']:.2f}% | {r['rss_start']:.1f} / {r['rss_end']:.1f} / "
            f"{r['rss_max']:.1f} | {r['scrapes']:.0f} ({r['scrape_errors']:.0f}) "
            f"| {r['pushes']:.0f} | {r['forks_per_s']:.0f} | {r['execs_per_s']:.0f} "
            f"| {r['probe_pct']:.3f}% |"
        )


if __name__ == "__main__":
    main()
