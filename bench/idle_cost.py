"""Exporter CPU and RSS on an idle node at the default interval (goals: <= 0.1% of one
core, steady RSS <= 40 MB). Starts the real daemon with its probes, lets it settle, then
measures its CPU from /proc/PID/stat (independent of the exporter's own figures) over a
window of whole ticks.

With --otlp http|grpc a local OTLP receiver (tests/support/otlp_receiver.py) runs in
this process and the daemon pushes to it every 10 s, so the figure includes the push.

Usage: python -m bench.idle_cost [--seconds 120] [--otlp http|grpc] [-- daemon flags]
"""

from __future__ import annotations

import argparse
import os
import time

from bench.common import header
from tests.kernel_helpers import daemon, proc_stat_cpu_seconds
from tests.support.otlp_receiver import GrpcReceiver, HttpReceiver


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--otlp", choices=("http", "grpc"))
    ap.add_argument("--otlp-interval-ms", type=int, default=10000)
    ap.add_argument("flags", nargs="*")
    args = ap.parse_args()
    otlp = f" --otlp {args.otlp} --otlp-interval-ms {args.otlp_interval_ms}" if args.otlp else ""
    print(
        header(f"python -m bench.idle_cost --seconds {args.seconds:g}{otlp} {' '.join(args.flags)}")
    )
    env: dict[str, str] = {}
    rx: GrpcReceiver | HttpReceiver | None = None
    if args.otlp:
        rx = (GrpcReceiver() if args.otlp == "grpc" else HttpReceiver()).start()
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if args.otlp == "grpc" else "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": str(args.otlp_interval_ms),
        }
    with daemon(*args.flags, env=env) as d:
        d.wait_ready()
        time.sleep(12)  # a first full interval, so the window is steady state
        pid = d.proc.pid
        c0, t0 = proc_stat_cpu_seconds(pid), time.monotonic()
        samples = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(5)
            samples.append(rss_kib(pid))
        c1, t1 = proc_stat_cpu_seconds(pid), time.monotonic()
        m = d.metrics()
        d.stop()
    if rx is not None:
        print(f"OTLP pushes received: {len(rx.requests)} (every {args.otlp_interval_ms} ms)")
        rx.stop()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    share = (c1 - c0) / (t1 - t0)
    print(
        f"window: {t1 - t0:.0f} s; daemon CPU (/proc/PID/stat): {c1 - c0:.2f} s "
        f"(resolution {tick:.2f} s) = {share * 100:.3f}% of one core"
    )
    print(
        f"RSS: min {min(samples) / 1024:.1f} MiB, max {max(samples) / 1024:.1f} MiB "
        f"over {len(samples)} samples"
    )
    print(
        f"exporter's own figure at the end: linnix_exporter_cpu_ratio "
        f"{m.get('linnix_exporter_cpu_ratio{}', float('nan')):.5f} of the node "
        f"({m.get('linnix_node_cpus{}', 0):.0f} CPUs)"
    )


if __name__ == "__main__":
    main()
