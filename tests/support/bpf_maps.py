"""BPF maps made and filled with the raw bpf() syscall (no bcc), for tests of what the
kernel says about map memory. A map lives while its fd is open."""

from __future__ import annotations

import ctypes
import os
import struct

from linnix_exporter.kernel.bpf_syscall import _ATTR_SIZE, _bpf, possible_cpus

BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM = 0, 2
PERCPU_KINDS = frozenset({5, 6, 10})  # a value per possible CPU


BPF_MAP_TYPE_ARRAY = 2


def create(
    kind: int, key: int, value: int, entries: int, flags: int = 0, name: str = "lnx_memtest"
) -> int:
    """A map (its fd) of `kind` with these sizes, flags and name (15 bytes at most)."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIIII", a, 0, kind, key, value, entries, flags)
    encoded = name.encode()[:15]
    ctypes.memmove(ctypes.addressof(a) + 28, encoded, len(encoded))  # map_name
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
