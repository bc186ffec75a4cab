"""One arm of bench/crowded_node.py's per-program tick CPU: the exporter's tick state
machine of the tree given by --tree (the current code or a `git archive` of an earlier
commit), in this process, with N trivial programs loaded that all run between ticks.

Uses only what both trees have (cli.kernel_sources, state.Exporter, the iterators'
loader, tests/support/trivial_prog), so the same worker measures the code before and
after. After every tick this process runs each program once (BPF_PROG_TEST_RUN), then
sleeps --idle seconds (cold: as the daemon lives, everything it touches is evicted by
then) and times the next tick with time.thread_time (the iterators run inside our
read(), so their kernel time counts). Then --warm ticks back to back. Prints one JSON
line: the tick CPU of each cold and warm tick, the programs listed at each, and whether
the program set changed since the tick before (other processes load and unload
programs on a shared machine).

With --floor, also the floor of the read path alone, in the same process with the same
programs: the iterator's read (BPF_ITER_CREATE + read()s, no Python per program) timed
the same way, cold and warm; for the syscall path the C loop given by --c-floor
(bench/syscall_floor.c: the same three calls per program, no Python).

Usage: python bench/crowded_worker.py --tree PATH --method iterator|syscall
                                      --programs N [--cold 3] [--idle 10] [--warm 20]
                                      [--floor] [--c-floor BINARY]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True)
    ap.add_argument("--method", choices=("iterator", "syscall"), required=True)
    ap.add_argument("--programs", type=int, required=True)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--floor", action="store_true")
    ap.add_argument("--c-floor", help="bench/syscall_floor.c, compiled")
    args = ap.parse_args()
    sys.path.insert(0, args.tree)  # that tree's linnix_exporter and tests.support

    # Where these live moved with issue 18 (wiring.py, kernel/iter_loader.py); the
    # worker runs the trees from before and after.
    from linnix_exporter.cli import build_parser
    from linnix_exporter.config import run_config

    try:
        from linnix_exporter.wiring import Iterators, kernel_sources
    except ImportError:
        from linnix_exporter.cli import Iterators, kernel_sources  # type: ignore[attr-defined,no-redef]
    try:
        from linnix_exporter.kernel.iter_loader import load_iterators
    except ImportError:
        from linnix_exporter.kernel.prog_iter import load_iterators  # type: ignore[attr-defined,no-redef]
    from linnix_exporter.kernel.stats_switch import StatsSwitch
    from linnix_exporter.state import Exporter
    from tests.support import trivial_prog

    fds = trivial_prog.load_many(args.programs, prefix="lnx_crowd")
    iters = Iterators()
    stats_reader = None
    if args.method == "iterator":
        stats_reader, owners, why = load_iterators()
        if owners is None:
            raise SystemExit(f"owners iterator unavailable: {why}")
        iters = Iterators(stats_reader, owners)
    # No probes (they are the same in both trees and add a fixed cost); owner scans
    # only when programs appear that no scan covered (an hour's refresh): the scan's
    # cost is measured on its own (crowded_node.py, "reads at this scale").
    flags = ["run", "--no-probes.enabled", "--bpf.owner-refresh", "1h"]
    cfg = run_config(build_parser().parse_args(flags), {})
    stats = StatsSwitch()
    stats.enable("auto")
    ex = Exporter(cfg, kernel_sources(cfg, stats, None, iters))
    ex.tick()
    ex.tick()

    def ids() -> frozenset[int]:
        t = ex.latest
        if t is None:
            return frozenset()
        progs = t.snapshot.programs
        have = getattr(progs, "id_set", None)  # a table has them (no rows built)
        return have if have is not None else frozenset(p.id for p in progs)

    def tick(idle: float) -> tuple[float, int, bool]:
        before = ids()
        for fd in fds:  # every program runs between ticks
            trivial_prog.run(fd)
        if idle:
            time.sleep(idle)
        c = time.thread_time()
        ex.tick()
        cpu = time.thread_time() - c
        after = ids()
        return cpu, len(after), after != before

    cold = [tick(args.idle) for _ in range(args.cold)]
    warm = [tick(0.0) for _ in range(args.warm)]
    floor: dict[str, Any] = {}
    if args.floor and stats_reader is not None:

        def bare_read(idle: float) -> tuple[float, int]:
            for fd in fds:
                trivial_prog.run(fd)
            if idle:
                time.sleep(idle)
            c = time.thread_time()
            with stats_reader._read_all() as view:
                n = len(view) // 64
            return time.thread_time() - c, n

        got = [bare_read(args.idle) for _ in range(args.cold)]
        floor["cold"], floor["cold_programs"] = [g[0] for g in got], [g[1] for g in got]
        got = [bare_read(0.0) for _ in range(args.warm)]
        floor["warm"], floor["warm_programs"] = [g[0] for g in got], [g[1] for g in got]
    elif args.floor and args.c_floor:
        out = subprocess.run(
            [args.c_floor, str(args.cold), str(args.idle), str(args.warm)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            kind, n, ns = line.split()
            floor.setdefault(kind, []).append(int(ns) / 1e9)
            floor.setdefault(f"{kind}_programs", []).append(int(n))
    ex.close()
    stats.close()
    trivial_prog.close_all(fds)
    print(
        json.dumps(
            {
                "cold": [c[0] for c in cold],
                "cold_programs": [c[1] for c in cold],
                "cold_set_changed": [c[2] for c in cold],
                "warm": [w[0] for w in warm],
                "warm_programs": [w[1] for w in warm],
                "warm_set_changed": [w[2] for w in warm],
                "floor": floor,
            }
        )
    )


if __name__ == "__main__":
    main()
