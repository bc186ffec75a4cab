"""Every BPF program on the host: kernel run statistics and the processes that own them."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from linnix_exporter import log
from linnix_exporter.kernel.bpf_objects import ObjectsReader, node_memory, program_map_memory
from linnix_exporter.kernel.bpf_syscall import (
    BpfError,
    ProgReader,
    RawProg,
    decode_name,
    prog_type_name,
)
from linnix_exporter.kernel.prog_iter import IterError
from linnix_exporter.snapshot import NodeMemory, Owner, ProgramStat

# pid -> (container_id, namespace, pod): kernel/attribution.py's Attributor.
Attribute = Callable[[int], tuple[str, str, str]]

_log = log.get("progstats")
_row = functools.partial(tuple.__new__, ProgramStat)

# readlink() of an fd holding a BPF program or link (fs/anon_inodes.c names).
_HOLDER_LINKS = ("anon_inode:bpf-prog", "anon_inode:bpf_link")


def scan_owners(proc: str = "/proc") -> dict[int, tuple[Owner, ...]]:
    """prog id -> processes holding a prog fd or a link fd to it.

    Reads /proc/PID/fdinfo only for fds whose link target says bpf-prog/bpf_link, so
    the cost is one readlink per fd on the host. Link holders count: an agent that
    keeps only the link fd (bpftop's iterator misses those) still owns the program.
    """
    owners: dict[int, set[Owner]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or a kernel thread we may not read
        comm: str | None = None
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") not in _HOLDER_LINKS:
                    continue
                with open(f"{proc}/{pid}/fdinfo/{fd}") as f:
                    prog_id = _prog_id_from_fdinfo(f.read())
            except OSError:
                continue
            if prog_id is None:
                continue
            if comm is None:
                comm = _comm(proc, pid)
            owners.setdefault(prog_id, set()).add(Owner(pid, comm))
    return {pid: tuple(sorted(o, key=lambda x: x.pid)) for pid, o in owners.items()}


def attribute_owners(
    owners: dict[int, tuple[Owner, ...]], attribute: Attribute
) -> dict[int, tuple[Owner, ...]]:
    """The same owners, each labelled with its container and pod (one lookup per pid)."""
    seen: dict[int, tuple[str, str, str]] = {}
    out = {}
    for prog_id, held in owners.items():
        labelled = []
        for o in held:
            where = seen.get(o.pid)
            if where is None:
                where = seen[o.pid] = attribute(o.pid)
            labelled.append(Owner(o.pid, o.comm, *where))
        out[prog_id] = tuple(labelled)
    return out


def _prog_id_from_fdinfo(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    return None


def _comm(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class ProgSource(Protocol):
    """Where raw program info comes from: bpf_syscall.ProgReader or prog_iter's reader."""

    def all(self) -> list[RawProg]: ...

    def close(self) -> None: ...


class ProgramStatsReader:
    """Reads all programs each tick; re-scans owners only when the program set changes
    or `owner_refresh` seconds have passed (the /proc walk costs more than the bpf()
    calls, and owners rarely change while a program lives). Kernel memory follows the
    owners' pace: a program's full name, JIT'd size and map ids are read once when it
    appears, every map's memlock at each owner scan (`memory` holds the node's totals)."""

    def __init__(
        self,
        owner_refresh: float = 60.0,
        source: ProgSource | None = None,
        attribute: Attribute | None = None,
    ) -> None:
        self._attribute = attribute
        self._objects = ObjectsReader()
        self._memlock: dict[int, int] = {}
        # id -> its maps' memlock from the last map read (a row rebuilt because the
        # program ran looks it up instead of summing again).
        self._map_memory: dict[int, int] = {}
        self._memory_error = ""
        self.memory: NodeMemory | None = None
        self._memory_for: frozenset[int] = frozenset()
        self._reader: ProgSource = source or ProgReader()
        self._owner_refresh = owner_refresh
        self._owners: dict[int, tuple[Owner, ...]] = {}
        self._owners_for: frozenset[int] = frozenset()
        self._owners_at = float("-inf")
        # id -> (tag bytes, full name, type name, tag hex, jited bytes, map ids): fixed
        # for a program's life.
        self._static: dict[int, tuple[bytes, str, str, str, int, tuple[int, ...]]] = {}
        # id -> (raw record, row built from it): reused while the record is unchanged.
        self._rows: dict[int, tuple[RawProg, ProgramStat]] = {}
        self._our_ids: frozenset[int] = frozenset()

    @property
    def method(self) -> str:
        return "syscall" if isinstance(self._reader, ProgReader) else "iterator"

    def read(self, ours: Iterable[int] = ()) -> tuple[ProgramStat, ...]:
        try:
            raws = self._reader.all()
        except IterError as e:
            # The iterator broke mid-run (it was checked at load): use the syscall path
            # from now on rather than fail every tick.
            _log.error("bpf iterator failed, reading programs with bpf() from now on", error=str(e))
            self._reader.close()
            self._reader = ProgReader()
            raws = self._reader.all()
        ids = frozenset([r[1] for r in raws])  # r[1] is the id
        now = time.monotonic()
        owners_changed = False
        if ids - self._owners_for or now - self._owners_at >= self._owner_refresh:
            owners_changed = True
            self._owners = scan_owners()
            if self._attribute is not None:
                self._owners = attribute_owners(self._owners, self._attribute)
            self._owners_for = ids
            self._owners_at = now
            self._memlock = self._read_memlock()
            self._map_memory = {}
        our_ids = frozenset(ours)
        if owners_changed or our_ids != self._our_ids:
            self._rows = {}  # labels changed: rebuild every row once
            self._our_ids = our_ids
        static = self._static
        owners = self._owners
        memlock = self._memlock
        map_memory = self._map_memory
        details = self._objects.details
        rows = self._rows
        no_owners: tuple[Owner, ...] = ()
        out: list[ProgramStat] = []
        append = out.append
        # The hot loop with 1,000 programs. Most programs are idle between ticks: when a
        # program's raw record is unchanged, the immutable row built from it last tick
        # is reused (one dict lookup and one C-level tuple compare). Otherwise the row is
        # built with tuple.__new__, skipping NamedTuple's Python-level argument handling.
        for raw in raws:
            pid = raw[1]
            prev = rows.get(pid)
            if prev is not None and prev[0] == raw:
                append(prev[1])
                continue
            ptype, _, tag, load, name, rt, cnt, misses = raw
            st = static.get(pid)
            if st is None or st[0] != tag:
                full, jited, maps = details(pid, tag, decode_name(name))
                st = (tag, full, prog_type_name(ptype), tag.hex(), jited, maps)
                static[pid] = st
            mem = map_memory.get(pid)
            if mem is None:
                mem = map_memory[pid] = program_map_memory(st[5], memlock)
            row = _row(
                (
                    pid,
                    st[1],
                    st[2],
                    st[3],
                    load,
                    rt,
                    cnt,
                    misses,
                    pid in our_ids,
                    owners.get(pid, no_owners),
                    st[4],
                    st[5],
                    mem,
                )
            )
            rows[pid] = (raw, row)
            append(row)
        if len(static) > 2 * len(raws) + 64:  # forget unloaded programs
            self._static = {k: v for k, v in static.items() if k in ids}
            self._rows = {k: v for k, v in rows.items() if k in ids}
            self._map_memory = {k: v for k, v in map_memory.items() if k in ids}
        if owners_changed:
            self._objects.forget_except(ids)
        if owners_changed or ids != self._memory_for:
            # Program sums follow every change of the set (an unload triggers no owner
            # scan); the maps' memlock is the one read at the last scan.
            self._memory_for = ids
            self.memory = None if self._memory_error else node_memory(memlock, out)
        return tuple(out)

    def _read_memlock(self) -> dict[int, int]:
        """Every map's memlock; on failure the node's memory is unknown, not zero."""
        try:
            got = self._objects.map_memory()
        except (BpfError, OSError) as e:
            if str(e) != self._memory_error:
                _log.error("reading BPF map memory failed", error=str(e))
            self._memory_error = str(e)
            return {}
        self._memory_error = ""
        return got

    def close(self) -> None:
        self._reader.close()
