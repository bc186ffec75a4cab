"""Bench helpers: CPU clocks, machine facts for the report header."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
from pathlib import Path


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def code_version() -> str:
    """The commit the bench ran at, '+changes' when the tree differed from it."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + ("+changes" if dirty else "")


def header(command: str) -> str:
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    return (
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}\n"
        f"machine: {os.cpu_count()} CPUs, {model}\n"
        f"kernel: {platform.release()}\n"
        f"python: {platform.python_version()}\n"
        f"code: {code_version()}\n"
        f"command: {command}"
    )


RESULTS = Path(__file__).resolve().parent / "results"
HEADER_KEYS = ("date:", "machine:", "kernel:", "command:")


def with_header(output: str, command: str) -> str:
    """The raw output of one bench run as committed under bench/results/: it must open
    with date, machine, kernel and command; a script that printed no header gets one."""
    head = output.splitlines()[:8]
    if all(any(ln.startswith(k) for ln in head) for k in HEADER_KEYS):
        return output
    return header(command) + "\n" + output


def save_result(name: str, output: str, command: str) -> Path:
    """Write bench/results/<name>.txt atomically (a failed run never leaves half a file)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(with_header(output, command))
    tmp.replace(path)
    return path
