"""Bench helpers: CPU clocks, machine facts for the report header."""

from __future__ import annotations

import datetime
import os
import platform
import resource


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def header(command: str) -> str:
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return (
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}\n"
        f"machine: {os.cpu_count()} CPUs, {model}\n"
        f"kernel: {platform.release()}\n"
        f"python: {platform.python_version()}\n"
        f"command: {command}"
    )
