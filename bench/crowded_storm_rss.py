"""One daemon's memory on a crowded node under a fork/exec storm (issue 20, point 3), as
it lives there: alone, with OTLP over HTTP (every 60 s, to a receiver in this process),
2,000 programs run once a second and 3,000 maps (bench/crowded_node.crowd), defaults,
scraped every 15 s. After --idle-seconds, the storm of bench/usage_over_time.py
(stress-ng --fork 2 + a shell loop exec'ing /bin/true) for --storm-seconds, then
--after-seconds of calm. VmRSS and where it is resident (/proc/PID/smaps: anonymous
mappings, which hold pymalloc's arenas and thread arenas; the malloc heap; shared
libraries) every --every seconds.

bench/crowded_daemon.py runs four daemons at once (code before and now, with and
without OTLP) for side-by-side CPU and latency; this file measures one daemon's RSS
without the others contending for the two vCPUs.

Usage: python -m bench.crowded_storm_rss [--programs 2000] [--maps 3000]
          [--idle-seconds 60] [--storm-seconds 600] [--after-seconds 30] [--every 30]
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import PeriodicScraper, header, loadavg
from bench.crowded_node import crowd
from bench.daemon_memory import ANON, HEAP, LIBS, smaps_totals
from bench.usage_over_time import storm
from tests.kernel_helpers import daemon, proc_status
from tests.support.otlp_receiver import HttpReceiver


def line(phase: str, t0: float, pid: int) -> str:
    kib = smaps_totals(pid)
    short = ((ANON, "anonymous"), (HEAP, "heap"), (LIBS, "libraries"))
    parts = " ".join(f"{name} {kib.get(kind, 0) / 1024:5.1f}" for kind, name in short)
    rss = proc_status(pid, "VmRSS") / 1024
    return f"| {phase} | {time.monotonic() - t0:5.0f} s | {rss:.1f} MiB | {parts} | {loadavg()} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=2000)
    ap.add_argument("--maps", type=int, default=3000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--storm-seconds", type=float, default=600)
    ap.add_argument("--after-seconds", type=float, default=30)
    ap.add_argument("--every", type=float, default=30)
    args = ap.parse_args()
    print(header("python -m bench.crowded_storm_rss " + " ".join(sys.argv[1:])), flush=True)
    rx = HttpReceiver().start()
    env = rx.exporter_env()
    peak = {"idle": 0.0, "storm": 0.0, "after": 0.0}
    try:
        with crowd(args.programs, args.maps, running=True), daemon(env=env) as d:
            d.wait_ready()
            scraper = PeriodicScraper(d.port, 15).start()
            pid, t0 = d.proc.pid, time.monotonic()
            print("| phase | time | VmRSS | resident MiB by kind | load average |")
            print("|---|---:|---:|---|---|")
            for phase, seconds in (
                ("idle", args.idle_seconds),
                ("storm", args.storm_seconds),
                ("after", args.after_seconds),
            ):
                procs = storm(seconds + 2) if phase == "storm" else []
                end = time.monotonic() + seconds
                try:
                    while time.monotonic() < end:
                        time.sleep(min(args.every, max(0.0, end - time.monotonic())))
                        print(line(phase, t0, pid), flush=True)
                        peak[phase] = max(peak[phase], proc_status(pid, "VmRSS") / 1024)
                finally:
                    for p in procs:
                        p.terminate()
                        p.wait()
            scraper.close()
            pushes = len(rx.requests)
    finally:
        rx.stop()
    print(
        f"\nVmRSS at most: idle {peak['idle']:.1f} MiB, storm {peak['storm']:.1f} MiB, "
        f"after {peak['after']:.1f} MiB ({peak['storm'] * 1.048576:.1f} MB under the storm); "
        f"{pushes} OTLP pushes received"
    )


if __name__ == "__main__":
    main()
