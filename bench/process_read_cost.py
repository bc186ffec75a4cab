"""What the standard process_* families add to a tick (issue 22): the reads they need
beyond the self collector's, timed warm in this process (thread CPU per call over
--calls calls), next to the whole self read they are part of.

The families' other inputs are free: CPU and RSS are the figures the self collector
already served, the virtual size is the first field of the statm line it already reads,
and the start time is read once. Idle cost at defaults with the daemon as it lives:
bench/idle_cost.py (results file idle_cost-process.txt).

Usage: python -m bench.process_read_cost [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from bench.common import header
from linnix_exporter.kernel.self_usage import SelfUsageReader, max_fds, open_fds


def per_call_us(f: Callable[[], object], calls: int) -> float:
    t0 = time.thread_time_ns()
    for _ in range(calls):
        f()
    return (time.thread_time_ns() - t0) / calls / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    print(header(f"python -m bench.process_read_cost --calls {args.calls}"))
    reader = SelfUsageReader()
    statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    try:
        rows = [
            ("open fds: stat() of /proc/self/fd (new)", open_fds),
            ("max fds: getrlimit(RLIMIT_NOFILE) (new)", max_fds),
            (
                "listing /proc/self/fd (client_python's way, for scale)",
                lambda: os.listdir("/proc/self/fd"),
            ),
            (
                "statm pread (already read before; now also gives vsize)",
                lambda: os.pread(statm, 64, 0),
            ),
            ("the whole self read, with the above", reader.read),
        ]
        print(f"\nwarm, thread CPU per call over {args.calls} calls, {os.getpid()=}\n")
        print("| read | µs per call |\n|---|---:|")
        for name, f in rows:
            print(f"| {name} | {per_call_us(f, args.calls):.2f} |")
    finally:
        os.close(statm)
        reader.close()


if __name__ == "__main__":
    main()
