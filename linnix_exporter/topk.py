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
    without a Python step per program.

    Why it can be cheaper: a program's counters (run time, runs, misses) only grow for
    its life and its key (id, tag, load time) never comes back, so the accumulated
    vector of a key always equals its current counters (its first delta is its whole
    value), and the rest grows by the sum of every delta minus the listed keys'. The
    sum of every delta is a difference of column sums (less the programs that came or
    went, from the layout's alignment when the set changed). Ranking: the `limit`-th
    largest run time among the non-pinned eligible programs (heapq over the values,
    C-level), then the positions at or above it; ties at it go to the lower position,
    the older program, as TopKAccumulator's insertion order does."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._last: ProgramTable | None = None
        self._rest: Vec = (0, 0, 0)
        # eligible positions per layout (names and types are fixed for a layout)
        self._mask_for: object = None
        self._mask: list[bool] = []

    def _ranked(self, table: ProgramTable, pins: set[int], mask: list[bool] | None) -> list[int]:
        """Positions of the `limit` largest run times among the candidates (not pinned,
        eligible), ties to the lower position; every candidate when they fit. Three
        C-level passes over the run times: negated into a heap (pins pushed below every
        candidate there), heapify, the positions at or above the threshold."""
        n, k = len(table), self._limit
        scores = table.run_times()
        pinned_eligible = len(pins) if mask is None else sum([mask[p] for p in pins])
        candidates = (n if mask is None else sum(mask)) - pinned_eligible
        if candidates <= k:  # every candidate is listed: no ranking
            every = range(n) if mask is None else compress(range(n), mask)
            return [p for p in every if p not in pins]
        # The k-th largest value: heapq.nlargest walks the values in Python; a heap of
        # the negated values (heapify) and k pops do not.
        if mask is None:
            heap = list(map(operator.neg, scores))
            for p in pins:
                heap[p] = 1  # -(-1): below every run time
        else:
            heap = list(map(operator.neg, compress(scores, mask)))
            below = set(compress(range(n), mask)).intersection(pins)
            for p in below:  # its place among the eligible ones
                heap[sum(mask[:p])] = 1
        heapq.heapify(heap)
        top = [heapq.heappop(heap) for _ in range(k)]
        t = -top[-1]
        ok = map(t.__le__, scores)
        at_least = list(compress(range(n), ok if mask is None else map(operator.and_, ok, mask)))
        if pins:
            at_least = [p for p in at_least if p not in pins]
        if len(at_least) == k:
            return at_least
        # Ties at the threshold: all above it, then the lowest positions equal to it.
        got = list(map(scores.__getitem__, at_least))
        above = list(compress(at_least, map(t.__lt__, got)))
        tied = list(compress(at_least, map(t.__eq__, got)))
        return sorted(above + tied[: k - len(above)])

    def update(
        self,
        table: ProgramTable,
        pinned: Iterable[int] = (),
        eligible: Callable[[ProgramKey], bool] | None = None,
    ) -> TopKView[ProgramKey]:
        layout = table.layout
        n = len(table)
        pin_pos = {layout.index[i] for i in pinned if i in layout.index}
        mask: list[bool] | None = None
        if eligible is not None:
            if self._mask_for is not layout:  # the rule is the config's: fixed
                self._mask = [eligible(k) for k in layout.keys]
                self._mask_for = layout
            mask = self._mask
        listed: Sequence[int]
        if mask is None and n - len(pin_pos) <= self._limit:
            listed = range(n)  # everything fits: no ranking needed
        else:
            listed = sorted(pin_pos.union(self._ranked(table, pin_pos, mask)))
        last = self._last
        d_all = self._all_deltas(table, last)
        d_listed = [0, 0, 0]
        last_index = last.layout.index if last is not None else {}
        key = layout.key
        for pos in listed:
            cur = table.counters(pos)
            k = key(pos)
            lp = last_index.get(k[0])
            prev = None
            if last is not None and lp is not None and last.layout.key(lp) == k:
                prev = last.counters(lp)
            d = _sub(cur, prev)
            d_listed = [a + b for a, b in zip(d_listed, d, strict=True)]
        self._rest = _add(self._rest, tuple([a - b for a, b in zip(d_all, d_listed, strict=True)]))
        self._last = table
        return TopKView(
            listed={key(p): table.counters(p) for p in listed},
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
        al = table.layout.aligned_to(last.layout)
        if al is not None:
            gone: Iterable[int] = al.gone
        else:
            current = table.layout.key_set
            gone_flags = map(operator.not_, map(current.__contains__, last.layout.keys))
            gone = compress(range(len(last)), gone_flags)
        for pos in gone:
            before = [a - b for a, b in zip(before, last.counters(pos), strict=True)]
        return tuple([a - b for a, b in zip(now, before, strict=True)])
