"""The exporter's own cost: CPU to the nanosecond, and RSS, with few syscalls per read.

CPU is CLOCK_PROCESS_CPUTIME_ID (the sum of every thread's sum_exec_runtime, dead threads
included, nanosecond-exact and up to date for the running thread), split into user and
system by getrusage's ratio, plus the CPU of reaped children (the bcc compile children
are part of what the exporter costs). getrusage's own sum lags the running thread by up
to a scheduler tick, so it only provides the split. RSS comes from /proc/self/statm,
opened once and re-read with pread (one syscall instead of open/read/close).

The same read gives what Prometheus' standard process_* families report (client_python's
ProcessCollector reads them from /proc/self/stat, /proc/self/limits and a listing of
/proc/self/fd: five file reads per scrape); here they cost two more syscalls per tick:
virtual size is the first field of the statm line already read, open fds one stat() of
/proc/self/fd (its size is the number of open fds since Linux 6.2; a listing before),
max fds one getrlimit(). The start time is read once.
"""

from __future__ import annotations

import os
import resource
import time

from linnix_exporter.snapshot import NS, SelfUsage

_PAGE = os.sysconf("SC_PAGE_SIZE")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_time_seconds(stat_line: str, now_wall: float, now_boottime: float) -> float:
    """Unix time a process started, from its /proc/PID/stat line: `starttime` (field 22)
    is clock ticks after boot on CLOCK_BOOTTIME, so it is placed against a boottime/wall
    pair read together, to a clock tick (10 ms). client_python adds it to /proc/stat
    `btime`, which is whole seconds (up to 1 s early)."""
    ticks = int(stat_line.rsplit(")", 1)[1].split()[19])  # after "comm)": field 3 first
    return now_wall - (now_boottime - ticks / _CLK_TCK)


def open_fds() -> int:
    """Open file descriptors of this process: st_size of /proc/self/fd (Linux 6.2+; one
    syscall), else a listing minus the one fd the listing itself holds open."""
    size = os.stat("/proc/self/fd").st_size
    return size if size > 0 else len(os.listdir("/proc/self/fd")) - 1


def max_fds() -> float:
    """The soft RLIMIT_NOFILE (what /proc/self/limits calls "Max open files"): opening
    more fails with EMFILE. Read every time: prlimit(1) can change it from outside."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return float("inf") if soft == resource.RLIM_INFINITY else float(soft)


class SelfUsageReader:
    def __init__(self) -> None:
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._user = self._system = 0.0
        with open("/proc/self/stat") as f:
            stat = f.read()
        self._start = start_time_seconds(stat, time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))

    def read(self) -> SelfUsage:
        total = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID) / NS
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        user, system = self._split(total, me.ru_stime)
        statm = os.pread(self._statm, 64, 0).split()  # size resident shared ... (pages)
        return SelfUsage(
            user_seconds=user + kids.ru_utime,
            system_seconds=system + kids.ru_stime,
            rss_bytes=int(statm[1]) * _PAGE,
            virtual_bytes=int(statm[0]) * _PAGE,
            open_fds=open_fds(),
            max_fds=max_fds(),
            start_time_seconds=self._start,
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
