"""Fake sources for the tick and the schedule: each read can fail on demand, and the
program read counts its calls (one read per tick)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from linnix_exporter.kernel.bpf_syscall import RawProg
from linnix_exporter.snapshot import (
    Hook,
    HookCost,
    Hooks,
    Owner,
    ProbeCounts,
    SelfUsage,
    StatsState,
)
from tests.fixtures import probes as probe_counts

BOOT = 5_000_000_000  # load times below this were loaded before the first read


class Programs:
    method = "syscall"

    def __init__(self) -> None:
        self.run_time = {7: 1000, 9: 50}  # prog id -> cumulative run_time_ns
        self.fail = False
        self.reads = 0
        self.delay = 0.0
        self.on_read: Callable[[], None] | None = None  # e.g. advance a fake clock

    def read(self) -> list[RawProg]:
        self.reads += 1
        time.sleep(self.delay)
        if self.on_read is not None:
            self.on_read()
        if self.fail:
            raise OSError(9, "Bad file descriptor")
        return [
            RawProg(5, i, bytes([i]) * 8, 1000, f"prog{i}".encode(), rt, rt // 10, 0)
            for i, rt in sorted(self.run_time.items())
        ]

    def close(self) -> None:
        pass


class Owners:
    def __init__(self) -> None:
        self.fail = False
        self.reads = 0

    def read(self, ids: frozenset[int]) -> dict[int, tuple[Owner, ...]]:
        self.reads += 1
        if self.fail:
            raise PermissionError(13, "Permission denied")
        return {7: (Owner(4242, "agent"),)}

    def close(self) -> None:
        pass


class Self:
    def __init__(self) -> None:
        self.cpu = 1.0
        self.fail = False

    def read(self) -> SelfUsage:
        if self.fail:
            raise OSError(24, "Too many open files")
        return SelfUsage(self.cpu * 0.5, self.cpu * 0.5, 20 << 20)

    def close(self) -> None:
        pass


class Probes:
    program_ids = frozenset({9})

    def __init__(self) -> None:
        self.fail = False
        self.forks = 10

    def read(self) -> ProbeCounts:
        if self.fail:
            raise RuntimeError("reading the probe maps: Bad file descriptor")
        return probe_counts(self.forks)

    def close(self) -> None:
        pass


class Stats:
    def state(self, now: float | None = None) -> StatsState:
        return StatsState(True, "enable_stats_fd")


class HooksFake:
    """Program 7 on a uprobe priced 16 us a hit; its read can fail on demand."""

    def __init__(self) -> None:
        self.fail = False

    def read(self, owners: Mapping[int, tuple[Owner, ...]]) -> Hooks:
        if self.fail:
            raise OSError(1, "Operation not permitted")
        return Hooks(
            (Hook(7, "uprobe", "/bin/agent+0x10", pid=4242),),
            (HookCost("uprobe", "measured", cost_ns=16_000.0),),
        )

    def close(self) -> None:
        pass
