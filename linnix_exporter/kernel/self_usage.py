"""The exporter's own cost, from getrusage (µs resolution, all threads)."""

from __future__ import annotations

import os
import resource

from linnix_exporter.snapshot import SelfUsage

_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_self_usage() -> SelfUsage:
    """CPU of this process plus every child it has reaped (the bcc compile child is
    part of what the exporter costs), and the resident set size now."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return SelfUsage(
        user_seconds=me.ru_utime + kids.ru_utime,
        system_seconds=me.ru_stime + kids.ru_stime,
        rss_bytes=rss_pages * _PAGE,
    )
