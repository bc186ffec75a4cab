"""Roll-up of BPF programs by owner: who pays, process name and pod.

The rule: every program counts once, under ONE owner: the holder with the lowest pid
(scan_owners sorts them). A program held by several processes (a loader and the
children that inherited its fds, or an agent and a tool that opened it by id) is
never counted twice, and the lowest pid is the one that was there first in all but
pid-wraparound cases: usually the loader. A program no process holds (pinned in bpffs,
or attached and left by its loader) counts under owner_comm="[none]". Owners are keyed
by (owner_comm, namespace, pod): the processes of one agent in one pod add up.

Counters count run time since the exporter started, from the same per-program deltas
as linnix_bpf_run_time_seconds_total (rates.py): all owners' counters add up to that
node counter, and the owners' ratios, "[other]" included, to linnix_bpf_cpu_ratio at
every tick. A program's history before it was first measured is not in them (its own
series shows it). Hook seconds (what reaching the owner's programs through their hooks
cost, rates.hooks_over) ride along the same rule and add up to
linnix_bpf_hook_seconds_total; owners are still ranked by run time.

The listed owners are bounded like programs (topk.py): the `limit` largest by run time
keep their own counters, the rest add up in owner_comm="[other]".
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any

from linnix_exporter.prog_table import Layout, ProgramTable
from linnix_exporter.rates import Rates, TableDeltas
from linnix_exporter.snapshot import NodeMemory, Owner, ProgramStat
from linnix_exporter.topk import TopKAccumulator

OwnerKey = tuple[str, str, str]  # (owner_comm, namespace, pod)
UNOWNED = "[none]"
UNOWNED_KEY: OwnerKey = (UNOWNED, "", "")
_EMPTY: Mapping[OwnerKey, int] = MappingProxyType({})
_RUN_TIME = itemgetter(0)  # ProgramDelta.run_time_ns
_SECOND = itemgetter(1)
_OWNERS, _MAP_IDS, _JITED, _ID = (
    attrgetter("owners"),
    attrgetter("map_ids"),
    attrgetter("jited_bytes"),
    attrgetter("id"),
)


def _total(picked: int | tuple[int, ...]) -> int:
    """itemgetter of one position gives the value, of several a tuple."""
    return picked if isinstance(picked, int) else sum(picked)


def owner_key(p: ProgramStat) -> OwnerKey:
    """The owner a program is counted under (see the module's rule)."""
    return _owner_of(p.owners)


def _owner_of(owners: tuple[Owner, ...]) -> OwnerKey:
    if not owners:
        return (UNOWNED, "", "")
    o = owners[0]  # lowest pid
    return (o.comm, o.namespace, o.pod)


def owner_keys(
    programs: Sequence[ProgramStat], cache: dict[int, tuple[object, OwnerKey]] | None = None
) -> list[OwnerKey]:
    """owner_key of every program. Programs' holder tuples come from one owner scan and
    stay the same objects until the next, so they are told apart by identity (an Owner
    hashes in Python: hashing one per program cost ~40 us per program cold), and
    `cache`, kept by the caller, remembers each tuple's key (with the tuple, so its id
    is not reused) across calls: after the first, this is C-level."""
    cache = {} if cache is None else cache
    held = list(map(_OWNERS, programs))
    ids = list(map(id, held))
    for i in compress(range(len(ids)), map(operator.not_, map(cache.__contains__, ids))):
        cache[ids[i]] = (held[i], _owner_of(held[i]))
    return list(map(_SECOND, map(cache.__getitem__, ids)))


def group_positions(keys: list[OwnerKey]) -> dict[OwnerKey, list[int]]:
    """Positions of each owner's programs, in order, picked at C level: each key as a
    small int (one hash per program), a stable sort of the positions by it (near
    linear: an owner's programs mostly hold consecutive ids), cut by each owner's
    count. A few passes, whatever the number of owners."""
    distinct = dict.fromkeys(keys)
    n = len(keys)
    if len(distinct) == 1:
        return {k: list(range(n)) for k in distinct}
    code = dict(zip(distinct, range(len(distinct)), strict=True))
    codes = list(map(code.__getitem__, keys))
    order = sorted(range(n), key=codes.__getitem__)
    counts = Counter(codes)
    out: dict[OwnerKey, list[int]] = {}
    at = 0
    for k, i in code.items():
        out[k] = order[at : at + counts[i]]
        at += counts[i]
    return out


@dataclass(frozen=True, slots=True)
class OwnerView:
    run_time_ns: Mapping[OwnerKey, int]  # listed owners, accumulated since start
    rest_run_time_ns: int  # everything counted while not listed
    interval_ns: Mapping[OwnerKey, int]  # listed owners, last interval (no rates: empty)
    rest_interval_ns: int
    map_memory_bytes: Mapping[OwnerKey, int]  # listed owners; each map once per owner
    jited_bytes: Mapping[OwnerKey, int]
    rest_map_memory_bytes: int
    rest_jited_bytes: int
    # Listed owners' hook cost accumulated since start (ns); empty while the hooks
    # collector has priced nothing.
    hook_ns: Mapping[OwnerKey, int] = field(default_factory=dict)
    rest_hook_ns: int = 0


def memory_by_owner(
    programs: Sequence[ProgramStat],
    memlock: Mapping[int, int],
    groups: dict[OwnerKey, list[int]] | None = None,
) -> tuple[dict[OwnerKey, int], dict[OwnerKey, int]]:
    """(map memory, JIT'd bytes) per owner: a map used by several programs of one owner
    counts once for that owner. `groups`: group_positions of the programs' owners."""
    if groups is None:
        groups = group_positions(owner_keys(programs))
    maps = list(map(_MAP_IDS, programs))
    jited = list(map(_JITED, programs))
    mem_out: dict[OwnerKey, int] = {}
    jited_out: dict[OwnerKey, int] = {}
    for k, pos in groups.items():
        ids = set().union(*map(maps.__getitem__, pos))
        mem_out[k] = sum(map(memlock.get, ids, repeat(0)))
        jited_out[k] = sum(map(jited.__getitem__, pos))
    return mem_out, jited_out


class OwnerRollup:
    def __init__(self, limit: int) -> None:
        self._cum: dict[OwnerKey, int] = {}
        self._hook_cum: dict[OwnerKey, int] = {}
        self._limit = limit
        # (run time, hook ns) per owner, ranked by run time.
        self._top: TopKAccumulator[OwnerKey] = TopKAccumulator(
            width=2, limit=limit, score=_RUN_TIME
        )
        self._mem_for: tuple[NodeMemory | None, int] = (None, -1)
        self._mem: tuple[dict[OwnerKey, int], dict[OwnerKey, int]] = ({}, {})
        self._key_of: dict[int, OwnerKey] | None = {}
        self._key_rows: Sequence[ProgramStat] = ()
        self._key_groups: dict[OwnerKey, list[int]] = {}
        # Per layout (prog_table.py): each owner's positions, as one C-level
        # getter of their run times.
        self._groups_for: Layout | None = None
        self._groups: list[tuple[OwnerKey, itemgetter[Any]]] = []
        self._positions: dict[OwnerKey, list[int]] = {}
        self._key_cache: dict[int, tuple[object, OwnerKey]] = {}  # owner_keys'
        self._owner_keys: list[OwnerKey] = []  # per position of _groups_for

    def update(
        self, programs: Sequence[ProgramStat], rates: Rates | None, memory: NodeMemory | None
    ) -> OwnerView:
        cum = self._cum
        interval: dict[OwnerKey, int] = {}
        mem, jited = self._memory(programs, memory)
        if (
            rates is not None
            and rates.bpf_run_time_ns
            and isinstance(rates.programs, TableDeltas)
            and rates.programs.cur is programs
        ):
            # Per owner, the sum of its programs' run times now minus what each delta
            # counts from (the read before's, aligned by position), each a C-level pick
            # of the column: no step per program while the set is unchanged.
            # The owner with the most programs gets what the others leave of the node's
            # run time (the same deltas, summed by TableDeltas.sums): no pick for it.
            cur = rates.programs.cur
            now, then = cur.run_times(), rates.programs.run_time_before()
            groups = self._owner_groups(cur.layout)
            left = rates.bpf_run_time_ns
            for owner, pick in groups[1:]:
                ns = _total(pick(now)) - _total(pick(then))
                left -= ns
                if ns:
                    interval[owner] = interval.get(owner, 0) + ns
            if groups and left:
                interval[groups[0][0]] = interval.get(groups[0][0], 0) + left
            for owner, ns in interval.items():
                cum[owner] = cum.get(owner, 0) + ns
        elif rates is not None and rates.bpf_run_time_ns:  # else nothing ran: no owner grew
            # Only the programs that ran, picked at C level (this runs every tick, and
            # with 1,000 programs loaded most are idle): compress() keeps the (id, delta)
            # pairs whose run time grew. Each id's owner is fixed between memory reads
            # (owner scans); one missing (a read failed) is looked up from its row.
            deltas = rates.programs
            by_id: dict[int, ProgramStat] | None = None
            key_of = self._keys_by_id()
            for pid, d in compress(deltas.items(), map(_RUN_TIME, deltas.values())):
                k = key_of.get(pid) if memory is not None else None
                if k is None:
                    if by_id is None:
                        by_id = {p.id: p for p in programs}
                    k = owner_key(by_id[pid])
                interval[k] = interval.get(k, 0) + d.run_time_ns
            for k, ns in interval.items():
                cum[k] = cum.get(k, 0) + ns
        hook_cum = self._hook_cum
        if rates is not None and rates.program_hooks_ns:
            for pid, hook_ns in rates.program_hooks_ns.items():
                k = self._owner_of_id(pid, programs, memory)
                if k is not None:
                    hook_cum[k] = hook_cum.get(k, 0) + round(hook_ns)
                    cum.setdefault(k, 0)
        if len(cum) > 4 * self._limit + 1024:
            # Forget owners that hold nothing now; one that comes back restarts its
            # counter (the accumulator reads that as a reset and counts it whole).
            rows = programs.layout.templates if isinstance(programs, ProgramTable) else programs
            held = set(owner_keys(rows, self._key_cache))
            self._cum = cum = {k: v for k, v in cum.items() if k in held}
            self._hook_cum = hook_cum = {k: v for k, v in hook_cum.items() if k in held}
        view = self._top.update({k: (v, hook_cum.get(k, 0)) for k, v in cum.items()})
        listed = view.listed
        rest_interval = sum(v for k, v in interval.items() if k not in listed)
        return OwnerView(
            run_time_ns={k: v[0] for k, v in listed.items()},
            rest_run_time_ns=view.rest[0],
            interval_ns={k: interval.get(k, 0) for k in listed} if rates is not None else _EMPTY,
            rest_interval_ns=rest_interval,
            map_memory_bytes={k: mem.get(k, 0) for k in listed},
            jited_bytes={k: jited.get(k, 0) for k in listed},
            rest_map_memory_bytes=sum(v for k, v in mem.items() if k not in listed),
            rest_jited_bytes=sum(v for k, v in jited.items() if k not in listed),
            hook_ns={k: v[1] for k, v in listed.items()} if hook_cum else _EMPTY,
            rest_hook_ns=view.rest[1],
        )

    def _owner_of_id(
        self, prog_id: int, programs: Sequence[ProgramStat], memory: NodeMemory | None
    ) -> OwnerKey | None:
        """The owner a program id is counted under: fixed between owner scans (memory
        reads); else looked up from its row (None: not in this read)."""
        k = self._keys_by_id().get(prog_id) if memory is not None else None
        if k is not None:
            return k
        if isinstance(programs, ProgramTable):
            pos = programs.layout.index.get(prog_id)
            return None if pos is None else owner_key(programs.layout.templates[pos])
        for p in programs:
            if p.id == prog_id:
                return owner_key(p)
        return None

    def _keys_by_id(self) -> dict[int, OwnerKey]:
        """id -> owner key of the programs at the last memory read: made when the row
        path asks (rates without a table), not at each change of the set."""
        if self._key_of is None:
            rows = self._key_rows
            self._key_of = {}
            for k, pos in self._key_groups.items():
                self._key_of.update(dict.fromkeys(map(_ID, map(rows.__getitem__, pos)), k))
        return self._key_of

    def _owner_groups(self, layout: Layout) -> list[tuple[OwnerKey, itemgetter[Any]]]:
        if self._groups_for is not layout:
            if len(self._key_cache) > 4 * len(layout.templates) + 64:
                self._key_cache = {}  # tuples of past scans
            al = layout.alignment
            rows = layout.templates
            if al is not None and al.kept and al.prev is self._groups_for:
                # The rows kept are the last layout's: so are their owners' keys.
                was = [*self._owner_keys, UNOWNED_KEY]
                keys = list(map(was.__getitem__, al.old_pos))
                for p in al.new:
                    keys[p] = owner_key(rows[p])
            else:
                keys = owner_keys(rows, self._key_cache)
            self._owner_keys = keys
            self._positions = group_positions(keys)
            # The biggest group first (update() gives it the rest).
            by_size = sorted(self._positions.items(), key=lambda kv: -len(kv[1]))
            self._groups = [(k, itemgetter(*pos)) for k, pos in by_size]
            self._groups_for = layout
        return self._groups

    def _memory(
        self, programs: Sequence[ProgramStat], memory: NodeMemory | None
    ) -> tuple[dict[OwnerKey, int], dict[OwnerKey, int]]:
        """Recomputed only when the memory read changed: the reader makes a new
        NodeMemory whenever the program set changes and at each owner scan (the count
        is checked too, for when the read failed and there is none). Then every owner
        holding a program gets its counter, at 0 until it runs, so an owner with idle
        programs is listed like an idle program is."""
        if memory is not self._mem_for[0] or len(programs) != self._mem_for[1]:
            groups = None
            if isinstance(programs, ProgramTable):
                self._owner_groups(programs.layout)
                groups = self._positions
                programs = programs.layout.templates  # the same labels, no rows built
            else:
                groups = group_positions(owner_keys(programs, self._key_cache))
            memlock = memory.memlock_by_map if memory is not None else {}
            self._mem = memory_by_owner(programs, memlock, groups)
            self._mem_for = (memory, len(programs))
            self._key_of = None
            self._key_rows, self._key_groups = programs, groups
            for k in self._mem[1]:
                self._cum.setdefault(k, 0)
        if memory is None:
            return {}, {}
        return self._mem
