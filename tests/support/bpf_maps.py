"""BPF maps made and filled with the raw bpf() syscall (no bcc), for tests of what the
kernel says about map memory. A map lives while its fd is open."""

from __future__ import annotations

import ctypes
import os
import struct

from linnix_exporter.kernel.bpf_syscall import _ATTR_SIZE, _bpf

BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM = 0, 2
PERCPU_KINDS = frozenset({5, 6, 10})  # a value per possible CPU


def possible_cpus() -> int:
    """Count of /sys/devices/system/cpu/possible ("0-1", "0,2-3")."""
    with open("/sys/devices/system/cpu/possible") as f:
        spans = f.read().strip().split(",")
    return sum(int(s.split("-")[-1]) - int(s.split("-")[0]) + 1 for s in spans)


def create(kind: int, key: int, value: int, entries: int, flags: int = 0) -> int:
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIIII", a, 0, kind, key, value, entries, flags)
    ctypes.memmove(ctypes.addressof(a) + 28, b"lnx_memtest", 11)  # map_name
    return _bpf(BPF_MAP_CREATE, a)


def update(fd: int, kind: int, key: bytes | None, value_size: int) -> None:
    """Store one element (key None: push, for queues, stacks and bloom filters)."""
    per = possible_cpus() if kind in PERCPU_KINDS else 1
    value = ctypes.create_string_buffer(b"\x01" * ((value_size + 7) // 8 * 8) * per)
    k = ctypes.create_string_buffer(key) if key is not None else None
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(
        "IIQQQ", a, 0, fd, 0, ctypes.addressof(k) if k is not None else 0,
        ctypes.addressof(value), 0,
    )  # fmt: skip
    _bpf(BPF_MAP_UPDATE_ELEM, a)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
