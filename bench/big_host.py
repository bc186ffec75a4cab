"""A big host: 2,000 processes holding 200,000 fds in all (issue 12). Records the cost of
one owner scan each way, the daemon's idle CPU there, and its CPU while programs churn.

1. --procs `sleep` processes, each holding --fds-per-proc extra fds (/dev/null dups
   passed at spawn), next to the machine's own processes.
2. Owner scan, in this process, CPU (getrusage: the iterator's kernel time is spent in
   our read(), so it is included) and wall time per scan: the /proc walk
   (progstats.scan_owners, one readlink per fd) and the owners iterator
   (bpf/prog_owners_iter.c, one read). Both must find the same owners.
3. Idle: the daemon at defaults (probes on, 10 s, on demand) with a scrape every 15 s,
   for --seconds, CPU by per-thread schedstat. With --baseline REV the exporter at that
   commit runs beside it.
4. Churn: the same, while a new program is loaded (and the previous one closed) every
   --churn-every seconds, so new program ids appear before every tick.

Usage: python -m bench.big_host [--procs 2000] [--fds-per-proc 100] [--seconds 120]
                                [--churn-every 1] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import PeriodicScraper, cpu_by_thread, header, loadavg, rev_name, tree_at
from linnix_exporter.kernel import iter_loader
from linnix_exporter.kernel.progstats import scan_owners
from tests.kernel_helpers import REPO, Daemon, daemon, thread_stats
from tests.support import trivial_prog


def total_fds() -> tuple[int, int]:
    """(processes, open fds) on the host, counted from /proc."""
    procs = fds = 0
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            with contextlib.suppress(OSError):
                fds += len(os.listdir(f"/proc/{e.name}/fd"))
                procs += 1
    return procs, fds


@contextlib.contextmanager
def holders(n: int, per_proc: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    null = os.open("/dev/null", os.O_RDONLY)
    fds = [os.dup(null) for _ in range(per_proc)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(["sleep", "3600"], pass_fds=fds, stdin=subprocess.DEVNULL)
            )
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        for fd in [null, *fds]:
            os.close(fd)


def cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def scan_costs(rounds_proc: int, rounds_iter: int) -> list[str]:
    stats, owners, why = iter_loader.load_iterators()
    stats.close()
    if owners is None:
        raise SystemExit(f"owners iterator unavailable: {why}")
    lines = []
    try:
        walks: list[tuple[float, float]] = []
        reads: list[tuple[float, float]] = []
        for _ in range(rounds_proc):
            c, t = cpu(), time.perf_counter()
            a = scan_owners()
            walks.append((cpu() - c, time.perf_counter() - t))
        for _ in range(rounds_iter):
            c, t = cpu(), time.perf_counter()
            b = owners.scan()
            reads.append((cpu() - c, time.perf_counter() - t))
        same = a == b  # the last of each, seconds apart: programs may come and go
        for name, xs in (("/proc walk (scan_owners)", walks), ("owners iterator", reads)):
            lines.append(
                f"| {name} | {len(xs)} | {statistics.median(x[0] for x in xs) * 1e3:.2f} ms "
                f"| {statistics.median(x[1] for x in xs) * 1e3:.2f} ms "
                f"| {max(x[0] for x in xs) * 1e3:.2f} ms |"
            )
        lines.append(f"\nsame owners from both (last scan of each): {same}")
    finally:
        owners.close()
    return lines


def churn(stop: threading.Event, every: float, counter: list[int]) -> None:
    fd = trivial_prog.load("lnx_churn")
    try:
        while not stop.wait(every):
            new = trivial_prog.load("lnx_churn")
            os.close(fd)
            fd = new
            counter[0] += 1
    finally:
        os.close(fd)


def measure(daemons: dict[str, Daemon], seconds: float) -> dict[str, tuple[float, int, int]]:
    """Per daemon: (CPU seconds by schedstat, voluntary switches, scrapes) over seconds."""
    scrapers = {n: PeriodicScraper(d.port, 15).start() for n, d in daemons.items()}
    try:
        time.sleep(20)  # first ratios, first owner scans
        before = {n: thread_stats(d.proc.pid) for n, d in daemons.items()}
        s0 = {n: s.count for n, s in scrapers.items()}
        time.sleep(seconds)
        after = {n: thread_stats(d.proc.pid) for n, d in daemons.items()}
        out = {}
        for n in daemons:
            run, switches, _ = cpu_by_thread(before[n], after[n])
            out[n] = (run, switches, scrapers[n].count - s0[n])
        return out
    finally:
        for s in scrapers.values():
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2000)
    ap.add_argument("--fds-per-proc", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--churn-every", type=float, default=1.0)
    ap.add_argument("--baseline")
    args = ap.parse_args()
    cmd = (
        f"python -m bench.big_host --procs {args.procs} --fds-per-proc {args.fds_per_proc} "
        f"--seconds {args.seconds:g} --churn-every {args.churn_every:g}"
        + (f" --baseline {args.baseline}" if args.baseline else "")
    )
    print(header(cmd))
    print(f"current tree: {rev_name('HEAD')} (+ uncommitted changes, if any)")
    with contextlib.ExitStack() as stack:
        t = time.monotonic()
        stack.enter_context(holders(args.procs, args.fds_per_proc))
        procs, fds = total_fds()
        print(
            f"host now: {procs} processes, {fds:,} open fds "
            f"({args.procs} holders started in {time.monotonic() - t:.0f} s)"
        )
        print("\nowner scan, in this process (CPU by getrusage, kernel time included)")
        print("| method | scans | CPU per scan, median | wall, median | CPU, worst |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(scan_costs(3, 20)))

        trees: list[tuple[str, Path]] = [("current", REPO)]
        if args.baseline:
            trees.insert(
                0,
                (
                    f"baseline {rev_name(args.baseline)}",
                    stack.enter_context(tree_at(args.baseline)),
                ),
            )
        daemons = {}
        for name, cwd in trees:
            d = stack.enter_context(daemon(cwd=cwd))
            d.wait_ready()
            daemons[name] = d
        rows = []
        for phase in ("idle", "churn"):
            stop = threading.Event()
            loaded = [0]
            th = None
            if phase == "churn":
                th = threading.Thread(target=churn, args=(stop, args.churn_every, loaded))
                th.start()
            la = loadavg()
            try:
                got = measure(daemons, args.seconds)
            finally:
                stop.set()
                if th is not None:
                    th.join()
            for name, (run, switches, scrapes) in got.items():
                rows.append((phase, name, run, switches, scrapes, loaded[0], la))
        for d in daemons.values():
            d.stop()
    print(
        f"\ndaemon at defaults (probes on, --collect.interval 10s), a scrape every 15 s, "
        f"{args.seconds:g} s per phase after 20 s; churn: a new program every "
        f"{args.churn_every:g} s (the previous one closed); CPU by per-thread schedstat"
    )
    print(
        "| phase | exporter | CPU | share of one core | voluntary switches/min | scrapes "
        "| programs loaded meanwhile | load average at start |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for phase, name, run, switches, scrapes, loaded, la in rows:
        print(
            f"| {phase} | {name} | {run * 1e3:.1f} ms | {run / args.seconds * 100:.4f}% "
            f"| {switches * 60 / args.seconds:.1f} | {scrapes} | {loaded} | {la} |"
        )


if __name__ == "__main__":
    main()
