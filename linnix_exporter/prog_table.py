"""Every program of one read as fixed-layout records, and rows built only when asked.

A tick with 2,000 programs that all ran costs what Python does per program (issue 20:
8.5 us per program cold, against a goal of 1). So the programs of a read stay as they
came: one `bytes` of 64-byte records (struct rec of bpf/prog_stats_iter.c, RawProg
order), and everything a tick needs from all of them is taken at C level: ids and the
identity columns as strided memoryview copies, run-time sums with `sum()` over a
strided view. What does not change between reads (names, types, owners, kernel memory:
a `Layout`) is built once per program set and owner scan, and a ProgramStat row is
made only for the programs a consumer looks at (the listed ones), cached per table.

- `RawTable`: the records of one read (iterator bytes as they are; the syscall path
  packs its RawProg list the same way) with their ids and identity bytes.
- `Layout`: per position, a template row (ProgramStat with zero counters) holding the
  labels, ours flag, owners and memory; the id -> position index; built by
  kernel/progstats.ProgramRows.
- `ProgramTable`: a RawTable's records with a Layout: a Sequence[ProgramStat] (rows on
  demand) with the column sums and per-id reads that rates.py, topk.py and owners.py
  use instead of walking rows.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import compress, repeat
from operator import attrgetter
from typing import overload

from linnix_exporter.snapshot import ProgramStat, RawProg

# struct rec in bpf/prog_stats_iter.c, fields in RawProg order: what a read of every
# program hands the tick (the iterator writes it; the syscall reader packs it).
RECORD = struct.Struct("<II8sQ16sQQQ")
RECORD_SIZE = RECORD.size  # 64
WORDS = RECORD_SIZE // 8  # u64 words per record
# u64 word of each field in a record: (type | id << 32), tag, load_time, name[2], then:
RUN_TIME, RUN_CNT, MISSES = 5, 6, 7
_COUNTERS = struct.Struct("<QQQ")  # run_time_ns, run_cnt, recursion_misses at word 5
_row = functools.partial(tuple.__new__, ProgramStat)
_raw_prog = functools.partial(tuple.__new__, RawProg)
_TAG, _OURS = attrgetter("tag"), attrgetter("ours")

ProgramKey = tuple[int, str, int]  # ProgramStat.identity: (id, tag hex, load_time_ns)


class RawTable:
    """The records of one read. `raw` must be whole records (the readers check)."""

    __slots__ = ("_id_set", "_ids", "ident", "raw", "words")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.words = w = memoryview(raw).cast("Q")
        # What identifies every program, in order: ids, tags, load times (three
        # strided copies, compared as bytes between reads: a C-level memcmp). A read
        # whose programs are the ones of the read before needs nothing else per program.
        self.ident = w[0::WORDS].tobytes() + w[1::WORDS].tobytes() + w[2::WORDS].tobytes()
        self._ids: list[int] | None = None
        self._id_set: frozenset[int] | None = None

    @property
    def ids(self) -> list[int]:
        """Id per position; made only when a new layout needs them (the set changed)."""
        if self._ids is None:
            # The id is the high half of word 0 (little-endian u32 pair type, id).
            self._ids = memoryview(self.raw).cast("I")[1 :: WORDS * 2].tolist()
        return self._ids

    def share_ids(self, other: RawTable) -> bool:
        """Take `other`'s id list and set when both read the same programs (a memcmp):
        a tick whose set did not change builds neither again."""
        if other.ident != self.ident:
            return False
        self._ids, self._id_set = other._ids, other._id_set
        return True

    @classmethod
    def from_raws(cls, raws: Iterable[RawProg]) -> RawTable:
        """The syscall path's (or a test's) RawProg list in the iterator's layout."""
        return cls(b"".join([RECORD.pack(*r) for r in raws]))

    @classmethod
    def of(cls, raws: RawTable | Iterable[RawProg]) -> RawTable:
        return raws if isinstance(raws, RawTable) else cls.from_raws(raws)

    @property
    def id_set(self) -> frozenset[int]:
        if self._id_set is None:
            self._id_set = frozenset(self.ids)
        return self._id_set

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loads(self) -> list[int]:
        """Load time per position."""
        return self.words[2::WORDS].tolist()

    def record(self, pos: int) -> RawProg:
        return _raw_prog(RECORD.unpack_from(self.raw, pos * RECORD_SIZE))

    def records(self) -> list[RawProg]:
        return list(map(_raw_prog, RECORD.iter_unpack(self.raw)))


class Alignment:
    """Where each program of a new layout was in the layout before it (`prev`), made
    once when the program set changes (ProgramRows) and used by every consumer of that
    tick (rates, the listing, owners) instead of each matching keys again.

    `old_pos[pos]`: the position in `prev` of the same program (same id, tag and load
    time), or len(prev) when `prev` did not have it (an index past prev's columns, so a
    C-level lookup in a column extended by one sentinel needs no test); `new`: those
    positions; `gone`: positions of `prev` whose program is not in the new layout.
    `kept`: the new layout's template at each old position is prev's (the same labels,
    owners and memory: ProgramRows reused the row), so what consumers derived from
    those rows (owner keys, memory sums) carries over by position."""

    __slots__ = ("gone", "kept", "new", "old_pos", "prev")

    def __init__(self, prev: Layout, old_pos: list[int], new: list[int], gone: list[int]) -> None:
        self.prev, self.old_pos, self.new, self.gone = prev, old_pos, new, gone
        self.kept = False


# Past this many places where two reads differ, align() matches every program by id
# instead of by runs (a set that changed wholesale).
_MAX_DIVERGENCES = 32


def align(prev: Layout, table: RawTable) -> Alignment:
    """`table`'s programs against `prev`'s, by id, then tag and load time (a new program
    under an old id is a new one). Both reads are in id order and a set changes in a
    few places (programs unloaded, new ones at higher ids), so the reads are matched as
    runs of equal identity columns, found by comparing column slices as bytes (a
    memcmp, binary search): a few dozen C-level compares per place where they differ,
    not a step per program. A set that changed in many places is matched by id
    (_align_by_id)."""
    m, n = len(prev.ids), len(table)
    runs = _common_runs(prev.ident, m, table.ident, n)
    if runs is None:
        al = _align_by_id(prev, table)
    else:
        old_pos = [m] * n
        new: list[int] = []
        gone: list[int] = []
        i = j = 0
        for a, b, length in runs:
            gone.extend(range(i, a))
            new.extend(range(j, b))
            old_pos[b : b + length] = range(a, a + length)
            i, j = a + length, b + length
        gone.extend(range(i, m))
        new.extend(range(j, n))
        al = Alignment(prev, old_pos, new, gone)
    # Only the newest alignment is used: the one before may go (no chain of layouts).
    prev.alignment = None
    return al


def _common_runs(a: bytes, m: int, b: bytes, n: int) -> list[tuple[int, int, int]] | None:
    """(start in a, start in b, length) of the runs of programs with the same identity
    (id, tag, load time) in two reads' identity bytes (RawTable.ident: m and n
    programs), in order; None past _MAX_DIVERGENCES places where they differ, or when
    a run of equal ids holds another tag or load time (an id reused: matched by id)."""
    ids_a, ids_b = a[: 8 * m], b[: 8 * n]  # word 0: type | id << 32, ascending ids
    wa, wb = memoryview(ids_a).cast("Q"), memoryview(ids_b).cast("Q")
    runs: list[tuple[int, int, int]] = []
    i = j = steps = 0
    while i < m and j < n:
        # The longest run of equal ids from (i, j): all of what is left, or a binary
        # search on "the first k are equal" (true up to the run's length, false after).
        hi = min(m - i, n - j)
        if ids_a[8 * i : 8 * (i + hi)] == ids_b[8 * j : 8 * (j + hi)]:
            ok = hi
        else:
            ok, bad = 0, hi
            while bad - ok > 1:
                mid = (ok + bad) // 2
                if ids_a[8 * i : 8 * (i + mid)] == ids_b[8 * j : 8 * (j + mid)]:
                    ok = mid
                else:
                    bad = mid
        if ok:
            for col in (1, 2):  # tags, load times of the run
                sa, sb = 8 * (col * m + i), 8 * (col * n + j)
                if a[sa : sa + 8 * ok] != b[sb : sb + 8 * ok]:
                    return None
            runs.append((i, j, ok))
            i, j = i + ok, j + ok
            if i == m or j == n:
                break
        steps += 1
        if steps > _MAX_DIVERGENCES:
            return None
        x, y = wa[i] >> 32, wb[j] >> 32
        if x < y:
            i += 1  # unloaded
        elif x > y:
            j += 1  # loaded
        else:
            return None  # the same id, another type: matched by id
    return runs


def _align_by_id(prev: Layout, table: RawTable) -> Alignment:
    """align() by id lookups, then tag and load time, at C level: three maps over the
    columns."""
    missing = len(prev.ids)
    found = list(map(prev.index.get, table.ids, repeat(missing)))
    tags = (*prev.tags, -1)  # -1: never a u64 tag or load time
    loads = (*prev.loads, -1)
    same = list(
        map(
            operator.and_,
            map(operator.eq, map(tags.__getitem__, found), table.words[1::WORDS].tolist()),
            map(operator.eq, map(loads.__getitem__, found), table.loads),
        )
    )
    new = list(compress(range(len(found)), map(operator.not_, same)))
    for pos in new:  # few: the programs that appeared (or came back under an old id)
        found[pos] = missing
    gone: list[int] = []
    if len(found) - len(new) != missing:
        kept = set(compress(found, same))
        gone = list(
            compress(range(missing), map(operator.not_, map(kept.__contains__, range(missing))))
        )
    return Alignment(prev, found, new, gone)


class Layout:
    """What stays fixed between reads of one program set and owner scan: per position
    a template row (counters zero), and the id -> position index. Built with C-level
    zips and getters: only the templates themselves are made per program, and only
    for programs the layout before did not have (ProgramRows). `alignment`: where its
    programs were in the layout before (None: not known, consumers match keys)."""

    __slots__ = (
        "_key_set",
        "_keys",
        "alignment",
        "id_set",
        "ident",
        "ids",
        "index",
        "loads",
        "our_positions",
        "tags",
        "templates",
    )

    def __init__(
        self,
        table: RawTable,
        templates: Sequence[ProgramStat],
        alignment: Alignment | None = None,
        ours: frozenset[int] | None = None,
    ) -> None:
        self.ident = table.ident
        self.templates = tuple(templates)
        self.ids = table.ids
        self.id_set = table.id_set
        n = len(self.ids)
        self.index = dict(zip(self.ids, range(n), strict=True))
        self.tags: list[int] = table.words[1::WORDS].tolist()  # tag as a u64
        self.loads = table.loads
        self.alignment = alignment
        if ours is None:  # the templates say it (tests); ProgramRows passes the few ids
            self.our_positions = list(compress(range(n), map(_OURS, self.templates)))
        else:
            index = self.index
            self.our_positions = sorted([index[i] for i in ours if i in index])
        self._keys: list[ProgramKey] | None = None
        self._key_set: frozenset[ProgramKey] | None = None

    def same_programs(self, other: Layout) -> bool:
        """The same programs at the same positions (ids, tags, load times)."""
        return other is self or other.ident == self.ident

    def aligned_to(self, prev: Layout) -> Alignment | None:
        """This layout's alignment if it was made against `prev`."""
        a = self.alignment
        return a if a is not None and a.prev is prev else None

    def key(self, pos: int) -> ProgramKey:
        return (self.ids[pos], self.templates[pos].tag, self.loads[pos])

    @property
    def keys(self) -> list[ProgramKey]:
        """Every position's key: made on demand (a lookup by key, a layout without an
        alignment), not per tick."""
        if self._keys is None:
            self._keys = list(zip(self.ids, map(_TAG, self.templates), self.loads, strict=True))
        return self._keys

    @property
    def key_set(self) -> frozenset[ProgramKey]:
        if self._key_set is None:
            self._key_set = frozenset(self.keys)
        return self._key_set


class ProgramTable(Sequence[ProgramStat]):
    """One read's programs: records + layout; rows are built on first access."""

    __slots__ = ("_rows", "_run_times", "_sums", "layout", "raw", "words")

    def __init__(self, raw: bytes, layout: Layout) -> None:
        self.raw = raw
        self.words = memoryview(raw).cast("Q")
        self.layout = layout
        self._rows: dict[int, ProgramStat] = {}
        self._sums: dict[int, int] = {}
        self._run_times: list[int] | None = None

    def run_times(self) -> list[int]:
        """RUN_TIME of every position as a list, made once per table: the listing ranks
        it, owners pick from it, its sum is the node's; the next tick reuses it as the
        run times before (one tolist per tick instead of a pass per consumer)."""
        if self._run_times is None:
            self._run_times = self.words[RUN_TIME::WORDS].tolist()
        return self._run_times

    def __len__(self) -> int:
        return len(self.layout.templates)

    def row(self, pos: int) -> ProgramStat:
        r = self._rows.get(pos)
        if r is None:
            t = self.layout.templates[pos]
            counters = _COUNTERS.unpack_from(self.raw, pos * RECORD_SIZE + RUN_TIME * 8)
            r = self._rows[pos] = _row(t[:5] + counters + t[8:])
        return r

    @overload
    def __getitem__(self, i: int) -> ProgramStat: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[ProgramStat]: ...

    def __getitem__(self, i: int | slice) -> ProgramStat | Sequence[ProgramStat]:
        if isinstance(i, slice):
            return [self.row(p) for p in range(len(self))[i]]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.row(i)

    def __iter__(self) -> Iterator[ProgramStat]:
        return map(self.row, range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(other) == len(self) and all(map(tuple.__eq__, self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def get(self, prog_id: int) -> ProgramStat | None:
        pos = self.layout.index.get(prog_id)
        return None if pos is None else self.row(pos)

    @property
    def id_set(self) -> frozenset[int]:
        return self.layout.id_set

    def column(self, word: int) -> memoryview:
        """One counter of every program (RUN_TIME, RUN_CNT, MISSES), as a strided view."""
        return self.words[word::WORDS]

    def total(self, word: int) -> int:
        """A counter summed over every program (C-level; cached: the table is frozen)."""
        s = self._sums.get(word)
        if s is None:
            col = self.run_times() if word == RUN_TIME else self.words[word::WORDS]
            s = self._sums[word] = sum(col)
        return s

    def value(self, pos: int, word: int) -> int:
        return int(self.words[pos * WORDS + word])

    def counters(self, pos: int) -> tuple[int, int, int]:
        """(run_time_ns, run_cnt, recursion_misses) at a position."""
        rt, cnt, misses = _COUNTERS.unpack_from(self.raw, pos * RECORD_SIZE + RUN_TIME * 8)
        return rt, cnt, misses

    def by_key(self) -> KeyMap:
        return KeyMap(self)


class KeyMap(Mapping[ProgramKey, ProgramStat]):
    """identity -> row of a table, looked up on demand (Tick.program_by_key)."""

    __slots__ = ("_index", "_table")

    def __init__(self, table: ProgramTable) -> None:
        self._table = table
        self._index: dict[ProgramKey, int] | None = None

    def _idx(self) -> dict[ProgramKey, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self._table.layout.keys)}
        return self._index

    def __getitem__(self, key: ProgramKey) -> ProgramStat:
        pos = self._table.layout.index.get(key[0])
        if pos is not None and self._table.layout.key(pos) == key:
            return self._table.row(pos)
        raise KeyError(key)

    def __iter__(self) -> Iterator[ProgramKey]:
        return iter(self._table.layout.keys)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._idx()


def program_ids(programs: Sequence[ProgramStat]) -> frozenset[int]:
    """Ids of a snapshot's programs (a table has them already)."""
    if isinstance(programs, ProgramTable):
        return programs.id_set
    return frozenset([p.id for p in programs])


def run_time_of(programs: Sequence[ProgramStat], ids: Iterable[int]) -> int:
    """Summed run time of the programs with these ids (few: our probes)."""
    if isinstance(programs, ProgramTable):
        index = programs.layout.index
        return sum(programs.value(index[i], RUN_TIME) for i in ids if i in index)
    want = frozenset(ids)
    return sum(p.run_time_ns for p in programs if p.id in want)
