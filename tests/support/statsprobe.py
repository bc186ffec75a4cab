"""Is the kernel counting BPF run time right now? Asked of the kernel itself: a fresh
trivial program is run with BPF_PROG_TEST_RUN and bpftool reads its run_cnt (the kernel
counts runs only while stats are on, whichever switch turned them on). Neither the
sysctl (it reads 0 while an enable-stats fd is held) nor the exporter can answer this."""

from __future__ import annotations

import os

from linnix_exporter.kernel.bpf_syscall import prog_test_run
from tests.kernel_helpers import bpftool_progs
from tests.support import trivial_prog

__all__ = ["prog_test_run", "stats_counting"]


def stats_counting() -> bool:
    """True if the kernel accumulates BPF stats now, by bpftool's run_cnt of a fresh
    program run 100 times."""
    fd = trivial_prog.load("lnx_statsprobe")
    try:
        prog_test_run(fd, 100)
        (prog,) = [p for p in bpftool_progs().values() if p.get("name") == "lnx_statsprobe"]
        runs = prog.get("run_cnt", 0)  # bpftool leaves out a zero count
        assert runs in (0, 100), prog
        return bool(runs == 100)
    finally:
        os.close(fd)
