"""Trivial BPF programs loaded with the raw bpf() syscall (no bcc, no compiler): for churn
tests and for benches that need hundreds of programs. Each program is `r0 = 0; exit`,
a socket filter that is never attached; it lives while its fd is open."""

from __future__ import annotations

import os

from linnix_exporter.kernel.bpf_syscall import load_trivial_prog, prog_test_run


def load(name: str = "linnix_test") -> int:
    """Load one program; returns its fd (close it to unload)."""
    return load_trivial_prog(name)


def load_many(n: int, prefix: str = "linnix_b") -> list[int]:
    return [load(f"{prefix}{i}") for i in range(n)]


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def run(fd: int, repeat: int = 1) -> None:
    """Run the program `repeat` times with BPF_PROG_TEST_RUN: its run_cnt (and, while
    stats are on, run_time_ns) grows, as a program attached somewhere would."""
    prog_test_run(fd, repeat)
