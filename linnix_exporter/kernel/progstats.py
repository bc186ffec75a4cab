"""Every BPF program on the host: kernel run statistics and the processes that own them."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar, cast

from linnix_exporter import log
from linnix_exporter.collectors.owners import OwnerSource
from linnix_exporter.collectors.programs import ProgramSource
from linnix_exporter.kernel.bpf_objects import (
    ObjectsReader,
    jit_limit,
    node_memory,
    program_map_memory,
)
from linnix_exporter.kernel.bpf_syscall import (
    BpfError,
    ProgReader,
    RawProg,
    decode_name,
    prog_type_name,
)
from linnix_exporter.kernel.prog_iter import IterError
from linnix_exporter.prog_table import Alignment, Layout, ProgramTable, RawTable, align
from linnix_exporter.snapshot import NodeMemory, Owner, OwnerMap, ProgramStat
from linnix_exporter.tick import OWNERS, PROGRAMS

# pid -> (container_id, namespace, pod): kernel/attribution.py's Attributor.
Attribute = Callable[[int], tuple[str, str, str]]

T = TypeVar("T")

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


class ProgramReads:
    """The "programs" collector: every program's raw stats, from the BPF iterator if
    one was loaded, else (or once it breaks) from bpf() syscalls."""

    def __init__(self, source: ProgSource | None = None) -> None:
        self._reader: ProgSource = source or ProgReader()

    @property
    def method(self) -> str:
        return "syscall" if isinstance(self._reader, ProgReader) else "iterator"

    def read(self) -> RawTable:
        try:
            return self._table()
        except IterError as e:
            # The iterator broke mid-run (it was checked at load): use the syscall path
            # from now on rather than fail every tick.
            _log.error("bpf iterator failed, reading programs with bpf() from now on", error=str(e))
            self._reader.close()
            self._reader = ProgReader()
            return self._table()

    def _table(self) -> RawTable:
        # The iterator hands its records over as read, the syscall reader packs them as
        # it reads; another source's RawProg list is packed here.
        r = self._reader
        if isinstance(r, ProgReader):
            return RawTable(r.records())
        table = getattr(r, "table", None)
        return table() if table is not None else RawTable.from_raws(r.all())

    def close(self) -> None:
        self._reader.close()


class OwnerScanner:
    """The "owners" collector: prog id -> holders, re-scanned only when due.

    A scan is due when `refresh` seconds have passed, or when programs appeared that the
    last scan did not cover, but never before the CPU budget allows: a scan walks every
    fd on the host (the owners iterator takes ~0.25 us of kernel time per fd: ~50 ms on
    a node with 200,000 fds; the /proc walk ~1 s), so after a scan that took c seconds
    of CPU the next waits at least c / `budget`; the read of every map's memory that
    follows a scan is charged the same way (`charge`). On a small host (a scan of
    ~0.2 ms, a few dozen maps) that is a few seconds; on
    a big one under program churn, owner labels lag by minutes instead of the scans
    taking a share of a core. Between scans the same mapping object is returned, so
    callers can tell by identity that nothing changed. `scan` is the walk itself:
    scan_owners (/proc) or the in-kernel task_file iterator; `cpu` is the clock its cost
    is measured on (this thread's CPU: the iterator runs inside our read()); `attribute`
    labels each owner with its container and pod (kernel/attribution.py)."""

    def __init__(
        self,
        refresh: float = 60.0,
        scan: Callable[[], dict[int, tuple[Owner, ...]]] = scan_owners,
        budget: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        close: Callable[[], None] | None = None,
        cpu: Callable[[], float] = time.thread_time,
        attribute: Attribute | None = None,
    ) -> None:
        self._attribute = attribute
        self._refresh = refresh
        self._budget = budget
        self._scan = scan
        self._clock = clock
        self._cpu = cpu
        self._close = close
        self._owners: OwnerMap = {}
        self._covered: frozenset[int] = frozenset()
        self._at = float("-inf")
        self._not_before = float("-inf")
        self.scans = 0
        self.last_scan_cpu = 0.0

    def due(self, ids: frozenset[int]) -> bool:
        now = self._clock()
        if now < self._not_before:
            return False
        return now - self._at >= self._refresh or not ids <= self._covered

    def read(self, ids: frozenset[int]) -> OwnerMap:
        if self.due(ids):
            at, started = self._clock(), self._cpu()
            try:
                owners = self._scan()
                if self._attribute is not None:
                    owners = attribute_owners(owners, self._attribute)
                self._owners = owners
                self._covered = ids
                self._at = at
                self.scans += 1
            finally:
                # A failing scan is retried, but after the budget's pause like any other.
                self.last_scan_cpu = self._cpu() - started
                self._not_before = at + self.last_scan_cpu / self._budget
        return self._owners

    def charge(self, seconds: float) -> None:
        """Work that follows a scan and belongs to the same refresh (every map's memlock,
        read by ProgramRows when new owners arrive: ~30 us per map, 0.1 s of CPU with
        3,000 maps) is paced by the same budget: the next scan waits for it too."""
        self.last_scan_cpu += seconds
        self._not_before += seconds / self._budget

    def close(self) -> None:
        if self._close is not None:
            self._close()


class ProgramRows:
    """Programs of a read as a ProgramTable (prog_table.py): the records as read,
    and a Layout with each program's labels, the ours flag, owners and kernel memory.
    The layout is rebuilt only when the program set (ids, tags, load times), the owners
    or our ids change: a tick in which programs merely ran builds no per-program object.
    Memory follows the owners' pace: a program's full name, JIT'd size and map ids are
    read once when it appears, every map's memlock whenever a new owner scan arrives
    (`memory` holds the node's totals, summed again whenever the program set changes)."""

    def __init__(self, on_memory_read: Callable[[float], None] | None = None) -> None:
        # Told the CPU each map-memory read took (OwnerScanner.charge: it is paced with
        # the owner scans it follows).
        self._on_memory_read = on_memory_read
        self._objects = ObjectsReader()
        self._memlock: dict[int, int] = {}
        # id -> its maps' memlock from the last map read.
        self._map_memory: dict[int, int] = {}
        self._memory_error = ""
        self.memory: NodeMemory | None = None
        # id -> (tag bytes, full name, type name, tag hex, jited bytes, map ids): fixed
        # for a program's life.
        self._static: dict[int, tuple[bytes, str, str, str, int, tuple[int, ...]]] = {}
        self._our_ids: frozenset[int] = frozenset()
        self._owners: OwnerMap | None = None
        self._layout: Layout | None = None

    def build(
        self, raws: RawTable | Iterable[RawProg], ours: frozenset[int], owners: OwnerMap
    ) -> ProgramTable:
        table = RawTable.of(raws)
        layout = self._layout
        if (
            layout is None
            or owners is not self._owners
            or ours != self._our_ids
            or layout.ident != table.ident
        ):
            layout = self._layout = self._new_layout(table, ours, owners)
        return ProgramTable(table.raw, layout)

    def _new_layout(self, table: RawTable, ours: frozenset[int], owners: OwnerMap) -> Layout:
        """Every program's template row (labels, owners, memory; counters zero). Runs
        when the set, the owners or our ids changed, not per tick; when only the set
        changed, programs the last layout had keep their template (a C-level lookup by
        (id, tag, load time)) and only new ones are built."""
        old = self._layout
        owners_changed = owners is not self._owners
        keep = old is not None and not owners_changed and ours == self._our_ids
        if owners_changed:
            started = time.thread_time()
            self._memlock = self._read_memlock()
            self._map_memory = {}
            if self._on_memory_read is not None:
                self._on_memory_read(time.thread_time() - started)
        self._our_ids, self._owners = ours, owners
        ids = table.id_set
        static, memlock, map_memory = self._static, self._memlock, self._map_memory
        details = self._objects.details
        no_owners: tuple[Owner, ...] = ()
        # Where each program was in the last layout (C-level, by id, then tag and load
        # time: a new program under an old id is a new one); the rates, the listing
        # and owners of this tick use the same alignment.
        n = len(table)
        alignment = align(old, table) if old is not None else None
        if keep and alignment is not None and old is not None:
            alignment.kept = True
            build = alignment.new
            templates: list[ProgramStat | None] = list(
                map((*old.templates, None).__getitem__, alignment.old_pos)
            )
        else:
            build = list(range(n))
            templates = [None] * n
        for pos in build:
            ptype, pid, tag, load, name, _, _, _ = table.record(pos)
            st = static.get(pid)
            if st is None or st[0] != tag:
                full, jited, maps = details(pid, tag, decode_name(name))
                st = (tag, full, prog_type_name(ptype), tag.hex(), jited, maps)
                static[pid] = st
            mem = map_memory.get(pid)
            if mem is None:
                mem = map_memory[pid] = program_map_memory(st[5], memlock)
            templates[pos] = _row(
                (
                    pid,
                    st[1],
                    st[2],
                    st[3],
                    load,
                    0,
                    0,
                    0,
                    pid in ours,
                    owners.get(pid, no_owners),
                    st[4],
                    st[5],
                    mem,
                )
            )
        built = cast(list[ProgramStat], templates)  # every position filled now
        if len(static) > 2 * len(ids) + 64:  # forget unloaded programs
            self._static = {k: v for k, v in static.items() if k in ids}
            self._map_memory = {k: v for k, v in map_memory.items() if k in ids}
        if owners_changed:
            self._objects.forget_except(ids)
        # Program sums follow every change of the set (an unload triggers no owner
        # scan); the maps' memlock is the one read at the last scan.
        if owners_changed or old is None or old.ident != table.ident or self.memory is None:
            if self._memory_error:
                self.memory = None
            elif alignment is not None and alignment.kept and self.memory is not None:
                self.memory = _memory_after(self.memory, alignment, built)
            else:
                self.memory = node_memory(memlock, built)
        return Layout(table, built, alignment, ours)

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


def _memory_after(memory: NodeMemory, al: Alignment, rows: list[ProgramStat]) -> NodeMemory:
    """node_memory's program sums after a change of the set whose other programs kept
    their rows (and so their memory): the sums before, less the programs gone, plus
    the new ones (few), instead of a pass over every program."""
    was = al.prev.templates
    gone = [was[p] for p in al.gone]
    new = [rows[p] for p in al.new]
    return memory._replace(
        jited_bytes=memory.jited_bytes
        + sum(p.jited_bytes for p in new)
        - sum(p.jited_bytes for p in gone),
        programs_map_memory_bytes=memory.programs_map_memory_bytes
        + sum(p.map_memory_bytes for p in new)
        - sum(p.map_memory_bytes for p in gone),
        programs_maps=memory.programs_maps
        + sum(len(p.map_ids) for p in new)
        - sum(len(p.map_ids) for p in gone),
        jit_limit_bytes=jit_limit(),
    )


class Collect(Protocol):
    """How ProgramPass runs each step: the daemon times each in its collector and lets
    it fail alone (state.Exporter); tools and tests call it straight (`direct`)."""

    def __call__(self, name: str, read: Callable[[], T], fallback: T, more: bool = False) -> T: ...


def direct(name: str, read: Callable[[], T], fallback: T, more: bool = False) -> T:
    """Each step called as is: an error reaches the caller."""
    return read()


class ProgramPass:
    """The one programs -> owners -> rows composition, the daemon's and the tools':
    every program's raw stats (`programs`, the "programs" collector), their holders
    (`owners`, the "owners" collector, only when programs were read), then the rows
    (ProgramRows: details and map memory, more of the "programs" collector's time)."""

    def __init__(self, programs: ProgramSource, owners: OwnerSource) -> None:
        self.programs, self.owners = programs, owners
        # Map-memory reads follow owner scans and are paced with them (OwnerScanner).
        self._rows = ProgramRows(getattr(owners, "charge", None))
        self.owner_map: OwnerMap = {}
        self._last_table: RawTable | None = None

    @property
    def memory(self) -> NodeMemory | None:
        return self._rows.memory

    def read(
        self,
        ours: frozenset[int] = frozenset(),
        collect: Collect = direct,
        then: Callable[[], None] = lambda: None,
    ) -> tuple[RawTable | None, ProgramTable | None]:
        """(the raw read, the rows); None where its collector failed or is off. `then`
        runs right after the raw read, before owners and rows: the daemon reads the
        tick's clocks there, so the counters' boot time is the one they were read at."""
        raws = collect(PROGRAMS, self.programs.read, None)
        then()
        if raws is None:
            return None, None
        table = RawTable.of(raws)
        last = self._last_table
        if last is not None:
            table.share_ids(last)  # the same programs: their ids and set as last time
        self._last_table = table
        ids = table.id_set
        self.owner_map = collect(OWNERS, lambda: self.owners.read(ids), self.owner_map)
        rows = collect(
            PROGRAMS, lambda: self._rows.build(table, ours, self.owner_map), None, more=True
        )
        return table, rows

    def rows(self, ours: frozenset[int] = frozenset()) -> ProgramTable:
        """The rows, every step called straight (the tools and tests: an error reaches
        the caller)."""
        _, rows = self.read(ours)
        assert rows is not None  # `direct` never falls back
        return rows

    def close(self) -> None:
        self.programs.close()
        self.owners.close()
