"""The hot loops over every program, with named slices (snapshot.COUNTERS,
KERNEL_FIELDS, prog_ids: issue 18) against the literal positional slices they replaced
(p[5:8], q[:8], r[1]), side by side in one run, alternated, on 1,000 programs: the tick's
counter dict (state.Exporter.tick), the idle-program compare (rates.compute_rates) and
the id set (state.Exporter.read_snapshot). Pinned to one CPU by the caller if wanted
(taskset -c 1).

Usage: python -m bench.slice_cost [--programs 1000] [--rounds 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from linnix_exporter.snapshot import COUNTERS, KERNEL_FIELDS, ProgramStat, RawProg, prog_ids


def rows(n: int) -> tuple[list[ProgramStat], list[ProgramStat], list[RawProg]]:
    a = [ProgramStat(i, f"p{i}", "tracepoint", "00" * 8, 5, 1000 + i, i, 0) for i in range(n)]
    b = [p._replace(run_cnt=p.run_cnt + (i % 10 == 0)) for i, p in enumerate(a)]
    raws = [RawProg(5, i, b"\0" * 8, 5, b"p", 1000 + i, i, 0) for i in range(n)]
    return a, b, raws


def per_round(fn: Callable[[], object], rounds: int) -> float:
    """Median µs per call over `rounds` calls."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t0)
    return statistics.median(out) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args()
    prev, cur, raws = rows(a.programs)
    by_key = {(p.id, p.tag, p.load_time_ns): p for p in cur}
    before = {p.id: p for p in prev}
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "counters dict (tick)": (
            lambda: {k: p[5:8] for k, p in by_key.items()},
            lambda: {k: p[COUNTERS] for k, p in by_key.items()},
        ),
        "idle compare (rates)": (
            lambda: [before[p.id][:8] == p[:8] for p in cur],
            lambda: [before[p.id][KERNEL_FIELDS] == p[KERNEL_FIELDS] for p in cur],
        ),
        "id set (read_snapshot)": (
            lambda: frozenset([r[1] for r in raws]),
            lambda: prog_ids(raws),
        ),
    }
    print(f"{a.programs} programs, {a.rounds} rounds x 5 alternations, median µs per call")
    print(f"{'loop':<24} {'literal':>9} {'named':>9} {'named/literal':>14}")
    for name, (literal, named) in cases.items():
        lit, nam = [], []
        for _ in range(5):  # alternated: a noisy moment hits both
            lit.append(per_round(literal, a.rounds))
            nam.append(per_round(named, a.rounds))
        lo, no = statistics.median(lit), statistics.median(nam)
        print(f"{name:<24} {lo:>9.1f} {no:>9.1f} {no / lo:>14.3f}")


if __name__ == "__main__":
    main()
