"""Load trivial BPF programs with the raw bpf() syscall (no bcc, no compiler): for churn
tests and for benches that need hundreds of programs. Each program is `r0 = 0; exit`,
a socket filter that is never attached; it lives while its fd is open."""

from __future__ import annotations

import ctypes
import os
import struct

from linnix_exporter.kernel.bpf_syscall import _ATTR_SIZE, _bpf

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
# mov64 r0, 0 ; exit
_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_insn_buf = ctypes.create_string_buffer(_INSNS, len(_INSNS))
_license = ctypes.create_string_buffer(b"GPL")


def load(name: str = "linnix_test") -> int:
    """Load one program; returns its fd (close it to unload)."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16] at offset 48.
    struct.pack_into(
        "IIQQ",
        a,
        0,
        BPF_PROG_TYPE_SOCKET_FILTER,
        2,
        ctypes.addressof(_insn_buf),
        ctypes.addressof(_license),
    )
    raw = name.encode()[:15]
    ctypes.memmove(ctypes.addressof(a) + 48, raw, len(raw))
    return _bpf(BPF_PROG_LOAD, a)


def load_many(n: int, prefix: str = "linnix_b") -> list[int]:
    return [load(f"{prefix}{i}") for i in range(n)]


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


BPF_PROG_TEST_RUN = 10
_packet = ctypes.create_string_buffer(64)  # a zeroed frame, longer than an Ethernet header


def run(fd: int, repeat: int = 1) -> None:
    """Run the program `repeat` times with BPF_PROG_TEST_RUN: its run_cnt (and, while
    stats are on, run_time_ns) grows, as a program attached somewhere would."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # test: prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat
    struct.pack_into("IIIIQQI", a, 0, fd, 0, len(_packet), 0, ctypes.addressof(_packet), 0, repeat)
    _bpf(BPF_PROG_TEST_RUN, a)
