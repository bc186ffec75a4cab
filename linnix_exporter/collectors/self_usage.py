"""The "self" collector: the exporter's own CPU time and resident memory
(kernel/self_usage.py reads getrusage and /proc/self/statm), and from the same read
Prometheus' standard process_* families. Read first in every tick: the tick's own cost
then lands in the next tick, and the figure lies as close as possible to the moment the
consumer asked."""

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
    # Prometheus' standard process families (client_python's ProcessCollector names,
    # help and types): generic exporter dashboards and alerts read these. CPU and RSS
    # are the two figures above under their usual names, so they are not pushed again
    # (process.cpu.time and process.memory.usage carry them over OTLP).
    F(
        "process_cpu_seconds_total",
        None,
        "counter",
        "s",
        "Total user and system CPU time spent in seconds, including helper processes "
        "the exporter started and reaped (the sum of linnix_exporter_cpu_seconds_total).",
    ),
    F(
        "process_resident_memory_bytes",
        None,
        "gauge",
        "By",
        "Resident memory size in bytes (the exporter; a helper only while it runs, "
        "under its own pid).",
    ),
    F(
        "process_virtual_memory_bytes",
        "process.memory.virtual",
        "updown",
        "By",
        "Virtual memory size in bytes.",
    ),
    F(
        "process_open_fds",
        "process.unix.file_descriptor.count",
        "updown",
        "{file_descriptor}",
        "Number of open file descriptors.",
    ),
    F(
        "process_max_fds",
        None,
        "gauge",
        "{file_descriptor}",
        "Maximum number of open file descriptors.",
    ),
    F(
        "process_start_time_seconds",
        None,
        "gauge",
        "s",
        "Start time of the process since unix epoch in seconds.",
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    if not tick.ok(SELF):
        return
    u = tick.snapshot.self_usage
    yield fig("linnix_exporter_cpu_seconds_total", u.user_seconds, "user")
    yield fig("linnix_exporter_cpu_seconds_total", u.system_seconds, "system")
    yield fig("linnix_exporter_resident_memory_bytes", u.rss_bytes)
    yield fig("process_cpu_seconds_total", u.cpu_seconds)
    yield fig("process_resident_memory_bytes", u.rss_bytes)
    yield fig("process_virtual_memory_bytes", u.virtual_bytes)
    yield fig("process_open_fds", u.open_fds)
    yield fig("process_max_fds", u.max_fds)
    yield fig("process_start_time_seconds", u.start_time_seconds)
