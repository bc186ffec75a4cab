"""The whole price on the real kernel: a process's own slowdown under a bpftrace hook,
measured by the test, against what the daemon serves for that program over the same
calls (linnix_bpf_program_hook_seconds_total, and for a tracepoint the whole price).

The process: a small Python child pinned to CPU 1 that calls a libc function (a real,
not inlined call: the uprobe target) or getppid() N times and answers its own thread
CPU time for them (the trap's kernel time is the caller's; time it spent preempted is
not). Arms with and without the attachment alternate, paired; the slowdown per call is
the median of the pairs' differences. Retries repeat a measurement: the bounds never
move."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_helpers import Daemon, daemon, held_by, stop_process

pytestmark = pytest.mark.kernel

CPU = 1  # both arms on one CPU: unpinned arms land on vCPUs of unequal speed here
LIBZ = "/lib/x86_64-linux-gnu/libz.so.1"
# The uprobe's target: zlibVersion (lea + ret) of a private copy of libz the test
# process alone maps (a uprobe is per inode: on the system's libc every process calling
# the function would trap and run the program too). The untraced arm calls
# zlibCompileFlags of the same copy, as short. The calibration (kernel/hook_cost.py)
# traps on zlibVersion of a copy of its own (another inode: neither sees the other's
# probe), in another process, timed by its own A/B.
FUNC, PLAIN = "zlibVersion", "zlibCompileFlags"
PORT = 20101
TRIES = 3

_CHILD = r"""
import ctypes, os, sys, time
lib = ctypes.CDLL(sys.argv[1])
fs = {n: getattr(lib, n) for n in sys.argv[2:]}
g = os.getppid
t = time.thread_time_ns
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    what, n = line.split()
    r = range(int(n))
    f = fs.get(what)
    t0 = t()
    if f is not None:
        for _ in r: f()
    else:
        for _ in r: g()
    out.write(f"{t() - t0}\n"); out.flush()
"""


class Caller:
    """The test process: runs N calls on request, answers its thread CPU ns for them."""

    def __init__(self, lib: str) -> None:
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(CPU), sys.executable, "-I", "-S", "-c", _CHILD, lib, FUNC, PLAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, what: str, n: int) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what} {n}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def caller(lib: str) -> Iterator[Caller]:
    c = Caller(lib)
    try:
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def bpftrace(*args: str, timeout: float = 60.0) -> Iterator[int]:
    """bpftrace attached; yields its one program's id."""
    proc = subprocess.Popen(
        ["bpftrace", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        while not (ids := held_by(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "bpftrace did not attach"
            time.sleep(0.1)
        (prog_id,) = ids
        yield prog_id
    finally:
        stop_process(proc)


def served(m: dict[str, float], family: str, prog_id: int) -> float | None:
    """The value of a per-program family for this program id (None: not served)."""
    for k, v in m.items():
        if k.startswith(family + "{") and f"id={prog_id}," in k:
            return v
    return None


def fresh(d: Daemon) -> dict[str, float]:
    """A scrape whose tick was read after now: everything before is counted in it."""
    return d.wait_tick_after(time.time())


def wait_priced(d: Daemon, prog_id: int, timeout: float = 60.0) -> dict[str, float]:
    """Until the daemon serves the program's hook seconds (its hook found and priced)."""
    deadline = time.monotonic() + timeout
    while True:
        m = fresh(d)
        if served(m, "linnix_bpf_program_hook_seconds_total", prog_id) is not None:
            return m
        assert time.monotonic() < deadline, f"program {prog_id}'s hook seconds never served"
        time.sleep(0.3)


def start_daemon(name_regex: str) -> contextlib.AbstractContextManager[Daemon]:
    # Statistics always on (run_cnt counts every run), a tick at most 0.5 s old; the
    # test's program listed by its name (bpftrace names it after the probed function)
    # whatever else a shared node has loaded; owner scans (which find the perf events'
    # holders) not paced to 0.02% of a core: with thousands of programs loaded by
    # others, the default budget spaces them minutes apart, and this test waits for the
    # new program's hook, it does not measure the scans.
    return daemon(
        "--bpf.owner-scan-budget",
        "0.5",
        "--collector.hooks",
        "--bpf.stats-mode",
        "always",
        "--collect.interval",
        "500ms",
        "--bpf.include-name",
        name_regex,
        port=PORT,
    )


def test_uprobe_hook_seconds_against_the_process_slowdown(tmp_path: Path) -> None:
    """One process on CPU 1 calls zlibVersion (under bpftrace's uprobe) and
    zlibCompileFlags (not probed) N times each, alternated; its slowdown per traced
    call against the daemon's served hook seconds of that program over the same calls,
    per call: within a factor of two (here 12-19 us against a ~0.3 us ctypes call; the
    program's body and the statistics' cost, ~0.1 us, stay in the slowdown: under 1%
    of it). Measured here: 18.7/18.2, 12.4/13.9, 12.7/12.8 us (slowdown/served)."""
    n, rounds = 400, 7  # 400 traps ~7 ms an arm: 7 pairs in ~0.1 s of CPU
    lib = tmp_path / "libz-hooktest.so.1"
    shutil.copyfile(LIBZ, lib)
    script = f"uprobe:{lib}:{FUNC} {{ @c = count(); }}"
    with caller(str(lib)) as proc, start_daemon(f"^{FUNC}$") as d:
        d.wait_ready()
        with bpftrace("-e", script) as p:
            wait_priced(d, p)
            for f in (FUNC, PLAIN):
                proc.run(f, n)  # warm: the first calls fault pages in
            results = []
            for _ in range(TRIES):
                before = fresh(d)
                diffs = []
                for i in range(rounds):
                    order = (FUNC, PLAIN) if i % 2 else (PLAIN, FUNC)
                    t = {f: proc.run(f, n) for f in order}
                    diffs.append((t[FUNC] - t[PLAIN]) / n)
                after = fresh(d)
                runs = served(after, "linnix_bpf_program_runs_total", p)
                runs0 = served(before, "linnix_bpf_program_runs_total", p)
                hook = served(after, "linnix_bpf_program_hook_seconds_total", p)
                hook0 = served(before, "linnix_bpf_program_hook_seconds_total", p)
                assert None not in (runs, runs0, hook, hook0)
                # Nothing else maps the copy: the runs the kernel counted are the
                # test's (the daemon's statistics were on throughout).
                assert runs - runs0 == n * rounds  # type: ignore[operator]
                served_ns = (hook - hook0) / (n * rounds) * 1e9  # type: ignore[operator]
                slowdown_ns = statistics.median(diffs)
                results.append((round(slowdown_ns), round(served_ns)))
                if 0.5 <= served_ns / slowdown_ns <= 2.0:
                    break
    print(f"uprobe: (slowdown, served) ns per call, per try: {results}")
    slowdown_ns, served_ns = results[-1]
    assert 0.5 <= served_ns / slowdown_ns <= 2.0, results
    # The owner roll-up and the node total carry the same seconds.
    owner = [
        v
        for k, v in after.items()
        if k.startswith("linnix_bpf_owner_hook_seconds_total{") and "owner_comm=bpftrace" in k
    ]
    assert owner and owner[0] >= hook - 1e-9, owner  # type: ignore[operator]
    assert after["linnix_bpf_hook_seconds_total{}"] >= hook - 1e-9  # type: ignore[operator]


def test_tracepoint_hook_seconds_against_a_syscall_loop() -> None:
    """getppid() N times on CPU 1, without and with bpftrace counting
    syscalls:sys_enter_getppid (one bpftrace session per "with" arm, arms alternated in
    order). A tracepoint's hook is a few ns to a few hundred ns here against a ~0.3 us
    Python syscall loop whose arms move by tens of ns a call between rounds: the hook
    alone is below what this A/B resolves. What it resolves is the whole price the
    process pays per call (hook + body + statistics, all outside the process's code),
    so the served whole price of that program over the same calls is checked against
    the slowdown (see TRACEPOINT_FACTOR), and the served hook seconds against the
    served cost per hit times the program's runs (exact)."""
    n, rounds = 20_000, 5
    script = "tracepoint:syscalls:sys_enter_getppid { @c = count(); }"
    # bpftrace 0.17 gives its program no BTF: its name is the kernel's 15 characters.
    with caller(LIBZ) as proc, start_daemon("^sys_enter_getpp") as d:
        d.wait_ready()
        proc.run("getppid", n)  # warm
        results = []
        for _ in range(TRIES):
            diffs, whole, hooks = [], [], []
            for i in range(rounds):
                plain_first = i % 2 == 0
                without = proc.run("getppid", n) if plain_first else 0
                with bpftrace("-e", script) as p:
                    wait_priced(d, p)
                    before = fresh(d)
                    traced = proc.run("getppid", n)
                    after = fresh(d)
                if not plain_first:
                    without = proc.run("getppid", n)
                diffs.append((traced - without) / n)
                delta = {
                    f: served(after, f, p) - served(before, f, p)  # type: ignore[operator]
                    for f in (
                        "linnix_bpf_program_runs_total",
                        "linnix_bpf_program_run_time_seconds_total",
                        "linnix_bpf_program_hook_seconds_total",
                    )
                }
                runs = delta["linnix_bpf_program_runs_total"]
                assert runs >= n  # the test's calls, and any other process's getppid()
                # measured, or estimated when another process held statistics on
                (stats_s,) = [
                    v for k, v in after.items() if k.startswith("linnix_bpf_stats_run_cost_sec")
                ]
                # source measured, or measured_shared when other programs were on syscall
                # tracepoints as the daemon calibrated (this shared machine's tests)
                (hook_s,) = [
                    v
                    for k, v in after.items()
                    if k.startswith("linnix_bpf_hook_cost_seconds{hook=tracepoint,")
                ]
                per_run = delta["linnix_bpf_program_hook_seconds_total"] / runs
                hooks.append((per_run, hook_s))
                whole.append(
                    (
                        delta["linnix_bpf_program_run_time_seconds_total"]
                        + delta["linnix_bpf_program_hook_seconds_total"]
                    )
                    / runs
                    + stats_s
                )
            slowdown_ns = statistics.median(diffs)
            whole_ns = statistics.median(whole) * 1e9
            results.append((round(slowdown_ns, 1), round(whole_ns, 1)))
            if 1 / TRACEPOINT_FACTOR <= whole_ns / slowdown_ns <= TRACEPOINT_FACTOR:
                break
    print(f"tracepoint: (slowdown, served whole price) ns per call, per try: {results}")
    print(f"tracepoint: (served hook s per run, served cost per hit) by round: {hooks}")
    for per_run, cost in hooks:  # runs x the cost per hit, nothing else
        assert per_run == pytest.approx(cost, rel=1e-6)
    slowdown_ns, whole_ns = results[-1]
    assert 1 / TRACEPOINT_FACTOR <= whole_ns / slowdown_ns <= TRACEPOINT_FACTOR, results


# What the tracepoint A/B resolves, measured here (2026-12-07, a loaded 2-vCPU node,
# three runs): slowdown / served whole price per call 464/399, 363/473, 214/215 ns: the
# two move together with the machine's state (the hook alone was served at 152 ns, and
# 45 ns on a quiet day), and disagree by at most 1.3x. A factor of two, the uprobe's
# bound, separates "the whole price" from "the body alone" (run_time_ns: ~40-100 ns)
# or "twice the hook"; it cannot tell a hook priced 0 from one priced right when the
# hook is under ~1/3 of the whole (a quiet day's 7 ns of 90 ns): that check is the
# exact one, runs x the served cost per hit.
TRACEPOINT_FACTOR = 2.0
