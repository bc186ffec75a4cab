"""What `linnix-exporter top` costs: its CPU per refresh and its memory, as a person
runs it (in a 200x50 terminal, tmux), reading the kernel directly with the programs
this machine has loaded plus --programs idle ones, and reading a running exporter's
/metrics (--from). CPU from /proc/PID/task/*/schedstat (ns, every thread) over
--seconds after a warm-up, divided by the refreshes in that time.

    python -m bench.top_cost [--seconds 30] [--programs 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

from bench.common import header, loadavg
from tests.kernel_helpers import daemon, proc_status, task_cpu_ns
from tests.support import trivial_prog
from tests.test_top import Tmux

WARMUP = 5.0  # seconds: start-up (imports, calibration, first owner scan) left out


@contextlib.contextmanager
def top(*args: str) -> Iterator[Tmux]:
    import sys

    t = Tmux([sys.executable, "-m", "linnix_exporter", "top", *args])
    try:
        t.wait_for(lambda s: "% budget)" in s)
        yield t
        t.keys("q")
        t.wait_exit()
    finally:
        t.close()


def programs_shown(t: Tmux) -> str:
    for ln in t.screen().splitlines():
        if "CPUs, " in ln:
            return ln.split("CPUs, ")[1].split(" BPF")[0]
    return "?"


def measure(t: Tmux, seconds: float, interval: float) -> str:
    """top's CPU per refresh over `seconds`, with the programs on the node at both ends
    (other sessions on a shared machine load and unload programs: a changed count
    means the window saw that churn)."""
    time.sleep(WARMUP)
    before = programs_shown(t)
    cpu0, threads0 = task_cpu_ns(t.pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    cpu1, threads1 = task_cpu_ns(t.pid)
    elapsed = time.monotonic() - t0
    after = programs_shown(t)
    assert threads0 == threads1, "a thread came or went: CPU not comparable"
    cpu = (cpu1 - cpu0) / 1e9
    refreshes = elapsed / interval
    rss = proc_status(t.pid, "VmRSS") / 1024
    return (
        f"{before:>5}->{after:<5} programs  {cpu / refreshes * 1e3:6.2f} ms CPU per refresh  "
        f"{cpu / elapsed * 100:5.2f}% of one core at {interval:g}s  RSS {rss:5.1f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--programs", type=int, default=1000)
    args = ap.parse_args()
    print(header(f"python -m bench.top_cost --seconds {args.seconds:g} --programs {args.programs}"))
    print(f"terminal 200x50; CPU over {args.seconds:g} s after {WARMUP:g} s of warm-up\n")
    print("kernel feed (default), statistics on by top:")
    with top() as t:
        print("  as loaded:          " + measure(t, args.seconds, 1.0), flush=True)
    fds = trivial_prog.load_many(args.programs, prefix="lnx_topb")
    try:
        with top() as t:
            print(f"  +{args.programs} idle programs: " + measure(t, args.seconds, 1.0), flush=True)
        with top("--interval", "2s") as t:
            print("  same, --interval 2s: " + measure(t, args.seconds, 2.0), flush=True)
    finally:
        trivial_prog.close_all(fds)
    print("\n--from a running exporter (defaults, --collect.interval 1s):")
    with daemon("--collect.interval", "1s") as d:
        d.wait_ready()
        with top("--from", f"127.0.0.1:{d.port}") as t:
            print("  as loaded:          " + measure(t, args.seconds, 1.0), flush=True)
        d.stop()
    print(f"\nload average at end: {loadavg()}")


if __name__ == "__main__":
    main()
