"""Bounded label sets with an honest "[other]" bucket.

Per-key kernel counters (per program, per comm) are turned into counters that are safe
to export with a bounded number of series:
- each key's counter is accumulated in userspace from per-tick deltas, so it stays
  monotonic when the kernel forgets the key (LRU eviction) and later sees it again;
- only the `limit` largest keys (plus pinned ones) are listed; the deltas of every
  other key in a tick go into one "rest" counter, which therefore only ever grows.
A key that drops out of the list and comes back resumes its own counter.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Generic, TypeVar

from linnix_exporter.prog_table import (
    MISSES,
    RUN_CNT,
    RUN_TIME,
    ProgramKey,
    ProgramTable,
)

K = TypeVar("K", bound=Hashable)
Vec = tuple[int, ...]


def _sub(cur: Vec, prev: Vec | None) -> Vec:
    """Per-component delta; a component that went down means the kernel restarted the
    key from zero, so its whole current value is new."""
    if prev is None:
        return cur
    return tuple([c - p if c >= p else c for c, p in zip(cur, prev, strict=True)])


def _add(a: Vec, b: Vec) -> Vec:
    return tuple([x + y for x, y in zip(a, b, strict=True)])


@dataclass(frozen=True, slots=True)
class TopKView(Generic[K]):
    listed: Mapping[K, Vec]  # accumulated counters of the listed keys
    rest: Vec  # accumulated deltas of everything not listed at the time
    rest_keys: int  # how many known keys are not listed now


class TopKAccumulator(Generic[K]):
    def __init__(
        self,
        width: int,
        limit: int,
        score: Callable[[Vec], int] = sum,
        forget_missing: bool = False,
        max_remembered: int = 100_000,
    ) -> None:
        """`forget_missing`: drop a key as soon as it is absent from an update (a program
        id never comes back); otherwise keep it (a comm evicted from an LRU map does).
        `max_remembered` bounds memory when keys are remembered."""
        self._zero: Vec = (0,) * width
        self._limit = limit
        self._score = score
        self._forget = forget_missing
        self._max = max_remembered
        self._last: dict[K, Vec] = {}
        self._acc: dict[K, Vec] = {}
        self._rest: Vec = self._zero
        # The last listed set and what it was computed from, to skip re-ranking.
        self._listed: set[K] | None = None
        self._pins: set[K] = set()
        self._size = 0

    def update(
        self,
        current: Mapping[K, Vec],
        pinned: Iterable[K] = (),
        eligible: Callable[[K], bool] | None = None,
    ) -> TopKView[K]:
        # Hot with 1,000 programs: most keys are idle between ticks, so an unchanged
        # vector (one C-level tuple compare) costs no arithmetic at all.
        last, acc = self._last, self._acc
        changed: dict[K, Vec] = {}
        for key, vec in current.items():
            prev = last.get(key)
            if prev == vec:
                continue
            d = _sub(vec, prev)
            changed[key] = d
            a = acc.get(key)
            acc[key] = d if a is None else _add(a, d)
        if self._forget:
            self._last = dict(current)
            if len(acc) != len(current):
                self._acc = acc = {k: v for k, v in acc.items() if k in current}
        else:
            last.update(current)
            self._prune(current)
        pins = set(pinned) & acc.keys()
        last_listed = self._listed
        if (
            last_listed is not None
            and eligible is None
            and pins == self._pins
            and len(acc) == self._size
            and all(k in last_listed for k in changed)
        ):
            # Nothing appeared or went, and only listed keys grew: scores only ever grow,
            # so the listed set is still the top one. The common tick with 1,000 idle
            # programs costs no ranking at all.
            listed_keys = last_listed
        else:
            candidates = [k for k in acc if k not in pins and (eligible is None or eligible(k))]
            if len(candidates) <= self._limit:
                listed_keys = pins.union(candidates)  # everything fits: no ranking needed
            else:
                score = self._score
                top = heapq.nlargest(self._limit, candidates, key=lambda k: score(acc[k]))
                listed_keys = pins.union(top)
        self._listed, self._pins, self._size = listed_keys, pins, len(acc)
        for key, d in changed.items():
            if key not in listed_keys:
                self._rest = _add(self._rest, d)
        return TopKView(
            listed={k: acc[k] for k in listed_keys},
            rest=self._rest,
            rest_keys=len(acc) - len(listed_keys),
        )

    def _prune(self, current: Mapping[K, Vec]) -> None:
        if len(self._acc) <= self._max:
            return
        # Forget the smallest keys the kernel no longer holds; if one returns, its
        # counter restarts (Prometheus sees a reset, which rate() handles).
        gone = sorted(
            (k for k in self._acc if k not in current), key=lambda k: self._score(self._acc[k])
        )
        for k in gone[: len(self._acc) - self._max]:
            del self._acc[k]
            self._last.pop(k, None)


class ProgramTopK:
    """TopKAccumulator(width=3, score=run time, forget_missing=True) for programs, on
    ProgramTable columns (prog_table.py): the same listing, rest and counts,
    without a Python step per program on a tick where the program set is unchanged.

    Why it can be cheaper: a program's counters (run time, runs, misses) only grow for
    its life and its key (id, tag, load time) never comes back, so the accumulated
    vector of a key always equals its current counters (its first delta is its whole
    value), and the rest grows by the sum of every delta minus the listed keys'. The
    sum of every delta is a difference of column sums when the set is unchanged.
    Ranking picks the `limit` largest run times among the non-pinned eligible programs
    with heapq over C-built (run time, -position) pairs: ties go to the lower position,
    the older program, as TopKAccumulator's insertion order does."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._last: ProgramTable | None = None
        self._rest: Vec = (0, 0, 0)
        # eligible positions per layout (names and types are fixed for a layout)
        self._mask_for: object = None
        self._mask: list[bool] = []
        self._ranked: list[int] = []  # positions ranked in the top at the last update

    def update(
        self,
        table: ProgramTable,
        pinned: Iterable[int] = (),
        eligible: Callable[[ProgramKey], bool] | None = None,
    ) -> TopKView[ProgramKey]:
        layout = table.layout
        keys = layout.keys
        n = len(table)
        pin_pos = {layout.index[i] for i in pinned if i in layout.index}
        mask: list[bool] | None = None
        if eligible is not None:
            if self._mask_for is not layout:  # the rule is the config's: fixed
                self._mask = [eligible(k) for k in keys]
                self._mask_for = layout
            mask = self._mask
        listed: Sequence[int]
        if mask is None and n - len(pin_pos) <= self._limit:
            listed = range(n)  # everything fits: no ranking needed
            self._ranked = []
        else:
            scores = table.column(RUN_TIME).tolist()
            for p in pin_pos:
                # Below every run time: a pin is never ranked in place of a candidate
                # (one that fills a short list is listed anyway, as a pin).
                scores[p] = -1
            ranked = self._ranked
            pairs: Iterable[tuple[int, int]]
            if (
                len(ranked) == self._limit
                and self._last is not None
                and self._last.layout.same_programs(layout)
            ):
                # Scores only grow: the programs ranked last time still score at least
                # their current minimum, so the new top all score at least that: rank
                # only those (a C-level filter; the heap then sees a few, not all).
                floor = min(map(scores.__getitem__, ranked))
                ok = map(floor.__le__, scores)
                cand = compress(range(n), ok if mask is None else map(operator.and_, ok, mask))
                pairs = [(scores[p], -p) for p in cand]
            else:
                pairs = zip(scores, range(0, -n, -1), strict=True)
                if mask is not None:
                    pairs = compress(pairs, mask)
            top = heapq.nlargest(self._limit, pairs)
            self._ranked = [-p for _, p in top]
            listed = sorted(pin_pos.union(self._ranked))
        last = self._last
        d_all = self._all_deltas(table, last)
        d_listed = [0, 0, 0]
        last_index = last.layout.index if last is not None else {}
        last_keys = last.layout.keys if last is not None else []
        for pos in listed:
            cur = table.counters(pos)
            lp = last_index.get(keys[pos][0])
            prev = None
            if last is not None and lp is not None and last_keys[lp] == keys[pos]:
                prev = last.counters(lp)
            d = _sub(cur, prev)
            d_listed = [a + b for a, b in zip(d_listed, d, strict=True)]
        self._rest = _add(self._rest, tuple([a - b for a, b in zip(d_all, d_listed, strict=True)]))
        self._last = table
        return TopKView(
            listed={keys[p]: table.counters(p) for p in listed},
            rest=self._rest,
            rest_keys=n - len(listed),
        )

    @staticmethod
    def _all_deltas(table: ProgramTable, last: ProgramTable | None) -> Vec:
        """Sum over the current keys of (current - last, or current when new)."""
        cols = (RUN_TIME, RUN_CNT, MISSES)
        now = [table.total(c) for c in cols]
        if last is None:
            return tuple(now)
        if last.layout.same_programs(table.layout):
            return tuple([a - last.total(c) for a, c in zip(now, cols, strict=True)])
        # The set changed: the keys still present count from what they had last time
        # (those gone, few, are taken out of last time's sums one by one).
        before = [last.total(c) for c in cols]
        current = table.layout.key_set
        gone = map(operator.not_, map(current.__contains__, last.layout.keys))
        for pos in compress(range(len(last)), gone):
            before = [a - b for a, b in zip(before, last.counters(pos), strict=True)]
        return tuple([a - b for a, b in zip(now, before, strict=True)])
