"""The exporter's own cost: CPU to the nanosecond, and RSS, with few syscalls per read.

CPU is CLOCK_PROCESS_CPUTIME_ID (the sum of every thread's sum_exec_runtime, dead threads
included, nanosecond-exact and up to date for the running thread), split into user and
system by getrusage's ratio, plus the CPU of reaped children (the bcc compile children
are part of what the exporter costs). getrusage's own sum lags the running thread by up
to a scheduler tick, so it only provides the split. RSS comes from /proc/self/statm,
opened once and re-read with pread (one syscall instead of open/read/close).
"""

from __future__ import annotations

import os
import resource
import time

from linnix_exporter.snapshot import NS, SelfUsage

_PAGE = os.sysconf("SC_PAGE_SIZE")


class SelfUsageReader:
    def __init__(self) -> None:
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._user = self._system = 0.0

    def read(self) -> SelfUsage:
        total = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID) / NS
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        user, system = self._split(total, me.ru_stime)
        rss_pages = int(os.pread(self._statm, 64, 0).split()[1])
        return SelfUsage(
            user_seconds=user + kids.ru_utime,
            system_seconds=system + kids.ru_stime,
            rss_bytes=rss_pages * _PAGE,
        )

    def _split(self, total: float, stime: float) -> tuple[float, float]:
        """user + system = total, each never below its last value (both are exported as
        counters). getrusage's stime can catch up with time `total` already held as
        running, so total - stime alone can step back (seen as a counter reset by
        Prometheus); this is the kernel's own cputime_adjust rule."""
        system = min(max(stime, self._system), total)
        user = total - system
        if user < self._user:
            user = self._user
            system = total - user
        self._user, self._system = user, system
        return user, system

    def close(self) -> None:
        if self._statm >= 0:
            os.close(self._statm)
            self._statm = -1
