"""What reaching a BPF program costs, per hook kind: the calibration and a real agent.

Prints, in one run on one machine:
1. per hook kind, calibrated on its own (kernel/hook_cost.py), `--repeats` times: the
   A/B (added ns per event, median of rounds), the program's body (run_time_ns /
   run_cnt), the calibrated figure (A/B minus body) and the calibration's CPU (ours +
   the trigger child's);
2. the same trigger loop under bpftrace counting into a map (uprobe on the function the
   calibration traps on: zlibVersion of its private libz copy, or libc abs if the copy
   failed; the syscalls:sys_enter_getppid tracepoint), bpftrace started and stopped for each
   arm, alternated: the added ns per event a real agent's attachment costs, beside the
   calibrated A/B;
3. one whole calibration (every kind) and its CPU, and what recalibrating hourly costs.

Statistics are global: the bench waits (--wait seconds) for other holders to let go; if
they do not, the calibration subtracts the statistics' estimated cost (it says so).

    python -m bench.hook_cost [--repeats 3] [--ab-rounds 5] [--wait 120]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from linnix_exporter.kernel import hook_cost
from linnix_exporter.kernel.hook_cost import HookCalibrator, Trigger
from linnix_exporter.kernel.host import ensure_tracefs
from linnix_exporter.kernel.stats_cost import OwnStatsFd, StatsCalibrator
from tests.kernel_helpers import held_by, stop_process
from tests.support.syscall_ab import stats_holders, wait_stats_free


def stats_cost_ns() -> float:
    est = StatsCalibrator().estimate(None)
    return est.cost_ns if est else 0.0


def per_kind(repeats: int) -> dict[str, list[hook_cost.HookCost]]:
    print("\n## 1. calibration per hook kind (each kind alone, repeated)")
    print(
        "hook           | events | rounds | A/B added ns | body ns | calibrated ns |"
        " CPU s (ours+child) | note"
    )
    sw = OwnStatsFd()
    out: dict[str, list[hook_cost.HookCost]] = {}
    for kind in hook_cost.KINDS:
        for _ in range(repeats):
            cal = HookCalibrator(stats_cost_ns=stats_cost_ns()).calibrate(
                sw.on, sw.off, kinds=(kind,)
            )
            (c,) = cal.costs
            out.setdefault(kind, []).append(c)
            if c.source != hook_cost.MEASURED:
                print(f"{kind:14} | {c.source}: {c.reason}")
                break
            print(
                f"{kind:14} | {c.events:6} | {c.rounds:6} | {c.added_ns:12.1f} |"
                f" {c.body_ns:7.1f} | {c.cost_ns:13.1f} | {cal.cpu_seconds:18.3f} | {c.reason}"
            )
    return out


BPFTRACE = {
    "uprobe": ("call", "uprobe:{lib}:{func} /pid == {pid}/ {{ @c = count(); }}", 1000),
    "tracepoint": (
        "syscall",
        "tracepoint:syscalls:sys_enter_getppid /pid == {pid}/ {{ @c = count(); }}",
        10_000,
    ),
}


def bpftrace_arm(trigger: Trigger, script: str, what: str, n: int) -> int:
    proc = subprocess.Popen(
        ["bpftrace", "-e", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not held_by(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bpftrace did not load")
            time.sleep(0.1)
        time.sleep(1.0)  # attached after loading: give it the time it takes here
        return trigger.run(what, n)
    finally:
        stop_process(proc)


def bpftrace_ab(rounds: int, cal: dict[str, list[hook_cost.HookCost]]) -> None:
    print("\n## 2. a real agent: bpftrace counting into a map on the same trigger loop")
    print(
        "hook       | events | added ns per round (bpftrace)             | median | calibrated A/B"
    )
    trigger = Trigger()
    try:
        for hook, (what, script, n) in BPFTRACE.items():
            text = script.format(lib=trigger.lib, func=trigger.func, pid=trigger.proc.pid)
            trigger.run(what, n)
            diffs = []
            for i in range(rounds):
                if i % 2 == 0:
                    without = trigger.run(what, n)
                    took = bpftrace_arm(trigger, text, what, n)
                else:
                    took = bpftrace_arm(trigger, text, what, n)
                    without = trigger.run(what, n)
                diffs.append((took - without) / n)
            got = cal.get(hook, [])
            ours = [c.added_ns for c in got if c.source in (hook_cost.MEASURED, hook_cost.SHARED)]
            print(
                f"{hook:10} | {n:6} | {', '.join(f'{d:.0f}' for d in diffs):42} |"
                f" {statistics.median(diffs):6.0f} | {', '.join(f'{o:.0f}' for o in ours)}"
            )
    finally:
        trigger.close()


def whole() -> None:
    print("\n## 3. one whole calibration (every kind), as the exporter would run it")
    sw = OwnStatsFd()
    cal = HookCalibrator(stats_cost_ns=stats_cost_ns()).calibrate(sw.on, sw.off)
    for c in cal.costs:
        print(f"{c.hook:14} {c.source:12} {c.cost_ns:10.1f} ns  {c.reason}")
    print(
        f"CPU: {cal.cpu_seconds:.3f} s (child {cal.child_cpu_seconds:.3f} s); hourly:"
        f" {cal.cpu_seconds / 3600 * 100:.4f}% of a core"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ab-rounds", type=int, default=5)
    ap.add_argument("--wait", type=float, default=120.0)
    a = ap.parse_args()
    t0 = time.monotonic()
    ensure_tracefs()
    holders = wait_stats_free(a.wait)
    print(f"statistics holders at start (after waiting up to {a.wait:.0f} s): {holders or 'none'}")
    cal = per_kind(a.repeats)
    bpftrace_ab(a.ab_rounds, cal)
    whole()
    print(f"\nbench took {time.monotonic() - t0:.0f} s; holders at end: {stats_holders()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
