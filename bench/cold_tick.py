"""CPU of one cold tick: a collection after 10 s of idling, as the daemon lives (issue 12;
issue 15: owner scans included, programs that actually run).

The real daemon with its probes ticks every 10 s on a timer (`--collect.mode timer`; the
baseline has only that mode) and nothing scrapes it, so its main thread does nothing
but ticks. Every 50 ms this process reads the main thread's schedstat run time
(nanoseconds); each tick shows as one step, wake-up included. --programs trivial
programs are loaded and each is run once a second (BPF_PROG_TEST_RUN), so every
program's counters move between ticks as on a busy node. Each configuration runs twice:
with the default --bpf.owner-refresh (60 s: an owner scan in one tick of six) and with
--bpf.owner-refresh 1s (an owner scan in every tick).

With --baseline REV the exporter at that commit runs beside the current one, same
machine, same time, same programs: before and after side by side.

--strace also counts the main thread's system calls per tick (strace -c on that thread
for --strace-seconds) after the timing window.

Usage: python -m bench.cold_tick [--seconds 120] [--programs 100] [--baseline REV]
                                 [--strace] [--strace-seconds 31]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import header, loadavg, rev_name, tree_at
from tests.kernel_helpers import REPO, Daemon, daemon
from tests.support import trivial_prog

STEP = 0.05  # sampling period of the main thread's run time
SETTLE = 25.0  # start-up, first ratios, then an idle interval before the first counted tick


def main_thread_ns(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def tick_costs(daemons: dict[str, Daemon], seconds: float) -> dict[str, list[int]]:
    """Per daemon, the main thread's CPU of each step (one tick each), in ns."""
    last = {n: main_thread_ns(d.proc.pid) for n, d in daemons.items()}
    steps: dict[str, list[int]] = {n: [] for n in daemons}
    open_step: dict[str, int] = {n: 0 for n in daemons}
    quiet: dict[str, int] = {n: 0 for n in daemons}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(STEP)
        for n, d in daemons.items():
            now = main_thread_ns(d.proc.pid)
            grew = now - last[n]
            last[n] = now
            if grew:
                open_step[n] += grew
                quiet[n] = 0
            elif open_step[n]:
                quiet[n] += 1
                if quiet[n] >= 4:  # 200 ms without growth: the tick is over
                    steps[n].append(open_step[n])
                    open_step[n] = 0
    return steps


def strace_counts(pid: int, seconds: float) -> tuple[int, dict[str, int]]:
    """System calls of the main thread over `seconds`: (total, by name)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        p = subprocess.Popen(
            ["strace", "-c", "-o", out.name, "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(seconds)
        p.terminate()
        p.wait(10)
        by_name: dict[str, int] = {}
        for line in out.read().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
                by_name[parts[-1]] = int(parts[3])
        return sum(by_name.values()), by_name


def runner(fds: list[int], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        for fd in fds:
            trivial_prog.run(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--programs", type=int, default=100)
    ap.add_argument("--baseline")
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--strace-seconds", type=float, default=31)
    args = ap.parse_args()
    cmd = f"python -m bench.cold_tick --seconds {args.seconds:g} --programs {args.programs}"
    cmd += (f" --baseline {args.baseline}" if args.baseline else "") + (
        f" --strace --strace-seconds {args.strace_seconds:g}" if args.strace else ""
    )
    print(header(cmd))
    print(f"current tree: {rev_name('HEAD')} (+ uncommitted changes, if any)")
    if args.strace and not shutil.which("strace"):
        raise SystemExit("--strace needs strace")
    fds = trivial_prog.load_many(args.programs, prefix="lnx_cold")
    stop = threading.Event()
    threading.Thread(target=runner, args=(fds, stop), daemon=True).start()
    rows = []
    try:
        with contextlib.ExitStack() as stack:
            trees: list[tuple[str, Path, list[str]]] = [
                ("current", REPO, ["--collect.mode", "timer"])
            ]
            if args.baseline:
                old = stack.enter_context(tree_at(args.baseline))
                trees.insert(0, (f"baseline {rev_name(args.baseline)}", old, []))
            for refresh in ("60s", "1s"):
                with contextlib.ExitStack() as run:
                    daemons = {}
                    for name, cwd, flags in trees:
                        d = run.enter_context(
                            daemon(
                                "--collect.interval",
                                "10s",
                                "--bpf.owner-refresh",
                                refresh,
                                *flags,
                                cwd=cwd,
                            )
                        )
                        daemons[name] = d
                    for d in daemons.values():
                        d.wait_ready()
                    time.sleep(SETTLE)
                    la0 = loadavg()
                    steps = tick_costs(daemons, args.seconds)
                    calls = {}
                    if args.strace:
                        for name, d in daemons.items():
                            c0 = d.metrics()["linnix_exporter_collections_total{}"]
                            total, by = strace_counts(d.proc.pid, args.strace_seconds)
                            ticks = d.metrics()["linnix_exporter_collections_total{}"] - c0
                            calls[name] = (total, by, ticks)
                    for name, d in daemons.items():
                        rows.append((name, refresh, steps[name], calls.get(name), la0))
                        d.stop()
    finally:
        stop.set()
        trivial_prog.close_all(fds)
    print(
        f"\n{args.programs} trivial programs loaded and run once a second; daemon with "
        "probes, --collect.interval 10s, no scrapes; CPU of the main thread per tick "
        f"(schedstat, steps sampled every {STEP * 1e3:.0f} ms), over {args.seconds:g} s"
    )
    print(
        "| exporter | owner refresh | ticks | CPU per cold tick, median | min | max "
        "| syscalls per tick (main thread) | load average at start |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, refresh, steps, call, la in rows:
        med = statistics.median(steps) / 1e6 if steps else float("nan")
        lo = min(steps) / 1e6 if steps else float("nan")
        hi = max(steps) / 1e6 if steps else float("nan")
        per_tick = "-"
        if call is not None and call[2] > 0:
            total, by, ticks = call
            top = sorted(by.items(), key=lambda kv: -kv[1])[:6]
            names = ", ".join(f"{k} {v / ticks:.0f}" for k, v in top)
            per_tick = f"{total / ticks:.0f} over {ticks:.0f} ticks ({names})"
        print(
            f"| {name} | {refresh} | {len(steps)} | {med:.2f} ms | {lo:.2f} ms | {hi:.2f} ms "
            f"| {per_tick} | {la} |"
        )
    print(
        "\nEach step includes the wake-up from a 10 s sleep; the strace column counts calls "
        "while attached (ptrace slows the thread, so its timing is not used)."
    )


if __name__ == "__main__":
    main()
