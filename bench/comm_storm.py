"""RSS against the number of command names the daemon has seen (issue 20: what grew in
issue 15's storm?). The daemon runs at defaults with OTLP over HTTP (to a receiver in
this process, every 10 s) and a scrape every 15 s; this process then forks without
pause, each child renaming itself (prctl PR_SET_NAME) to one of --distinct names in
turn and forking once more, for --seconds. Every 15 s: VmRSS, the command names the
daemon keeps counters for (linnix_process_unlisted_comms + the listed ones) and the
node's forks. Per-command state is bounded (the comm accumulator remembers at most
4 x --probes.comm-slots names, the kernel's LRU map holds --probes.comm-slots), so RSS
must level off however many names pass.

Usage: python -m bench.comm_storm [--seconds 120] [--distinct 20000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import threading
import time

from bench.common import header
from tests.kernel_helpers import KeepAlive, daemon, proc_status
from tests.support.otlp_receiver import HttpReceiver

PR_SET_NAME = 15


def storm(distinct: int, stop: threading.Event, done: list[int]) -> None:
    prctl = ctypes.CDLL(None).prctl
    i = 0
    while not stop.is_set():
        pid = os.fork()
        if pid == 0:
            prctl(PR_SET_NAME, f"lnxs{i % distinct}".encode(), 0, 0, 0)
            if os.fork() == 0:
                os._exit(0)
            os.wait()
            os._exit(0)
        os.waitpid(pid, 0)
        i += 1
    done.append(i)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--distinct", type=int, default=20000)
    args = ap.parse_args()
    if args.seconds <= 0 or args.distinct < 1:
        ap.error("--seconds must be > 0 and --distinct >= 1")
    print(
        header(f"python -m bench.comm_storm --seconds {args.seconds:g} --distinct {args.distinct}")
    )
    rx = HttpReceiver().start()
    env = {
        **rx.exporter_env(),
        "OTEL_METRIC_EXPORT_INTERVAL": "10000",
    }
    try:
        with daemon("--otlp.enabled", env=env, port=19250) as d:
            d.wait_ready()
            conn = KeepAlive(d.port)
            conn.metrics()
            time.sleep(15)
            conn.metrics()
            print("| t (s) | RSS (MiB) | command names kept | forks so far |")
            print("|---:|---:|---:|---:|")
            print(f"| 0 | {proc_status(d.proc.pid, 'VmRSS') / 1024:.1f} | | |")
            stop, done = threading.Event(), []
            th = threading.Thread(target=storm, args=(args.distinct, stop, done))
            th.start()
            t0 = time.monotonic()
            f0 = None
            while time.monotonic() - t0 < args.seconds:
                time.sleep(15)
                m = conn.metrics()
                listed = sum(1 for k in m if k.startswith("linnix_process_comm_forks_total{"))
                kept = m.get("linnix_process_unlisted_comms{}", 0) + listed - 1  # - [other]
                forks = m.get("linnix_process_forks_total{}", 0)
                f0 = forks if f0 is None else f0
                rss = proc_status(d.proc.pid, "VmRSS") / 1024
                t = time.monotonic() - t0
                print(f"| {t:.0f} | {rss:.1f} | {kept:.0f} | {forks - f0:.0f} |", flush=True)
            stop.set()
            th.join()
            conn.close()
            print(f"\n{done[0]} renamed processes over {args.seconds:g} s ({args.distinct} names)")
    finally:
        rx.stop()


if __name__ == "__main__":
    main()
