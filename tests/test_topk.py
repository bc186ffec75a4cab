"""Bounded label sets: listed counters and the [other] bucket stay monotonic."""

from __future__ import annotations

from linnix_exporter.topk import TopKAccumulator


def test_lists_largest_and_sums_rest() -> None:
    acc: TopKAccumulator[str] = TopKAccumulator(width=1, limit=2)
    v = acc.update({"a": (10,), "b": (5,), "c": (1,), "d": (2,)})
    assert v.listed == {"a": (10,), "b": (5,)}
    assert v.rest == (3,)  # c + d
    assert v.rest_keys == 2


def test_pinned_always_listed() -> None:
    acc: TopKAccumulator[str] = TopKAccumulator(width=1, limit=1)
    v = acc.update({"a": (10,), "ours": (1,)}, pinned=["ours"])
    assert set(v.listed) == {"a", "ours"}
    assert v.rest == (0,)


def test_ineligible_goes_to_rest() -> None:
    acc: TopKAccumulator[str] = TopKAccumulator(width=1, limit=5)
    v = acc.update({"a": (10,), "b": (3,)}, eligible=lambda k: k != "a")
    assert v.listed == {"b": (3,)}
    assert v.rest == (10,)


def test_membership_change_keeps_rest_monotonic() -> None:
    acc: TopKAccumulator[str] = TopKAccumulator(width=1, limit=1)
    v1 = acc.update({"a": (10,), "b": (4,)})
    assert v1.listed == {"a": (10,)} and v1.rest == (4,)
    # b overtakes a: a's growth (+1) while listed is not in rest; b's +20 happened
    # while b was unlisted at the start of the tick but it is listed now.
    v2 = acc.update({"a": (11,), "b": (24,)})
    assert v2.listed == {"b": (24,)}
    assert v2.rest == (5,)  # 4 before, + a's delta 1 (a is no longer listed)
    v3 = acc.update({"a": (11,), "b": (30,)})
    assert v3.rest >= v2.rest


def test_lru_eviction_and_return_keep_counter() -> None:
    # The kernel forgot "x" (LRU) and later restarted it from zero.
    acc: TopKAccumulator[str] = TopKAccumulator(width=2, limit=10)
    acc.update({"x": (5, 50)})
    acc.update({})  # evicted: not in the map this tick
    v = acc.update({"x": (2, 20)})  # restarted from zero in the kernel
    assert v.listed["x"] == (7, 70)


def test_forget_missing_drops_unloaded_programs() -> None:
    acc: TopKAccumulator[int] = TopKAccumulator(width=1, limit=10, forget_missing=True)
    acc.update({1: (5,), 2: (6,)})
    v = acc.update({2: (7,)})
    assert v.listed == {2: (7,)}
    assert v.rest_keys == 0


def test_memory_bounded() -> None:
    acc: TopKAccumulator[str] = TopKAccumulator(width=1, limit=2, max_remembered=10)
    for i in range(100):
        acc.update({f"k{i}": (i + 1,)})
    v = acc.update({})
    assert len(v.listed) + v.rest_keys <= 10


def test_unranked_fast_path_matches_full_ranking() -> None:
    """Ticks where only listed keys grow reuse the ranking; a non-listed key that grows
    past a listed one still gets in (compared with a fresh accumulator each time)."""
    fast: TopKAccumulator[str] = TopKAccumulator(width=1, limit=2)
    state = {"a": 10, "b": 8, "c": 5, "d": 1}
    steps = [{"a": 1}, {"b": 3}, {}, {"c": 20}, {"d": 2}, {"a": 1, "d": 40}]
    for step in steps:
        for k, inc in step.items():
            state[k] += inc
        current = {k: (v,) for k, v in state.items()}
        got = fast.update(current)
        fresh: TopKAccumulator[str] = TopKAccumulator(width=1, limit=2)
        assert set(got.listed) == set(fresh.update(current).listed), step
