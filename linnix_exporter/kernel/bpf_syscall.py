"""The bpf() syscall through ctypes: enumerate programs, read their info, read maps.

Only what the exporter needs. bcc is deliberately not used here: the daemon never
imports it (LLVM would keep ~130 MB resident), see kernel/probes.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

_SYS_BPF = 321  # x86_64

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

# enum bpf_prog_type, include/uapi/linux/bpf.h (order is ABI).
PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit",
    "sock_ops", "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr",
    "lwt_seg6local", "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl",
    "raw_tracepoint_writable", "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm",
    "sk_lookup", "syscall", "netfilter",
)  # fmt: skip

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]


class BpfError(OSError):
    """A bpf() command failed; errno tells why."""


# union bpf_attr is 160+ bytes in recent kernels; the kernel checks that bytes past the
# part a command uses are zero, so every attr is a zeroed buffer of this size.
_ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = _syscall(_SYS_BPF, cmd, ctypes.addressof(attr), _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return int(ret)


# struct bpf_prog_info up to attach_btf_id (kernel 5.15+ layout; older kernels fill a
# prefix and report a smaller info_len, which we honour). Offsets are the uapi ABI.
_INFO_SIZE = 232
_OFF_TYPE, _OFF_ID, _OFF_TAG = 0, 4, 8
_OFF_LOAD_TIME, _OFF_UID, _OFF_NR_MAP_IDS, _OFF_MAP_IDS, _OFF_NAME = 40, 48, 52, 56, 64
_OFF_RUN_TIME, _OFF_RUN_CNT, _OFF_RECURSION = 192, 200, 208


@dataclass(frozen=True, slots=True)
class ProgInfo:
    """The fields of bpf_prog_info the exporter uses."""

    id: int
    type: str
    tag: str
    name: str
    load_time_ns: int  # CLOCK_BOOTTIME ns at load
    created_by_uid: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


class ProgReader:
    """Reads every loaded program's info with three syscalls per program.

    Buffers are allocated once and reused: with 1,000 programs the per-program cost is
    what the collection budget (5 us/program) is spent on.
    """

    def __init__(self) -> None:
        self._attr = ctypes.create_string_buffer(_ATTR_SIZE)
        self._info = ctypes.create_string_buffer(_INFO_SIZE)
        self._info_addr = ctypes.addressof(self._info)

    def next_id(self, start: int) -> int | None:
        """The next program id after `start`, or None at the end."""
        a = self._attr
        ctypes.memset(a, 0, _ATTR_SIZE)
        struct.pack_into("I", a, 0, start)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, a)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return int(struct.unpack_from("I", a, 4)[0])

    def open(self, prog_id: int) -> int:
        """An fd for the program; raises BpfError(ENOENT) if it just went away."""
        a = self._attr
        ctypes.memset(a, 0, _ATTR_SIZE)
        struct.pack_into("I", a, 0, prog_id)
        return _bpf(BPF_PROG_GET_FD_BY_ID, a)

    def info(self, fd: int) -> ProgInfo:
        a, buf = self._attr, self._info
        ctypes.memset(buf, 0, _INFO_SIZE)
        ctypes.memset(a, 0, _ATTR_SIZE)
        struct.pack_into("IIQ", a, 0, fd, _INFO_SIZE, self._info_addr)
        _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
        raw = buf.raw
        ptype, pid = struct.unpack_from("II", raw, _OFF_TYPE)
        run_time, run_cnt, recursion = struct.unpack_from("QQQ", raw, _OFF_RUN_TIME)
        name = raw[_OFF_NAME : _OFF_NAME + 16].split(b"\0", 1)[0]
        return ProgInfo(
            id=pid,
            type=PROG_TYPES[ptype] if ptype < len(PROG_TYPES) else f"type_{ptype}",
            tag=raw[_OFF_TAG : _OFF_TAG + 8].hex(),
            name=name.decode("utf-8", "replace"),
            load_time_ns=struct.unpack_from("Q", raw, _OFF_LOAD_TIME)[0],
            created_by_uid=struct.unpack_from("I", raw, _OFF_UID)[0],
            run_time_ns=run_time,
            run_cnt=run_cnt,
            recursion_misses=recursion,
        )

    def info_by_id(self, prog_id: int) -> ProgInfo | None:
        """Info for one program id, or None if it was unloaded meanwhile."""
        try:
            fd = self.open(prog_id)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        try:
            return self.info(fd)
        finally:
            # Close at once: holding a foreign program's fd would keep it alive.
            os.close(fd)

    def all(self) -> list[ProgInfo]:
        """Every program loaded now. Programs unloaded mid-walk are skipped."""
        out: list[ProgInfo] = []
        pid = 0
        while (nxt := self.next_id(pid)) is not None:
            pid = nxt
            info = self.info_by_id(pid)
            if info is not None:
                out.append(info)
        return out


def prog_id_of_fd(fd: int) -> int:
    """The kernel id of a program we hold an fd for."""
    return ProgReader().info(fd).id


def enable_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): stats stay on while the returned fd is open."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("I", a, 0, BPF_STATS_RUN_TIME)
    return _bpf(BPF_ENABLE_STATS, a)


# ---- maps ---------------------------------------------------------------------------

_OFF_MAP_KEY_SIZE, _OFF_MAP_VALUE_SIZE, _OFF_MAP_MAX, _OFF_MAP_NAME = 8, 12, 16, 24
_MAP_INFO_SIZE = 80


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    buf = ctypes.create_string_buffer(_MAP_INFO_SIZE)
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIQ", a, 0, fd, _MAP_INFO_SIZE, ctypes.addressof(buf))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    raw = buf.raw
    mtype, mid, ks, vs, mx = struct.unpack_from("IIIII", raw, 0)
    name = raw[_OFF_MAP_NAME : _OFF_MAP_NAME + 16].split(b"\0", 1)[0].decode("utf-8", "replace")
    return MapInfo(mtype, mid, ks, vs, mx, name)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Value bytes for key (for per-CPU maps pass round_up(size, 8) * possible CPUs)."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIQQQ", a, 0, fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, a)
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """All keys of a hash map (a key deleted mid-walk restarts nothing: it is skipped)."""
    keys: list[bytes] = []
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    first = True
    while True:
        ctypes.memset(a, 0, _ATTR_SIZE)
        key_addr = 0 if first else ctypes.addressof(cur)
        struct.pack_into("IIQQ", a, 0, fd, 0, key_addr, ctypes.addressof(nxt))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, a)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return keys
            raise
        keys.append(nxt.raw)
        ctypes.memmove(cur, nxt, key_size)
        first = False


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    return _parse_cpu_list(_read("/sys/devices/system/cpu/possible"))


def online_cpus() -> int:
    return _parse_cpu_list(_read("/sys/devices/system/cpu/online"))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _parse_cpu_list(text: str) -> int:
    """Count CPUs in a kernel cpu list such as '0-3,8,10-11'."""
    n = 0
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n
