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
from typing import NamedTuple

# The record type lives with the data model; re-exported for the kernel readers.
from linnix_exporter import prog_table
from linnix_exporter.snapshot import RawProg as RawProg

_SYS_BPF = 321  # x86_64

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_TASK_FD_QUERY = 20
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

# enum bpf_prog_type, include/uapi/linux/bpf.h (order is ABI).
PROG_TYPES = (
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
# The same function without argtypes, for the per-program loop: called with prebuilt
# ctypes arguments it skips the conversions (1.3 instead of 1.9 us a call here).
_raw_syscall = _libc["syscall"]
_raw_syscall.restype = ctypes.c_long


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


# struct bpf_prog_info (uapi ABI offsets): type@0 id@4 tag@8 load_time@40 name@64
# run_time_ns@192 run_cnt@200 recursion_misses@208 (5.12+). One Struct reads them all.
_INFO_SIZE = 232
_INFO = struct.Struct("<II8s24xQ16x16s112xQQQ")
# The same fields as one fixed 64-byte record (RawProg order), as bpf/prog_stats_iter.c
# writes them: what a read of every program hands the tick.
RECORD = prog_table.RECORD


# Words of struct bpf_prog_info (u64 offsets) that make up a RECORD, in its order:
# type|id, tag, load_time, name[2], run_time_ns, run_cnt, recursion_misses.
_INFO_WORDS = _INFO_SIZE // 8
_RECORD_FROM_INFO = (0, 1, 5, 8, 9, 24, 25, 26)


def info_records(infos: memoryview | bytes) -> bytes:
    """Whole bpf_prog_info structs (_INFO_SIZE bytes each, back to back) as RECORD
    bytes: eight strided copies of u64 words, whatever the number of programs."""
    src = memoryview(infos).cast("Q")
    n = len(src) // _INFO_WORDS
    out = bytearray(n * prog_table.RECORD_SIZE)
    dst = memoryview(out).cast("Q")
    for word, at in enumerate(_RECORD_FROM_INFO):
        dst[word :: prog_table.WORDS] = src[at::_INFO_WORDS]
    return bytes(out)


def prog_type_name(ptype: int) -> str:
    return PROG_TYPES[ptype] if ptype < len(PROG_TYPES) else f"type_{ptype}"


def decode_name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


_ZERO_INFO = bytes(_INFO_SIZE)


def _pinned(size: int) -> tuple[bytearray, int, ctypes.Array[ctypes.c_char]]:
    """A zeroed bytearray, its address, and the ctypes view that keeps it from moving."""
    buf = bytearray(size)
    view = (ctypes.c_char * size).from_buffer(buf)
    return buf, ctypes.addressof(view), view


class ProgReader:
    """Reads loaded programs' info: GET_FD_BY_ID + OBJ_GET_INFO_BY_FD + close each.

    This is the hot loop of a collection (budget: 5 us per program with 1,000 loaded),
    so buffers and attrs are allocated once, fields come out of one Struct, and known
    ids are re-read directly: the kernel allocates program ids cyclically upwards, so
    only ids above the highest one seen need a GET_NEXT_ID walk. A full walk still
    runs every `full_walk_every` reads as a safety net.
    """

    def __init__(self, full_walk_every: int = 30) -> None:
        # bytearrays (zeroed by slice assignment, read by struct) pinned under ctypes views
        # for their addresses: ~10x cheaper per call than ctypes.memset on a ctypes buffer.
        self._id_attr, self._id_addr, self._id_view = _pinned(_ATTR_SIZE)
        self._info_attr, self._info_attr_addr, self._info_attr_view = _pinned(_ATTR_SIZE)
        self._info, self._info_addr, self._info_view = _pinned(_INFO_SIZE)
        self._known: list[int] = []
        self._high = 0
        self._reads = 0
        self._full_every = full_walk_every

    def next_id(self, start: int) -> int | None:
        """The next program id after `start`, or None at the end."""
        struct.pack_into("III", self._id_attr, 0, start, 0, 0)
        if _syscall(_SYS_BPF, BPF_PROG_GET_NEXT_ID, self._id_addr, _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(err, f"BPF_PROG_GET_NEXT_ID: {os.strerror(err)}")
        return int(struct.unpack_from("I", self._id_attr, 4)[0])

    def open(self, prog_id: int) -> int:
        """An fd for the program, or -1 if it is gone (ENOENT)."""
        struct.pack_into("III", self._id_attr, 0, prog_id, 0, 0)
        fd = int(_syscall(_SYS_BPF, BPF_PROG_GET_FD_BY_ID, self._id_addr, _ATTR_SIZE))
        if fd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return -1
            raise BpfError(err, f"BPF_PROG_GET_FD_BY_ID({prog_id}): {os.strerror(err)}")
        return fd

    def info(self, fd: int) -> RawProg:
        # Zero the info buffer: the kernel reads array lengths/pointers from it.
        self._info[:] = _ZERO_INFO
        struct.pack_into("IIQ", self._info_attr, 0, fd, _INFO_SIZE, self._info_addr)
        if _syscall(_SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, self._info_attr_addr, _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            raise BpfError(err, f"BPF_OBJ_GET_INFO_BY_FD: {os.strerror(err)}")
        return RawProg._make(_INFO.unpack_from(self._info))

    def info_by_id(self, prog_id: int) -> RawProg | None:
        """Info for one program id, or None if it was unloaded meanwhile."""
        fd = self.open(prog_id)
        if fd < 0:
            return None
        try:
            return self.info(fd)
        finally:
            # Close at once: holding a foreign program's fd would keep it alive.
            os.close(fd)

    def records(self) -> bytes:
        """Every program loaded now, in id order, as RECORD bytes (the iterator's
        layout): the same as all() without a Python object per program. Per program
        the loop only makes the two bpf() calls (prebuilt ctypes arguments) and the
        close: the kernel writes each bpf_prog_info into its own slot of one zeroed
        buffer, and the records are cut out of it afterwards by strided copies
        (info_records), C-level."""
        ids = self._ids()
        if not ids:
            self._remember(ids, [])
            return b""
        infos = bytearray(len(ids) * _INFO_SIZE)  # zeroed: the kernel reads lengths/pointers
        view = (ctypes.c_char * len(infos)).from_buffer(infos)  # pins it
        base = ctypes.addressof(view)
        call, close, pack_into = _raw_syscall, os.close, struct.pack_into
        nr, size = ctypes.c_long(_SYS_BPF), ctypes.c_long(_ATTR_SIZE)
        get_fd, get_info = (
            ctypes.c_long(BPF_PROG_GET_FD_BY_ID),
            ctypes.c_long(BPF_OBJ_GET_INFO_BY_FD),
        )
        id_addr, info_addr = ctypes.c_void_p(self._id_addr), ctypes.c_void_p(self._info_attr_addr)
        id_attr, info_attr = self._id_attr, self._info_attr
        known: list[int] = []
        slot = base
        for pid in ids:
            pack_into("I", id_attr, 0, pid)
            fd = call(nr, get_fd, id_addr, size)
            if fd < 0:
                err = ctypes.get_errno()
                if err == errno.ENOENT:
                    continue  # unloaded since the id walk: its slot is reused
                raise BpfError(err, f"BPF_PROG_GET_FD_BY_ID({pid}): {os.strerror(err)}")
            try:
                pack_into("IIQ", info_attr, 0, fd, _INFO_SIZE, slot)
                if call(nr, get_info, info_addr, size) < 0:
                    err = ctypes.get_errno()
                    raise BpfError(err, f"BPF_OBJ_GET_INFO_BY_FD: {os.strerror(err)}")
            finally:
                close(fd)  # at once: holding a foreign program's fd keeps it alive
            known.append(pid)
            slot += _INFO_SIZE
        self._remember(ids, known)
        del view
        return info_records(memoryview(infos)[: len(known) * _INFO_SIZE])

    def close(self) -> None:
        """Nothing to release (fds are closed as soon as read); for the ProgSource API."""

    def _walk(self, start: int) -> list[int]:
        ids = []
        while (nxt := self.next_id(start)) is not None:
            ids.append(nxt)
            start = nxt
        return ids

    def all(self) -> list[RawProg]:
        """Every program loaded now, in id order. Programs unloaded mid-read are skipped."""
        ids = self._ids()
        out: list[RawProg] = []
        append = out.append
        info_by_id = self.info_by_id
        for pid in ids:
            raw = info_by_id(pid)
            if raw is not None:
                append(raw)
        self._remember(ids, [r.id for r in out])
        return out

    def _ids(self) -> list[int]:
        if self._reads % self._full_every == 0:
            ids = self._walk(0)
        else:
            ids = self._known + self._walk(self._high)
        self._reads += 1
        return ids

    def _remember(self, walked: list[int], read: list[int]) -> None:
        self._known = read
        if walked:
            self._high = max(self._high, walked[-1])


def prog_id_of_fd(fd: int) -> int:
    """The kernel id of a program we hold an fd for."""
    return ProgReader().info(fd).id


# mov64 r0, 0 ; exit. Two instructions of bytecode: the smallest program the verifier
# takes, so a test run of it measures the kernel's per-run path, not a program body.
_TRIVIAL_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_TRIVIAL_BUF = ctypes.create_string_buffer(_TRIVIAL_INSNS, len(_TRIVIAL_INSNS))
_GPL = ctypes.create_string_buffer(b"GPL")
BPF_PROG_TYPE_SOCKET_FILTER = 1


def prog_load_attr(
    prog_type: int, code: ctypes.Array[ctypes.c_char], lic: ctypes.Array[ctypes.c_char], name: str
) -> ctypes.Array[ctypes.c_char]:
    """A BPF_PROG_LOAD attr: prog_type, insn_cnt, insns, license, and prog_name[16] at
    offset 48. `code` and `lic` must outlive the load; callers add the rest (log level,
    attach type) before _bpf(BPF_PROG_LOAD, attr)."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    insns = len(code) // 8  # ctypes string buffers made with an explicit length
    struct.pack_into("<IIQQ", a, 0, prog_type, insns, ctypes.addressof(code), ctypes.addressof(lic))
    struct.pack_into("16s", a, 48, name.encode()[:15])
    return a


def load_trivial_prog(name: str) -> int:
    """Load `r0 = 0; exit` as a socket filter that is never attached; returns its fd
    (close it to unload). Runs only when asked to by BPF_PROG_TEST_RUN."""
    a = prog_load_attr(BPF_PROG_TYPE_SOCKET_FILTER, _TRIVIAL_BUF, _GPL, name)
    return _bpf(BPF_PROG_LOAD, a)


_PACKET = ctypes.create_string_buffer(64)  # a socket filter's test input: >= ETH_HLEN bytes


def prog_test_run(fd: int, repeat: int) -> int:
    """BPF_PROG_TEST_RUN of a socket filter `repeat` times in the kernel; returns the
    kernel's own mean ns per run (attr.test.duration: its loop time / repeat, time spent
    rescheduled left out)."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
    struct.pack_into("IIIIQQI", a, 0, fd, 0, 64, 0, ctypes.addressof(_PACKET), 0, repeat)
    _bpf(BPF_PROG_TEST_RUN, a)
    return int(struct.unpack_from("I", a, 36)[0])


# enum bpf_task_fd_type
BPF_FD_TYPE_RAW_TRACEPOINT = 0
BPF_FD_TYPE_TRACEPOINT = 1


class TaskFd(NamedTuple):
    """What BPF_TASK_FD_QUERY tells of one attachment fd of a process."""

    prog_id: int
    fd_type: int  # enum bpf_task_fd_type (BPF_FD_TYPE_*)
    name: bytes  # tracepoint name, kprobe function or uprobe file (may be empty)
    probe_offset: int  # kprobe/uprobe offset
    probe_addr: int  # kprobe address when no function name


class AttachQuery:
    """BPF_TASK_FD_QUERY: which program the kernel runs through an attachment fd of a
    process (a perf event: tracepoint, kprobe, uprobe; or a raw-tracepoint link), and
    where. What `bpftool perf show` shows; one syscall per fd, buffers made once."""

    _NAME_LEN = 4096  # PATH_MAX: a uprobe's file path

    def __init__(self) -> None:
        self._attr, self._attr_addr, self._attr_view = _pinned(_ATTR_SIZE)
        self._name, self._name_addr, self._name_view = _pinned(self._NAME_LEN)
        self._pid = os.getpid()

    def task_fd(self, pid: int, fd: int) -> TaskFd | None:
        """The attachment behind fd `fd` of process `pid`, or None when the fd is no
        attachment (closed, another file, no program) or the process is gone."""
        attr = self._attr
        attr[:] = bytes(_ATTR_SIZE)
        # struct { u32 pid, fd, flags, buf_len; u64 buf; u32 prog_id, fd_type;
        #          u64 probe_offset, probe_addr; }
        struct.pack_into("IIIIQ", attr, 0, pid, fd, 0, self._NAME_LEN, self._name_addr)
        if _syscall(_SYS_BPF, BPF_TASK_FD_QUERY, self._attr_addr, _ATTR_SIZE) < 0:
            return None
        (name_len,) = struct.unpack_from("I", attr, 12)
        prog_id, fd_type, offset, addr = struct.unpack_from("IIQQ", attr, 24)
        name = bytes(self._name[: min(name_len, self._NAME_LEN)]).split(b"\0", 1)[0]
        return TaskFd(prog_id, fd_type, name, offset, addr)

    def query(self, fd: int) -> tuple[int, int, bytes] | None:
        """(prog_id, fd_type, tracepoint name) for an attachment fd of this process."""
        got = self.task_fd(self._pid, fd)
        return None if got is None else (got.prog_id, got.fd_type, got.name)


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


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    return _parse_cpu_list(_read("/sys/devices/system/cpu/possible"))


def cpu_id_limit() -> int:
    """Highest possible CPU id + 1 (the kernel's nr_cpu_ids): bpf_get_smp_processor_id()
    is always below it."""
    text = _read("/sys/devices/system/cpu/possible")
    return max(int(part.rpartition("-")[2]) for part in text.split(",") if part) + 1


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


# ---- batch map reads ----------------------------------------------------------------

BPF_MAP_LOOKUP_BATCH = 24


def map_lookup_batch(
    fd: int, in_batch: int | None, out_batch: int, keys: int, values: int, count: int
) -> tuple[int, bool]:
    """One BPF_MAP_LOOKUP_BATCH call: (elements copied, whether the map's end was reached).

    Every argument after `fd` is the address of a caller-owned buffer (ctypes.addressof),
    which must stay alive across the call:

    - `in_batch`: the position to resume from, None for the start of the map;
    - `out_batch`: where the kernel writes the position to pass as the next `in_batch`
      (a u32 bucket index for hash maps, a key for arrays: max(key_size, 8) bytes is
      enough for both, and it must not be the same buffer as `in_batch`);
    - `keys`, `values`: room for `count` keys and `count` values (a per-CPU value is
      round_up(value_size, 8) * possible CPUs bytes).

    The end of the map comes back as done=True, with the last elements (possibly none),
    not as an error. Raises BpfError otherwise; ENOSPC means a hash bucket holds more
    than `count` elements (the kernel returns buckets whole): retry from the same
    `in_batch` with bigger buffers.
    """
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # struct { u64 in_batch, out_batch, keys, values; u32 count, map_fd; u64 elem_flags,
    # flags; } batch;
    struct.pack_into("QQQQII", a, 0, in_batch or 0, out_batch, keys, values, count, fd)
    done = False
    try:
        _bpf(BPF_MAP_LOOKUP_BATCH, a)
    except BpfError as e:
        if e.errno != errno.ENOENT:
            raise
        done = True
    n: int = struct.unpack_from("I", a, 32)[0]
    return n, done
