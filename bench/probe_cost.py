"""Probe cost side by side: our probes and bpftrace doing the same counting on the same
events, loaded at the same time, during a stress-ng fork storm plus an exec loop.

"The same counting": bpftrace keeps a per-comm count and a total per event, and on the
exit of a thread-group leader a log2 lifetime histogram and its sum, which is what
bpf/probes.c does. sched_process_free (our exited-task CPU) has no bpftrace peer here:
bpftrace 0.17 has no raw tracepoints and this kernel no fentry for it.

Programs on one tracepoint run in attach order, and the first to touch an event's data
pays the cold cache, so the bench runs twice, each tool loaded first once. ns/run is
Δrun_time_ns / Δrun_cnt from the kernel's own statistics; programs are told apart by id
(bpftool perf list gives bpftrace's tracepoints: names are truncated to 15 chars and
sched_process_exec/exit both read "sched_process_e").

Usage: python -m bench.probe_cost [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time

from bench.common import header
from linnix_exporter.kernel.bpf_syscall import ProgReader, RawProg, enable_stats
from linnix_exporter.kernel.probes import Probes

BPFTRACE = """
tracepoint:sched:sched_process_fork { @f[comm] = count(); @forks = count(); }
tracepoint:sched:sched_process_exec { @e[comm] = count(); @execs = count(); }
tracepoint:sched:sched_process_exit {
  @x[comm] = count(); @exits = count();
  if (pid == tid) { $l = nsecs - curtask->start_time; @life = hist($l); @lifesum = sum($l); }
}
"""
EVENTS = ("fork", "exec", "exit", "free")


def start_bpftrace() -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """bpftrace running the script; returns it and {event: program id}."""
    proc = subprocess.Popen(
        ["bpftrace", "-e", BPFTRACE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["bpftool", "perf", "list", "-j"], capture_output=True, text=True, check=True
        ).stdout
        ids = {
            p["tracepoint"].removeprefix("sched_process_"): p["prog_id"]
            for p in json.loads(out)
            if p["pid"] == proc.pid
        }
        if len(ids) == 3:
            return proc, ids
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("bpftrace did not attach its 3 programs")


def storm(seconds: int) -> None:
    sh = subprocess.Popen(["timeout", str(seconds), "sh", "-c", "while :; do /bin/true; done"])
    subprocess.run(["stress-ng", "--fork", "2", "--timeout", f"{seconds}s", "--quiet"], check=True)
    sh.wait()


def ns_per_run(before: RawProg | None, after: RawProg | None) -> tuple[float, int]:
    assert before is not None and after is not None
    runs = after.run_cnt - before.run_cnt
    return ((after.run_time_ns - before.run_time_ns) / runs if runs else float("nan")), runs


def run(order: str, seconds: int) -> dict[str, dict[str, tuple[float, int]]]:
    """{event: {tool: (ns/run, runs)}} for one load order."""
    stats_fd = enable_stats()
    reader = ProgReader()
    try:
        if order == "linnix":
            probes = Probes.load()
            bt, bt_ids = start_bpftrace()
        else:
            bt, bt_ids = start_bpftrace()
            probes = Probes.load()
        ids = {("linnix", n.removeprefix("linnix_")): i for n, i in probes.program_names.items()}
        ids.update({("bpftrace", ev): i for ev, i in bt_ids.items()})
        try:
            before = {k: reader.info_by_id(i) for k, i in ids.items()}
            storm(seconds)
            after = {k: reader.info_by_id(i) for k, i in ids.items()}
        finally:
            probes.close()
            bt.terminate()
            bt.wait()
        out: dict[str, dict[str, tuple[float, int]]] = {ev: {} for ev in EVENTS}
        for (tool, ev), _ in ids.items():
            out[ev][tool] = ns_per_run(before[(tool, ev)], after[(tool, ev)])
        return out
    finally:
        os.close(stats_fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("bpftrace", "stress-ng", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run make setup")
    print(header(f"python -m bench.probe_cost --seconds {args.seconds}"))
    print("storm: stress-ng --fork 2 and a sh loop exec'ing /bin/true, both loaded at once")
    print("| loaded first | event | linnix ns/run | bpftrace ns/run | runs |")
    print("|---|---|---:|---:|---:|")
    totals: dict[str, list[float]] = {"linnix": [], "bpftrace": []}
    for order in ("linnix", "bpftrace"):
        for ev, tools in run(order, args.seconds).items():
            ours, runs = tools["linnix"]
            bt = tools.get("bpftrace", (float("nan"), 0))[0]
            print(f"| {order} | {ev} | {ours:.0f} | {bt:.0f} | {runs} |")
            if ev != "free":
                totals["linnix"].append(ours)
                totals["bpftrace"].append(bt)
    mean = {k: sum(v) / len(v) for k, v in totals.items()}
    print(
        f"mean over fork/exec/exit and both orders: linnix {mean['linnix']:.0f} ns/run, "
        f"bpftrace {mean['bpftrace']:.0f} ns/run"
    )


if __name__ == "__main__":
    main()
