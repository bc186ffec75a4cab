"""Probe cost: our four probes, bpftrace doing the same counting, our probes as they were
before the comm cache, and variants of ours with one part left out, each measured ALONE
on the tracepoints in alternated rounds of one run, during the same storm (stress-ng
fork workers plus a shell loop exec'ing /bin/true).

"The same counting": bpftrace keeps a per-comm count and a total per event, and on the
exit of a thread-group leader a log2 lifetime histogram and its sum, which is what
bpf/probes.c does. sched_process_free (our exited-task CPU) has no bpftrace peer here:
bpftrace 0.17 has no raw tracepoints, and its kfunc probes need ftrace's
available_filter_functions, which this kernel refuses to read.

Why alone, not side by side on the same tracepoint: programs on one tracepoint run in
attach order and the first to touch an event's data pays the cold cache (co-attached,
the same program read several times more loaded first than loaded second). Alone,
every configuration is first. Rounds rotate the order of the configurations so that a
slow spell of this shared 2-CPU VM lands on each of them in turn; the summary is the
median over rounds.

ns/run = Δrun_time_ns / Δrun_cnt from the kernel's own statistics, programs told apart
by id (bpftrace's from bpftool perf list: its names are truncated to 15 chars).

The variants are bpf/probes.c compiled with its bench switches (VARIANTS below): the
difference of two medians is what the part left out costs. "empty" returns at once:
the floor (entry, the statistics' own clock reads, exit).

Usage: python -m bench.probe_cost [--seconds 3] [--rounds 7] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import header
from linnix_exporter.kernel import _loader
from linnix_exporter.kernel.bpf_syscall import ProgReader, RawProg, enable_stats

BPFTRACE = """
tracepoint:sched:sched_process_fork { @f[comm] = count(); @forks = count(); }
tracepoint:sched:sched_process_exec { @e[comm] = count(); @execs = count(); }
tracepoint:sched:sched_process_exit {
  @x[comm] = count(); @exits = count();
  if (pid == tid) { $l = nsecs - curtask->start_time; @life = hist($l); @lifesum = sum($l); }
}
"""
EVENTS = ("fork", "exec", "exit", "free")
PEER_EVENTS = ("fork", "exec", "exit")  # the events bpftrace can do too

# Variant name -> bench switches of bpf/probes.c; "linnix" is the shipped probe.
VARIANTS: dict[str, dict[str, int]] = {
    "linnix": {},
    # Every comm through the LRU per-CPU hash + the fallback totals line (no cache).
    "lru-only": {"COMM_CACHE_SLOTS": 0},
    # No per-comm counting: node totals only, in the fallback totals line.
    "totals-only": {"COUNT_COMM": 0},
    "no-lifetime": {"COUNT_LIFETIME": 0},
    "empty": {"EMPTY": 1},
}
# The probes as they were before the comm cache (bpf/probes.c at this commit), built
# from git: per-CPU totals and histogram arrays, bpf_get_current_comm and an LRU
# per-CPU hash lookup on every event, helper calls for task fields.
BEFORE_COMMIT = "b420ef3"

Result = dict[str, tuple[float, int]]  # event -> (ns/run, runs)


def bpftrace_ids(pid: int) -> dict[str, int]:
    out = subprocess.run(
        ["bpftool", "perf", "list", "-j"], capture_output=True, text=True, check=True
    ).stdout
    return {
        p["tracepoint"].removeprefix("sched_process_"): p["prog_id"]
        for p in json.loads(out)
        if p["pid"] == pid
    }


def storm(seconds: float) -> None:
    sh = subprocess.Popen(["timeout", str(seconds), "sh", "-c", "while :; do /bin/true; done"])
    subprocess.run(["stress-ng", "--fork", "2", "--timeout", f"{seconds}s", "--quiet"], check=True)
    sh.wait()


def ns_per_run(before: RawProg | None, after: RawProg | None) -> tuple[float, int]:
    if before is None or after is None:
        return float("nan"), 0
    runs = after.run_cnt - before.run_cnt
    return ((after.run_time_ns - before.run_time_ns) / runs if runs else float("nan")), runs


def measure(reader: ProgReader, ids: dict[str, int], seconds: float) -> Result:
    before = {ev: reader.info_by_id(i) for ev, i in ids.items()}
    storm(seconds)
    after = {ev: reader.info_by_id(i) for ev, i in ids.items()}
    return {ev: ns_per_run(before[ev], after[ev]) for ev in ids}


def run_variant(b: Any, reader: ProgReader, seconds: float) -> Result:
    _loader.attach(b)  # loads the programs on first use (bcc's b.funcs fills then)
    try:
        ids = {
            name.removeprefix("linnix_"): reader.info(b.funcs[name.encode()].fd).id
            for name in _loader.PROGRAMS
        }
        return measure(reader, ids, seconds)
    finally:
        _loader.detach(b)


def before_source() -> Path | None:
    try:
        text = subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:bpf/probes.c"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "probes_before.c"
    path.write_text(text)
    return path


def run_bpftrace(reader: ProgReader, seconds: float) -> Result:
    proc = subprocess.Popen(
        ["bpftrace", "-e", BPFTRACE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while len(ids := bpftrace_ids(proc.pid)) < len(PEER_EVENTS):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("bpftrace did not attach its 3 programs")
            time.sleep(0.2)
        return measure(reader, ids, seconds)
    finally:
        proc.terminate()
        proc.wait()


def fmt(v: float) -> str:
    return "—" if v != v else f"{v:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="storm per configuration")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="configurations to run (default: all)")
    args = ap.parse_args()
    for tool in ("bpftrace", "stress-ng", "bpftool"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run make setup")
    cmd = f"python -m bench.probe_cost --seconds {args.seconds:g} --rounds {args.rounds}"
    print(header(cmd + (f" --only {' '.join(args.only)}" if args.only else "")))
    print("storm per configuration: stress-ng --fork 2 and a sh loop exec'ing /bin/true")

    reader = ProgReader()
    names = args.only or [*VARIANTS, "before", "bpftrace"]
    runners: dict[str, Callable[[], Result]] = {}
    for name in names:
        if name == "bpftrace":
            runners[name] = lambda: run_bpftrace(reader, args.seconds)
            continue
        if name == "before":
            src = before_source()
            if src is None:
                print(f"(no git checkout with {BEFORE_COMMIT}: 'before' left out)")
                continue
            b = _loader.compile_probes(1024, src=src)
        else:
            b = _loader.compile_probes(1024, defines=VARIANTS[name])
        runners[name] = lambda b=b: run_variant(b, reader, args.seconds)  # type: ignore[misc]
    names = [n for n in names if n in runners]

    per: dict[str, dict[str, list[float]]] = {n: {ev: [] for ev in EVENTS} for n in names}
    stats_fd = enable_stats()
    try:
        print("\nraw rounds (ns/run, runs):")
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                res = runners[name]()
                for ev, (ns, _) in res.items():
                    per[name][ev].append(ns)
                cells = " ".join(f"{ev}={fmt(ns)}/{n}" for ev, (ns, n) in res.items())
                print(f"round {r + 1} {name}: {cells}", flush=True)
    finally:
        os.close(stats_fd)

    med = {
        n: {ev: statistics.median(v) if v else float("nan") for ev, v in d.items()}
        for n, d in per.items()
    }
    print(f"\nmedian ns/run over {args.rounds} rounds:")
    print("| configuration | " + " | ".join(EVENTS) + " | mean of 4 | mean fork/exec/exit |")
    print("|---|" + "---:|" * (len(EVENTS) + 2))
    for n in names:
        m = med[n]
        four = [m[ev] for ev in EVENTS]
        three = [m[ev] for ev in PEER_EVENTS]
        print(
            f"| {n} | "
            + " | ".join(fmt(v) for v in four)
            + f" | {fmt(sum(four) / 4)} | {fmt(sum(three) / 3)} |"
        )
    if "linnix" in med and "bpftrace" in med:
        ours = sum(med["linnix"][ev] for ev in PEER_EVENTS)
        peer = sum(med["bpftrace"][ev] for ev in PEER_EVENTS)
        print(f"\nlinnix / bpftrace, fork+exec+exit medians: {ours / peer:.2f}")
    if "linnix" in med:
        print("\nwhat each part costs (differences of the medians above, ns/run):")
        parts = [
            ("LRU hash path instead of the comm's cache line", "lru-only", "linnix"),
            (
                "comm cache line (hash, compare, add) instead of a totals add",
                "linnix",
                "totals-only",
            ),
            ("one totals add (one cold line) over an empty program", "totals-only", "empty"),
            ("lifetime (pid/tgid, start_time, clock, histogram line)", "linnix", "no-lifetime"),
            ("before -> now", "before", "linnix"),
        ]
        for what, hi, lo in parts:
            if hi in med and lo in med:
                diffs = ", ".join(f"{ev} {fmt(med[hi][ev] - med[lo][ev])}" for ev in EVENTS)
                print(f"- {what} ({hi} - {lo}): {diffs}")


if __name__ == "__main__":
    main()
