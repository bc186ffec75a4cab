"""OwnerScanner's schedule with a fake clock and a fake scan cost: scans come when due
(refresh, new programs) and never faster than the CPU budget allows."""

from __future__ import annotations

from linnix_exporter.kernel.progstats import OwnerScanner
from linnix_exporter.snapshot import Owner


class Fake:
    def __init__(self, cost: float) -> None:
        self.now = 1000.0
        self.cpu_now = 0.0
        self.cost = cost
        self.scans = 0
        self.fail = False

    def clock(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.cpu_now

    def scan(self) -> dict[int, tuple[Owner, ...]]:
        self.cpu_now += self.cost
        self.scans += 1
        if self.fail:
            raise OSError(5, "Input/output error")
        return {1: (Owner(10, "agent"),)}


def scanner(f: Fake, budget: float = 0.0002, refresh: float = 60.0) -> OwnerScanner:
    return OwnerScanner(refresh, f.scan, budget=budget, clock=f.clock, cpu=f.cpu)


def test_cheap_scans_follow_new_programs_at_once() -> None:
    f = Fake(cost=0.0001)  # 0.1 ms: a small host; the budget's pause is 0.5 s
    s = scanner(f)
    first = s.read(frozenset({1}))
    assert f.scans == 1
    f.now += 10
    assert s.read(frozenset({1})) is first  # nothing new, not yet refreshed
    f.now += 10
    s.read(frozenset({1, 2}))  # a new program: scanned at the next tick
    assert f.scans == 2
    f.now += 60
    s.read(frozenset({1, 2}))  # refresh
    assert f.scans == 3


def test_costly_scans_are_held_to_the_budget_under_churn() -> None:
    f = Fake(cost=0.048)  # the owners iterator with 200,000 fds on the host
    s = scanner(f)
    ids = frozenset({1})
    for tick in range(60):  # 10 minutes of ticks, a new program before every one
        ids = ids | {100 + tick}
        s.read(ids)
        f.now += 10
    # 0.048 s / 0.0002 = 240 s between scans: at t = 0, 240 and 480.
    assert f.scans == 3
    assert f.cpu_now / 600 <= 0.0002 + 0.048 / 600  # within budget (plus the first)


def test_failed_scan_waits_its_turn_and_keeps_the_last_owners() -> None:
    f = Fake(cost=0.001)  # pause 5 s
    s = scanner(f)
    good = s.read(frozenset({1}))
    f.fail = True
    f.now += 60
    try:
        s.read(frozenset({1}))
        raise AssertionError("the failure must reach the tick (the collector's gauge)")
    except OSError:
        pass
    f.now += 1
    assert s.read(frozenset({1})) is good and f.scans == 2  # not retried at once
    f.now += 5
    f.fail = False
    s.read(frozenset({1}))
    assert f.scans == 3


def test_map_memory_read_after_a_scan_is_paced_with_it() -> None:
    """A scan of 20 ms followed by 90 ms of map-memory reads (3,000 maps, charged by
    ProgramRows): the next scan waits (20 + 90) ms / 0.0002 = 550 s, not 100 s."""
    f = Fake(cost=0.020)
    s = scanner(f)
    ids = frozenset({1})
    s.read(ids)
    s.charge(0.090)
    for tick in range(59):  # 10 minutes of ticks, a new program before every one
        f.now += 10
        ids = ids | {100 + tick}
        s.read(ids)
    assert f.scans == 2  # at t = 0 and t = 550
    assert s.last_scan_cpu == 0.020  # the second scan, not yet charged
