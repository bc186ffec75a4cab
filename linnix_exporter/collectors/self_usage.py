"""The "self" collector: the exporter's own CPU time and resident memory
(kernel/self_usage.py reads getrusage and /proc/self/statm). Read first in every tick:
the tick's own cost then lands in the next tick, and the figure lies as close as
possible to the moment the consumer asked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import F, Figure, FigureMaker
from linnix_exporter.snapshot import SelfUsage
from linnix_exporter.tick import SELF, Tick

NAME = SELF


class SelfSource(Protocol):
    def read(self) -> SelfUsage: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_exporter_cpu_seconds_total",
        "process.cpu.time",
        "counter",
        "s",
        "CPU time of the exporter, including helper processes it started and reaped.",
        ("mode",),
        ("cpu.mode",),
    ),
    F(
        "linnix_exporter_resident_memory_bytes",
        "process.memory.usage",
        "updown",
        "By",
        "Resident set size of the exporter.",
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    if not tick.ok(SELF):
        return
    u = tick.snapshot.self_usage
    yield fig("linnix_exporter_cpu_seconds_total", u.user_seconds, "user")
    yield fig("linnix_exporter_cpu_seconds_total", u.system_seconds, "system")
    yield fig("linnix_exporter_resident_memory_bytes", u.rss_bytes)
