"""Load and attach trivial programs with bpf() and perf_event_open() directly: no bcc.

Hook calibration (kernel/hook_cost.py) and its tests need a program on a tracepoint, a
uprobe, a cgroup; the program is two instructions of bytecode (`r0 = N; exit`), so no
compiler and no LLVM are involved and the daemon can do it in-process.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from linnix_exporter.kernel.bpf_syscall import (
    _ATTR_SIZE,
    _GPL,
    BPF_PROG_LOAD,
    BpfError,
    _bpf,
    _libc,
    prog_load_attr,
)
from linnix_exporter.kernel.host import TRACEFS

BPF_PROG_TYPE_KPROBE = 2  # kprobes and uprobes
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_PROG_TYPE_TRACING = 26
BPF_LINK_CREATE = 28
BPF_TRACE_FENTRY = 24
BPF_CGROUP_INET_INGRESS = 0
BPF_PERF_EVENT = 41

_SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
_PERF_ATTR_SIZE = 136  # PERF_ATTR_SIZE_VER8
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"

# A libc handle of our own: bpf_syscall's sets syscall()'s argtypes for bpf() calls.
_own_libc = ctypes.CDLL(_libc._name, use_errno=True)
_ioctl = _own_libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_perf_syscall = _own_libc.syscall
_perf_syscall.restype = ctypes.c_long
_perf_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_ulong,
]


class AttachError(OSError):
    """A perf event could not be opened or a program not attached."""


def _insns(ret: int) -> ctypes.Array[ctypes.c_char]:
    code = struct.pack("<BBhi", 0xB7, 0, 0, ret) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    return ctypes.create_string_buffer(code, len(code))


def load_prog(
    prog_type: int,
    name: str,
    ret: int = 0,
    expected_attach_type: int = 0,
    attach_btf_id: int = 0,
) -> int:
    """Load `r0 = ret; exit` as a `prog_type` program; returns its fd (close to unload)."""
    code = _insns(ret)
    a = prog_load_attr(prog_type, code, _GPL, name)
    # expected_attach_type @68, attach_btf_id @108 (union bpf_attr, BPF_PROG_LOAD)
    struct.pack_into("I", a, 68, expected_attach_type)
    struct.pack_into("I", a, 108, attach_btf_id)
    return _bpf(BPF_PROG_LOAD, a)


def _perf_event_open(attr: ctypes.Array[ctypes.c_char], pid: int, cpu: int) -> int:
    fd = int(_perf_syscall(_SYS_PERF_EVENT_OPEN, attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise AttachError(err, f"perf_event_open: {os.strerror(err)}")
    return fd


def _perf_attr(
    ptype: int, config: int, config1: int = 0, config2: int = 0
) -> ctypes.Array[ctypes.c_char]:
    a = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    # type, size, config, sample_period; wakeup_events @48; config1 @56; config2 @64
    struct.pack_into("IIQQ", a, 0, ptype, _PERF_ATTR_SIZE, config, 1)
    struct.pack_into("I", a, 48, 1)
    struct.pack_into("QQ", a, 56, config1, config2)
    return a


def tracepoint_id(category: str, event: str, tracefs: Path = TRACEFS) -> int:
    with open(f"{tracefs}/events/{category}/{event}/id") as f:
        return int(f.read())


def open_tracepoint(category: str, event: str) -> int:
    """A perf event on a tracepoint (every process, CPU 0: a BPF program on it runs on
    every CPU, as bcc attaches)."""
    return _perf_event_open(_perf_attr(PERF_TYPE_TRACEPOINT, tracepoint_id(category, event)), -1, 0)


def _pmu_type(pmu: str) -> int:
    try:
        with open(f"{pmu}/type") as f:
            return int(f.read())
    except OSError as e:
        raise AttachError(e.errno or 0, f"no {os.path.basename(pmu)} PMU: {e}") from e


def open_uprobe(path: str, offset: int, pid: int = -1, retprobe: bool = False) -> int:
    """A perf event on a uprobe at `offset` of file `path` (pid -1: every process)."""
    cpath = ctypes.create_string_buffer(path.encode())
    # the retprobe bit is config:0 in the PMU's format/retprobe
    attr = _perf_attr(_pmu_type(UPROBE_PMU), int(retprobe), ctypes.addressof(cpath), offset)
    return _perf_event_open(attr, pid, 0 if pid == -1 else -1)


def kprobe_supported() -> bool:
    return os.path.exists(KPROBE_PMU)


def attach_perf(perf_fd: int, prog_fd: int) -> None:
    """Attach the program to the perf event and enable it (bcc's way: no bpf link)."""
    for req, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        if _ioctl(perf_fd, req, arg) < 0:
            err = ctypes.get_errno()
            raise AttachError(err, f"perf ioctl {req:#x}: {os.strerror(err)}")


def link_create(prog_fd: int, target_fd: int, attach_type: int, target_btf_id: int = 0) -> int:
    """BPF_LINK_CREATE; returns the link fd (closing it detaches)."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIII", a, 0, prog_fd, target_fd, attach_type, 0)
    if target_btf_id:
        struct.pack_into("I", a, 16, target_btf_id)
    return _bpf(BPF_LINK_CREATE, a)


def elf_symbol_offset(path: str, symbol: str) -> int:
    """File offset of a function symbol in an ELF file (what a uprobe is given), via
    .dynsym/.symtab and the section holding it: value - sh_addr + sh_offset."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise AttachError(0, f"{path}: not a 64-bit ELF file")
    shoff, shentsize, shnum = (
        struct.unpack_from("<Q", data, 0x28)[0],
        *struct.unpack_from("<HH", data, 0x3A),
    )
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    for _name, stype, _fl, _addr, off, size, link, _info, _al, entsize in sections:
        if stype not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        stroff = sections[link][4]
        for i in range(size // entsize):
            st_name, st_info, _o, shndx, value, _sz = struct.unpack_from(
                "<IBBHQQ", data, off + i * entsize
            )
            if st_info & 0xF != 2 or not value or shndx == 0 or shndx >= shnum:  # STT_FUNC
                continue
            end = data.index(b"\0", stroff + st_name)
            if data[stroff + st_name : end] == symbol.encode():
                sec = sections[shndx]
                return int(value - sec[3] + sec[4])
    raise AttachError(0, f"{path}: no function symbol {symbol!r}")


__all__ = ["AttachError", "BpfError"]
