"""kernel/probes.py's reading of the `counters` array (bpf/probes.c), on hand-built
regions: no kernel needed. Layout per CPU, in 8-word lines: fallback totals (then the
CPU's count of claimed cache lines), 8 lines of lifetime histogram, then the comm cache
lines (key0, key1 | CLAIMED, forks, execs, exits, exited_cpu_ns, lifetime_sum_ns)."""

from __future__ import annotations

import struct

from linnix_exporter.kernel.probes import _CLAIMED, _Counters
from linnix_exporter.snapshot import CommCounts

CPUS, SLOTS = 2, 2
LINES = 9 + SLOTS
STEP = LINES * 8
CLAIMS = 5  # word of the totals line


def key(comm: str) -> list[int]:
    k0, k1 = struct.unpack("<QQ", comm.encode().ljust(16, b"\0"))
    return [k0, k1 | _CLAIMED]


class Region:
    """A writable stand-in for the mmap, read by a _Counters built over it."""

    def __init__(self) -> None:
        self.buf = bytearray(CPUS * STEP * 8)
        self.w = memoryview(self.buf).cast("Q")
        self.c = object.__new__(_Counters)
        self.c.lines, self.c.cpu_ids = LINES, CPUS
        self.c._words = self.w
        self.c._claims = [0] * CPUS
        self.c._names, self.c._seen, self.c._acc, self.c._cc = {}, {}, {}, {}
        self.c._keys = {}
        self.c._cache_totals = [0] * 5

    def put(self, cpu: int, line: int, values: list[int], at: int = 0) -> None:
        o = cpu * STEP + line * 8 + at
        self.w[o : o + len(values)] = memoryview(struct.pack(f"{len(values)}Q", *values)).cast("Q")

    def read(self, by_comm: dict[str, CommCounts] | None = None) -> tuple:  # type: ignore[type-arg]
        by = {} if by_comm is None else by_comm
        totals, hist = self.c.read(by)
        return totals, hist, by


def test_sums_cpus_cache_lines_fallback_and_histogram() -> None:
    r = Region()
    r.put(0, 0, [1, 2, 3, 40, 500, 2])  # fallback totals; 2 lines claimed on CPU 0
    r.put(1, 0, [10, 0, 0, 0, 0, 2])
    r.put(0, 1, [7], at=3)  # histogram slot 3 on CPU 0
    r.put(1, 8, [2], at=7)  # slot 63 on CPU 1
    r.put(1, 1, [1], at=3)  # slot 3 on CPU 1
    # "sh" owns slot 0 on both CPUs, "make" slot 1 on CPU 1, "sh" also slot 1 on CPU 0
    # (two raw keys that decode alike are one comm).
    r.put(0, 9, [*key("sh"), 5, 1, 4, 100, 1000])
    r.put(0, 10, [key("sh")[0], key("sh")[1] | 1 << 48, 1, 0, 0, 0, 0])  # after the NUL
    r.put(1, 9, [*key("sh"), 2, 0, 2, 50, 10])
    r.put(1, 10, [*key("make"), 0, 3, 3, 9, 0])
    totals, hist, by_comm = r.read({"make": CommCounts(1, 1, 1, 1)})  # also in the LRU

    assert by_comm == {"make": CommCounts(1, 4, 4, 10), "sh": CommCounts(8, 1, 6, 150)}
    # fallback (11, 2, 3, 40, 500) + cache lines (8, 4, 9, 159, 1010)
    assert totals == [19, 6, 12, 199, 1510]
    assert hist[3] == 8 and hist[63] == 2 and sum(hist) == 10


def test_second_read_adds_only_what_changed() -> None:
    r = Region()
    r.put(0, 0, [0, 0, 0, 0, 0, 1])
    r.put(0, 9, [*key("sh"), 5, 0, 5, 0, 0])
    r.read()
    r.put(0, 9, [8], at=2)  # 3 more forks
    r.put(1, 10, [*key("sh"), 1, 0, 0, 0, 0])  # sh claims a line on CPU 1 too
    r.put(1, 0, [1], at=CLAIMS)
    totals, _, by_comm = r.read()
    assert by_comm == {"sh": CommCounts(9, 0, 5, 0)}
    assert totals == [9, 0, 5, 0, 0]
    again, _, by_comm = r.read()  # nothing changed: the same figures
    assert (again, by_comm) == (totals, {"sh": CommCounts(9, 0, 5, 0)})


def test_line_claimed_before_its_claim_count_shows_is_read_later_in_both_figures() -> None:
    """The probe stores the key, bumps the claim count, then adds. A read between the
    key and the count skips the line in the per-comm AND the total figures alike; the
    next read counts it in both."""
    r = Region()
    r.put(0, 9, [*key("cron"), 1, 0, 0, 0, 0])  # claim count not bumped yet
    totals, _, by_comm = r.read()
    assert (totals[0], by_comm) == (0, {})
    r.put(0, 0, [1], at=CLAIMS)
    totals, _, by_comm = r.read()
    assert (totals[0], by_comm) == (1, {"cron": CommCounts(1, 0, 0, 0)})


def test_lru_marks_read_finished_before_started() -> None:
    r = Region()
    r.put(0, 0, [5, 5], at=6)  # started 5, finished 5 on CPU 0
    r.put(1, 0, [3, 2], at=6)  # one update under way on CPU 1
    assert r.c.lru_marks() == (7, 8)
    r.put(1, 0, [3], at=7)
    assert r.c.lru_marks() == (8, 8)


def test_taken_over_line_moves_its_holder_to_the_hash_exactly() -> None:
    """bpf/probes.c takes line 9 of CPU 0 from "sh" for "cc": sh's 7 forks in the line
    (5 already read) move to the fallback totals and sh's hash entry, the line restarts
    at zero under cc, one generation on, and the claim count moves. Per comm and in
    total every event counts once: sh +2 (in the hash), cc +1, totals +3."""
    r = Region()
    r.put(0, 0, [0, 0, 0, 0, 0, 1])
    r.put(0, 9, [*key("sh"), 5, 0, 0, 0, 0, 0, 1])
    totals, _, by_comm = r.read()
    assert (totals[0], by_comm) == (5, {"sh": CommCounts(5, 0, 0, 0)})
    # sh forks twice more, then cc takes the line over and forks once.
    r.put(0, 0, [7, 0, 0, 0, 0, 2])  # fallback totals now hold sh's 7; claims 1 -> 2
    r.put(0, 9, [*key("cc"), 1, 0, 0, 0, 0, 2 << 1 | 1])  # generation 1 -> 2
    lru = {"sh": CommCounts(7, 0, 0, 0)}  # what the hash holds for sh now
    totals, _, by_comm = r.read(dict(lru))
    assert by_comm == {"sh": CommCounts(7, 0, 0, 0), "cc": CommCounts(1, 0, 0, 0)}
    assert totals[0] == 8
    # The same comm taking a line back after a takeover (same key, next generation)
    # restarts from zero too: cc loses the line to sh and wins it back with 1 fork.
    r.put(0, 0, [8, 0, 0, 0, 0, 4])  # cc's 1 moved; two claims since
    r.put(0, 9, [*key("cc"), 1, 0, 0, 0, 0, 4 << 1])
    lru = {"sh": CommCounts(7, 0, 0, 0), "cc": CommCounts(1, 0, 0, 0)}
    totals, _, by_comm = r.read(dict(lru))
    assert by_comm == {"sh": CommCounts(7, 0, 0, 0), "cc": CommCounts(2, 0, 0, 0)}
    assert totals[0] == 9


def test_line_taken_over_after_its_claims_were_read_is_skipped_until_they_show() -> None:
    r = Region()
    r.put(0, 0, [0, 0, 0, 0, 0, 1])
    r.put(0, 9, [*key("sh"), 5, 0, 0, 0, 0, 0, 1])
    r.read()
    r.put(0, 9, [*key("cc"), 0, 0, 0, 0, 0, 2])  # taken over, claim count not yet moved
    totals, _, by_comm = r.read()
    assert (totals[0], by_comm["sh"]) == (5, CommCounts(5, 0, 0, 0))
    assert "cc" not in by_comm
