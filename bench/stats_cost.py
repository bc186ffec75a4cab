"""What BPF statistics cost every program run: the calibration next to the syscall A/B.

Prints, in one run on one machine:
1. the syscall-tracer A/B: dd bs=1 under bpftrace on raw_syscalls:sys_enter, ns per
   syscall with no tracer, tracer with statistics off, and on; the per-run difference
   next to the calibrated cost and to the tracer's own run_time_ns/run_cnt;
2. the calibration (BPF_PROG_TEST_RUN of a 2-instruction program, statistics off/on
   alternated) at three repeat counts: its spread and its CPU, to justify REPEAT/ROUNDS;
3. the estimate used while statistics are held on (the cost scaled by the trivial
   program's own run time) against a fresh measurement, cycle after cycle;
4. our probes' own run time per run under a fork loop, for scale.
Lines go to --out as they come.

Statistics are global: the bench waits until no other process holds them on, and the A/B
checks each "off" arm with the tracer's run_cnt (tests/support/syscall_ab.py).

    python -m bench.stats_cost [--rounds 9] [--count 300000] [--out bench/results/stats_cost.txt]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench.common import header
from linnix_exporter.kernel.bpf_syscall import ProgReader
from linnix_exporter.kernel.stats_cost import OwnStatsFd, StatsCalibrator
from tests.kernel_helpers import forks
from tests.support.statsprobe import stats_holders, wait_stats_free
from tests.support.syscall_ab import syscall_ab

OUT: list[str] = []  # the --out file, written as lines come: a long wait can be cut short


def line(out: list[str], text: str) -> None:
    print(text, flush=True)
    out.append(text)
    if OUT:
        with open(OUT[0], "a") as f:
            f.write(text + "\n")


def calibration_spread(out: list[str]) -> None:
    line(out, "\n## 2. calibration: cost ns/run (median of rounds), per repeat count")
    line(
        out,
        "repeat  | rounds | cost ns (3 calibrations)  | off ns | on ns | trivial run ns | CPU ms",
    )
    sw = OwnStatsFd()
    for repeat in (1_000, 10_000, 100_000):
        cal = StatsCalibrator(repeat=repeat)
        got = [cal.measure(sw.on, sw.off) for _ in range(3)]
        if any(c is None for c in got):
            line(out, f"{repeat:>7} | statistics held on by another process: skipped")
            continue
        cs = [c for c in got if c is not None]
        line(
            out,
            f"{repeat:>7} | {cs[0].rounds:>6} | "
            f"{', '.join(f'{c.cost_ns:5.1f}' for c in cs):<25} | "
            f"{statistics.median(c.off_ns or 0.0 for c in cs):6.1f} | "
            f"{statistics.median(c.on_ns for c in cs):5.1f} | "
            f"{statistics.median(c.run_ns for c in cs):14.1f} | "
            f"{statistics.median(c.cpu_seconds for c in cs) * 1e3:6.1f}",
        )


def estimate_check(out: list[str], cycles: int) -> None:
    line(out, "\n## 3. estimate while held on (first cost x trivial run ns ratio) vs measured")
    line(out, "cycle | measured ns | estimated ns | error | trivial run ns")
    sw = OwnStatsFd()
    cal = StatsCalibrator()
    first = cal.measure(sw.on, sw.off)
    if first is None:
        line(out, "statistics held on by another process: skipped")
        return
    for i in range(cycles):
        # Load between cycles changes the machine's speed: a fork loop on one core.
        forks(300 * i)
        truth = cal.measure(sw.on, sw.off)
        sw.on()
        try:
            est = cal.estimate(first)
        finally:
            sw.off()
        if truth is None or est is None:
            line(out, f"{i:>5} | held on by another process")
            continue
        err = (est.cost_ns - truth.cost_ns) / truth.cost_ns
        line(
            out,
            f"{i:>5} | {truth.cost_ns:11.1f} | {est.cost_ns:12.1f} | {err:+6.1%} | "
            f"{est.run_ns:14.1f}",
        )


def probes_run_ns(out: list[str]) -> None:
    from linnix_exporter.kernel.probes import Probes

    sw = OwnStatsFd()
    reader = ProgReader()
    with Probes.load() as probes:
        ids = sorted(probes.program_ids)
        sw.on()
        try:
            before = {i: reader.info_by_id(i) for i in ids}
            forks(3_000)
            after = {i: reader.info_by_id(i) for i in ids}
        finally:
            sw.off()
    line(out, "\n## 4. our probes' own run time under 3,000 forks (statistics on)")
    for i in ids:
        a, b = before[i], after[i]
        if a is None or b is None:
            continue
        runs = b.run_cnt - a.run_cnt
        ns = (b.run_time_ns - a.run_time_ns) / runs if runs else 0.0
        name = b.name.split(b"\0", 1)[0].decode()
        line(out, f"{name:<16} {runs:>7} runs  {ns:6.1f} ns/run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--cycles", type=int, default=6)
    ap.add_argument("--wait", type=float, default=1800.0, help="for other holders to go")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    out: list[str] = []
    if a.out:
        open(a.out, "w").close()
        OUT.append(a.out)
    line(out, header("python -m bench.stats_cost " + " ".join(sys.argv[1:])))
    held = wait_stats_free(a.wait)
    if held:
        line(out, f"statistics held on by others for {a.wait:.0f} s: {held}")
        return 1
    t0 = time.monotonic()
    sw = OwnStatsFd()
    cal = StatsCalibrator()
    before = cal.measure(sw.on, sw.off)
    ab = syscall_ab(rounds=a.rounds, count=a.count)
    after = cal.measure(sw.on, sw.off)
    line(out, f"\n## 1. syscall-tracer A/B: dd bs=1 count={a.count} (2 syscalls a byte)")
    line(out, f"no tracer:                 {ab.none_ns:6.1f} ns/syscall (median of 3)")
    line(out, f"tracer, statistics off:    {statistics.median(ab.off_ns):6.1f} ns/syscall")
    line(out, f"tracer, statistics on:     {statistics.median(ab.on_ns):6.1f} ns/syscall")
    line(out, f"paired on-off per round:   {', '.join(f'{d:.0f}' for d in ab.pair_diffs)}")
    line(out, f"per-run cost (A/B median): {ab.per_run_ns:6.1f} ns")
    cals = [c.cost_ns for c in (before, after) if c is not None]
    line(out, f"calibrated before / after: {', '.join(f'{c:.1f}' for c in cals)} ns")
    if cals:
        line(out, f"calibrated / A/B:          {statistics.median(cals) / ab.per_run_ns:6.2f}")
    line(out, f"tracer's own run time:     {statistics.median(ab.tracer_run_ns):6.1f} ns/run")
    line(out, f"rounds discarded (off arm was on: another holder): {ab.discarded}")
    calibration_spread(out)
    estimate_check(out, a.cycles)
    probes_run_ns(out)
    line(out, f"\nbench took {time.monotonic() - t0:.0f} s; holders at end: {stats_holders()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
