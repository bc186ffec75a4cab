"""Is the kernel counting BPF run time right now? Asked of the kernel itself: a fresh
trivial program is run with BPF_PROG_TEST_RUN and bpftool reads its run_cnt (the kernel
counts runs only while stats are on, whichever switch turned them on). Neither the
sysctl (it reads 0 while an enable-stats fd is held) nor the exporter can answer this."""

from __future__ import annotations

import ctypes
import os
import struct

from linnix_exporter.kernel.bpf_syscall import _ATTR_SIZE, _bpf
from tests.kernel_helpers import bpftool_progs
from tests.support import trivial_prog

BPF_PROG_TEST_RUN = 10


def prog_test_run(fd: int, repeat: int) -> None:
    """BPF_PROG_TEST_RUN on a socket filter: runs it `repeat` times in the kernel."""
    data = ctypes.create_string_buffer(64)  # a packet of at least ETH_HLEN bytes
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat
    struct.pack_into("IIIIQQI", a, 0, fd, 0, 64, 0, ctypes.addressof(data), 0, repeat)
    _bpf(BPF_PROG_TEST_RUN, a)


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
