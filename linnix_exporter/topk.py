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
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

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
