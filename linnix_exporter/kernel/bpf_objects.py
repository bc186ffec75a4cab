"""What BPF holds in kernel memory, and programs' full names.

- Per program (fixed for its life, read once when it appears): JIT'd size
  (`jited_prog_len`, bpftool's bytes_jited), the ids of the maps it uses (`map_ids`),
  and its full name: the kernel keeps 15 characters; bpftool prints, for a name that
  long, the name of the program's function in its BTF (func info record 0), and so do we.
- Per map (read at each refresh: a hash map without preallocation grows with its
  elements): `memlock:` from the map fd's /proc/self/fdinfo, what bpftool map show prints
  as bytes_memlock and Inspektor Gadget sums per program.
- Per node: every map on the node counted once (maps held by no program included), the
  JIT'd size of every program, and net.core.bpf_jit_limit.

Every fd opened here is closed at once: holding a foreign program's or map's fd would
keep it alive after its owner let go.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import NamedTuple

from linnix_exporter.kernel.bpf_syscall import (
    _ATTR_SIZE,
    _SYS_BPF,
    BPF_OBJ_GET_INFO_BY_FD,
    BPF_PROG_GET_FD_BY_ID,
    BpfError,
    _syscall,
)
from linnix_exporter.kernel.btf import Btf, BtfError
from linnix_exporter.snapshot import NodeMemory, ProgramStat

BPF_MAP_GET_NEXT_ID = 12
BPF_MAP_GET_FD_BY_ID = 14
BPF_BTF_GET_FD_BY_ID = 19

KERNEL_NAME_MAX = 15  # BPF_OBJ_NAME_LEN - 1
JIT_LIMIT = "/proc/sys/net/core/bpf_jit_limit"

# struct bpf_prog_info offsets (uapi ABI).
_INFO_SIZE = 232
_OFF_JITED_LEN = 16
_OFF_NR_MAP_IDS, _OFF_MAP_IDS = 52, 56
_OFF_NAME = 64
_OFF_BTF_ID, _OFF_FINFO_REC_SIZE, _OFF_FINFO, _OFF_NR_FINFO = 128, 132, 136, 144
_FINFO_REC_SIZE = 8  # struct bpf_func_info { u32 insn_off; u32 type_id; }
# struct bpf_btf_info { u64 btf; u32 btf_size; u32 id; ... }
_BTF_INFO_SIZE = 32


class ProgDetails(NamedTuple):
    name: str  # full name as bpftool prints it
    jited_bytes: int
    map_ids: tuple[int, ...]


def full_name(kernel_name: str, btf_func_name: str | None) -> str:
    """bpftool's rule (get_prog_full_name): a kernel name shorter than 15 characters is
    whole; a 15-character one may be truncated, and the BTF function name replaces it."""
    if len(kernel_name) < KERNEL_NAME_MAX or not btf_func_name:
        return kernel_name
    return btf_func_name


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    ret = int(_syscall(_SYS_BPF, cmd, ctypes.addressof(attr), _ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


@contextlib.contextmanager
def _by_id(cmd: int, obj_id: int) -> Iterator[int | None]:
    """An fd for a program/map/BTF id (None if it is gone), closed on leaving."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("I", a, 0, obj_id)
    try:
        fd = _call(cmd, a)
    except BpfError as e:
        if e.errno != errno.ENOENT:
            raise
        fd = -1
    if fd < 0:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _info(fd: int, buf: ctypes.Array[ctypes.c_char]) -> None:
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIQ", a, 0, fd, len(buf), ctypes.addressof(buf))
    _call(BPF_OBJ_GET_INFO_BY_FD, a)


def _btf_blob(btf_id: int) -> bytes | None:
    with _by_id(BPF_BTF_GET_FD_BY_ID, btf_id) as fd:
        if fd is None:
            return None
        info = ctypes.create_string_buffer(_BTF_INFO_SIZE)
        _info(fd, info)
        size = struct.unpack_from("I", info, 8)[0]
        data = ctypes.create_string_buffer(size)
        info = ctypes.create_string_buffer(_BTF_INFO_SIZE)
        struct.pack_into("<QI", info, 0, ctypes.addressof(data), size)
        _info(fd, info)
        return data.raw


def _field(fdinfo: bytes, name: bytes, base: int = 10) -> int | None:
    """One `name:\tvalue` line of a map's fdinfo (None if the kernel prints none)."""
    key = b"\n" + name + b":"
    at = fdinfo.find(key)
    if at < 0:
        return None
    at += len(key)
    return int(fdinfo[at : fdinfo.index(b"\n", at)], base)


def _memlock(fdinfo: bytes) -> int:
    return _field(fdinfo, b"memlock") or 0


# Map types whose bytes_memlock (the kernel's map_mem_usage) is fixed when the map is
# made: arrays and fd arrays (max_entries x the element size), ring buffers (their
# pages), queues, stacks, bloom filters, stack traces (all preallocated), and the hash
# kinds unless made with BPF_F_NO_PREALLOC (a preallocated hash counts max_entries;
# without preallocation it counts the elements there now). Other types (LPM tries,
# local storage, arenas, ...) grow with their contents and are read at every map read.
# tests/test_bpf_objects.py checks each kind here, filled, against its fdinfo.
HASH_KINDS = frozenset({1, 5, 9, 10, 13})  # hash, percpu hash, lru, lru percpu, of maps
FIXED_KINDS = frozenset({2, 3, 4, 6, 7, 8, 12, 22, 23, 27, 30, 31}) | HASH_KINDS
BPF_F_NO_PREALLOC = 1


def memlock_is_fixed(fdinfo: bytes) -> bool:
    """Whether this map's memlock can never change (FIXED_KINDS)."""
    kind, flags = _field(fdinfo, b"map_type"), _field(fdinfo, b"map_flags", 16)
    if kind not in FIXED_KINDS or flags is None:
        return False
    return kind not in HASH_KINDS or not flags & BPF_F_NO_PREALLOC


def map_ids() -> list[int]:
    """Every map id on the node, ascending."""
    out: list[int] = []
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    start = 0
    while True:
        struct.pack_into("III", a, 0, start, 0, 0)
        if _syscall(_SYS_BPF, BPF_MAP_GET_NEXT_ID, ctypes.addressof(a), _ATTR_SIZE) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return out
            raise BpfError(err, f"BPF_MAP_GET_NEXT_ID: {os.strerror(err)}")
        start = struct.unpack_from("I", a, 4)[0]
        out.append(start)


def map_fdinfo(map_id: int) -> bytes | None:
    """The fdinfo text of one map (type, flags, memlock, ...), None if it is gone."""
    with _by_id(BPF_MAP_GET_FD_BY_ID, map_id) as fd:
        if fd is None:
            return None
        # os.open/os.read: a text-mode open() costs more than the three syscalls here.
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY)
        try:
            return os.read(info, 4096)
        finally:
            os.close(info)


def jit_limit(path: str = JIT_LIMIT) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class ObjectsReader:
    """Program details cached for each program's life (keyed by id and tag), map memory
    read on request. BTF blobs are parsed once per refresh and shared by the programs
    of one object file (they carry the same btf_id)."""

    def __init__(self) -> None:
        self._details: dict[int, tuple[bytes, ProgDetails]] = {}
        self._btfs: dict[int, Btf | None] = {}
        # map id -> memlock of the maps whose memlock cannot change (memlock_is_fixed):
        # read once in their life. Map ids are allocated cyclically up to 2^31, so an id
        # comes back only after two billion maps were made.
        self._fixed: dict[int, int] = {}

    def _func_name(self, btf_id: int, type_id: int) -> str | None:
        if btf_id not in self._btfs:
            try:
                blob = _btf_blob(btf_id)
                self._btfs[btf_id] = Btf(blob) if blob else None
            except (BpfError, BtfError):
                self._btfs[btf_id] = None
        btf = self._btfs[btf_id]
        return btf.func_name(type_id) if btf is not None else None

    def read_details(self, prog_id: int) -> ProgDetails | None:
        """Name, JIT'd size and maps of one program; None if it is gone."""
        with _by_id(BPF_PROG_GET_FD_BY_ID, prog_id) as fd:
            if fd is None:
                return None
            return self._read_details(fd)

    def _read_details(self, fd: int) -> ProgDetails:
        info = ctypes.create_string_buffer(_INFO_SIZE)
        _info(fd, info)
        jited = struct.unpack_from("I", info, _OFF_JITED_LEN)[0]
        nr_maps = struct.unpack_from("I", info, _OFF_NR_MAP_IDS)[0]
        name = info.raw[_OFF_NAME : _OFF_NAME + 16].split(b"\0", 1)[0].decode("utf-8", "replace")
        btf_id = struct.unpack_from("I", info, _OFF_BTF_ID)[0]
        nr_finfo = struct.unpack_from("I", info, _OFF_NR_FINFO)[0]
        want_func = len(name) >= KERNEL_NAME_MAX and btf_id and nr_finfo
        if not nr_maps and not want_func:
            return ProgDetails(name, jited, ())
        ids = (ctypes.c_uint32 * max(nr_maps, 1))()
        finfo = (ctypes.c_uint32 * 2)()
        info = ctypes.create_string_buffer(_INFO_SIZE)
        struct.pack_into("<IQ", info, _OFF_NR_MAP_IDS, nr_maps, ctypes.addressof(ids))
        if want_func:
            struct.pack_into("<I", info, _OFF_FINFO_REC_SIZE, _FINFO_REC_SIZE)
            struct.pack_into("<Q", info, _OFF_FINFO, ctypes.addressof(finfo))
            struct.pack_into("<I", info, _OFF_NR_FINFO, 1)
        _info(fd, info)
        # The kernel reports how many it has; it copied at most what we made room for.
        got = min(nr_maps, struct.unpack_from("I", info, _OFF_NR_MAP_IDS)[0])
        func = self._func_name(btf_id, finfo[1]) if want_func else None
        return ProgDetails(full_name(name, func), jited, tuple(sorted(ids[:got])))

    def details(self, prog_id: int, tag: bytes, kernel_name: str) -> ProgDetails:
        """Cached details; a program gone meanwhile keeps its kernel name, no memory."""
        hit = self._details.get(prog_id)
        if hit is not None and hit[0] == tag:
            return hit[1]
        try:
            got = self.read_details(prog_id)
        except BpfError:
            got = None
        if got is None:
            return ProgDetails(kernel_name, 0, ())
        self._details[prog_id] = (tag, got)
        return got

    def forget_except(self, live: Iterable[int]) -> None:
        keep = set(live)
        self._details = {k: v for k, v in self._details.items() if k in keep}
        self._btfs.clear()  # BTF objects die with their programs; re-read when asked

    def map_memory(self) -> dict[int, int]:
        """map id -> bytes_memlock for every map on the node now: the id walk, then the
        fdinfo of the maps new since the last read and of those whose memlock can move
        (a map read costs ~30 us, the walk ~1 us a map: 3,000 preallocated maps are a
        ~3 ms read after the first, not ~100 ms)."""
        out: dict[int, int] = {}
        fixed = self._fixed
        for mid in map_ids():
            mem = fixed.get(mid)
            if mem is None:
                try:
                    fdinfo = map_fdinfo(mid)
                except (BpfError, OSError):
                    fdinfo = None
                if fdinfo is None:
                    continue
                mem = _memlock(fdinfo)
                if memlock_is_fixed(fdinfo):
                    fixed[mid] = mem
            out[mid] = mem
        if fixed.keys() - out.keys():  # maps gone
            self._fixed = {m: v for m, v in fixed.items() if m in out}
        return out


def node_memory(memlock: dict[int, int], programs: Iterable[ProgramStat]) -> NodeMemory:
    # Column sums at C level: this runs whenever the program set changes.
    rows = programs if isinstance(programs, Sequence) else list(programs)
    jited = sum(map(attrgetter("jited_bytes"), rows))
    map_mem = sum(map(attrgetter("map_memory_bytes"), rows))
    maps = sum(map(len, map(attrgetter("map_ids"), rows)))
    return NodeMemory(
        sum(memlock.values()), len(memlock), jited, jit_limit(), memlock, map_mem, maps
    )


def program_map_memory(map_ids: Iterable[int], memlock: dict[int, int]) -> int:
    """A program's maps' memlock; a map gone since the last map read counts 0."""
    return sum(memlock.get(m, 0) for m in map_ids)
