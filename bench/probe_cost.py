"""Probe cost side by side: our probes and bpftrace doing the same per-comm counting on
the same events, loaded at the same time, during a stress-ng fork/exec storm.

Programs on one tracepoint run in attach order and the first one to touch the event's
data pays the cold cache, so the bench runs twice, once with each loaded first, and
reports ns/run (Δrun_time_ns / Δrun_cnt, from the kernel's own stats) for both.

Usage: python -m bench.probe_cost [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from bench.common import header
from linnix_exporter.kernel.bpf_syscall import ProgReader, enable_stats
from linnix_exporter.kernel.probes import Probes
from tests.kernel_helpers import bpftool_progs

BPFTRACE = (
    "tracepoint:sched:sched_process_fork { @f[comm] = count(); } "
    "tracepoint:sched:sched_process_exec { @e[comm] = count(); } "
    "tracepoint:sched:sched_process_exit { @x[comm] = count(); }"
)


def start_bpftrace() -> tuple[subprocess.Popen[bytes], list[int]]:
    before = set(bpftool_progs())
    proc = subprocess.Popen(
        ["bpftrace", "-e", BPFTRACE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [
            i for i, p in bpftool_progs().items() if i not in before and p["type"] == "tracepoint"
        ]
        if len(new) == 3:
            return proc, new
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("bpftrace did not load its 3 programs")


def storm(seconds: int) -> None:
    # fork storm + exec storm (a shell loop exec'ing /bin/true), both for `seconds`.
    sh = subprocess.Popen(["timeout", str(seconds), "sh", "-c", "while :; do /bin/true; done"])
    subprocess.run(["stress-ng", "--fork", "2", "--timeout", f"{seconds}s", "--quiet"], check=True)
    sh.wait()


def run(order: str, seconds: int) -> list[tuple[str, str, float, int]]:
    stats_fd = enable_stats()
    reader = ProgReader()
    try:
        if order == "ours-first":
            probes = Probes.load()
            bt, bt_ids = start_bpftrace()
        else:
            bt, bt_ids = start_bpftrace()
            probes = Probes.load()
        try:
            ids = {
                f"linnix {n.removeprefix('linnix_')}": i for n, i in probes.program_names.items()
            }
            names = {p.id: p.name for p in map(reader.info_by_id, bt_ids) if p}
            for i in bt_ids:
                ids[f"bpftrace {names[i].decode(errors='replace')}"] = i
            before = {k: reader.info_by_id(i) for k, i in ids.items()}
            storm(seconds)
            after = {k: reader.info_by_id(i) for k, i in ids.items()}
        finally:
            probes.close()
            bt.terminate()
            bt.wait()
        rows = []
        for k in ids:
            b, a = before[k], after[k]
            assert a is not None and b is not None
            runs = a.run_cnt - b.run_cnt
            ns = (a.run_time_ns - b.run_time_ns) / runs if runs else float("nan")
            who, what = k.split(" ", 1)
            rows.append((who, what, ns, runs))
        return rows
    finally:
        os.close(stats_fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("bpftrace", "stress-ng"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run make setup")
    print(header(f"python -m bench.probe_cost --seconds {args.seconds}"))
    print(
        "storm: stress-ng --fork 2 + a sh loop exec'ing /bin/true; ns/run = Δrun_time_ns/Δrun_cnt"
    )
    print("| loaded first | program | ns/run | runs |")
    print("|---|---|---:|---:|")
    for order in ("ours-first", "bpftrace-first"):
        for who, what, ns, runs in run(order, args.seconds):
            print(f"| {order} | {who} {what} | {ns:.0f} | {runs} |")


if __name__ == "__main__":
    main()
