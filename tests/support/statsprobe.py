"""Is the kernel counting BPF run time right now, and who holds statistics on? Asked of
the kernel itself: a fresh trivial program is run with BPF_PROG_TEST_RUN and bpftool
reads its run_cnt (the kernel counts runs only while stats are on, whichever switch
turned them on). Neither the sysctl (it reads 0 while an enable-stats fd is held) nor the
exporter can answer this.

On a shared node other processes (other exporters, bpftop, other test sessions) hold
statistics on at times. A test never assumes nobody does: it finds the holders
(`stats_holders`), waits a bounded time for a free window (`free_window`), or checks
that someone really held them when it sees them counted (`assert_stats_off`,
`HolderWatch`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from linnix_exporter.kernel.bpf_syscall import prog_test_run
from tests.kernel_helpers import bpftool_progs
from tests.support import trivial_prog

__all__ = [
    "HOLDER_WAIT",
    "HolderWatch",
    "assert_stats_off",
    "free_window",
    "prog_test_run",
    "stats_counting",
    "stats_holders",
    "wait_stats_free",
]

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
# How long a test that needs statistics to itself waits for other holders to let go:
# tests/support/shared_noise.py holds them 30 s of every 90 s; other sessions' daemons
# here hold them for a minute or more at a time. Twice in one test stays within
# pytest-timeout's 300 s.
HOLDER_WAIT = 120.0
# How long assert_stats_off waits for the kernel itself to answer "off" before it settles
# for naming the holders (none of them ours): one hold of shared_noise.py.
OFF_WAIT = 35.0


def stats_counting() -> bool:
    """True if the kernel accumulates BPF stats now, by bpftool's run_cnt of a fresh
    program run 100 times."""
    fd = trivial_prog.load("lnx_statsprobe")
    try:
        prog_test_run(fd, 100)
        mine = _prog_id(fd)
        prog = bpftool_progs()[mine]
        runs = prog.get("run_cnt", 0)  # bpftool leaves out a zero count
        assert runs in (0, 100), prog
        return bool(runs == 100)
    finally:
        os.close(fd)


def _prog_id(fd: int) -> int:
    """The id of our own program fd (two sessions may each load a `lnx_statsprobe`)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("prog_id:"))


def stats_holders(exclude: frozenset[int] = frozenset()) -> list[str]:
    """Other processes holding BPF statistics on ('pid comm'), and the sysctl if set;
    this process and the pids in `exclude` (a daemon under test) are left out. An
    enable-stats fd is an anon inode named bpf-stats."""
    skip = {os.getpid(), *exclude}
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in skip:
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(f) == "anon_inode:bpf-stats" for f in fds):
                out.append(f"{proc.name} {(proc / 'comm').read_text().strip()}")
        except OSError:
            continue
    if SYSCTL.read_text().strip() == "1":
        out.append("sysctl kernel.bpf_stats_enabled=1")
    return out


def wait_stats_free(
    timeout: float, exclude: frozenset[int] = frozenset(), sysctl_only: bool = False
) -> list[str]:
    """Wait until nobody else holds statistics on (`sysctl_only`: until the sysctl is 0,
    for tests of the sysctl method); returns the holders left at timeout (empty: free)."""
    deadline = time.monotonic() + timeout

    def holders() -> list[str]:
        if not sysctl_only:
            return stats_holders(exclude)
        return ["sysctl kernel.bpf_stats_enabled=1"] if SYSCTL.read_text() == "1\n" else []

    while (left := holders()) and time.monotonic() < deadline:
        time.sleep(1.0)
    return left


def free_window(why: str, timeout: float = HOLDER_WAIT, sysctl_only: bool = False) -> None:
    """Wait (at most `timeout`) for nobody else to hold statistics on; fail naming them
    and the wait if they never let go."""
    holders = wait_stats_free(timeout, sysctl_only=sysctl_only)
    if holders:
        pytest.fail(f"{why}: statistics held on by others through {timeout:.0f} s: {holders}")


def ours(pid: int) -> bool:
    """Whether a process descends from this test process (its daemons, their children
    while those live)."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = next(int(ln.split()[1]) for ln in f if ln.startswith("PPid:"))
        except (OSError, StopIteration):
            return False
    return False


def assert_stats_off(timeout: float = OFF_WAIT) -> None:
    """Statistics as a test that turned none on must leave them, after its daemon exited:
    the kernel does not count runs. While it does, someone must hold them on, found and
    named: wait (at most `timeout`) for them to let go and ask the kernel again; if they
    hold on, pass only if every holder is another's (an enable-stats fd in a process
    that does not descend from this test) — never the sysctl, which a test of ours may
    have left on. Counting with no holder to be found fails at once.

    A process our daemon left behind would be reparented and pass as another's: the
    daemon's only child is its compile helper, which exits before it serves
    (test_probes.py::test_killed_loader_leaves_nothing_attached)."""
    deadline = time.monotonic() + timeout
    while stats_counting():
        holders = stats_holders()
        if not holders:
            # A holder may have let go between the two reads: the kernel decides.
            assert not stats_counting(), "the kernel counts runs and nobody holds stats on"
            return
        if time.monotonic() > deadline:
            mine = [h for h in holders if not h.split()[0].isdigit() or ours(int(h.split()[0]))]
            assert not mine, f"statistics left on by this test or the sysctl: {mine}"
            return  # held on by others, named in `holders`; none of them ours
        time.sleep(1.0)


def _mine(holder: str) -> bool:
    """A holder that descends from this test process is not "someone else": a child
    forked while the test holds an enable-stats fd inherits it for its short life, and a
    daemon the test started is the one under test."""
    pid = holder.split()[0]
    return pid.isdigit() and ours(int(pid))


class HolderWatch:
    """Polls stats_holders() in a thread (every `every` s) and keeps when each was seen,
    so a test that sees runs counted while its daemon's statistics were off can check
    that someone else really held them then."""

    def __init__(self, exclude: frozenset[int] = frozenset(), every: float = 0.25) -> None:
        self.exclude = exclude
        self.every = every
        self.seen: list[tuple[float, tuple[str, ...]]] = []  # (monotonic, holders)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            self.seen.append((t, tuple(h for h in stats_holders(self.exclude) if not _mine(h))))
            self._stop.wait(self.every)

    def held_between(self, t0: float, t1: float) -> list[str]:
        """Every holder seen by a poll that started in [t0, t1]."""
        return sorted({h for t, hs in self.seen if t0 <= t <= t1 for h in hs})

    @contextmanager
    def running(self) -> Iterator[HolderWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
