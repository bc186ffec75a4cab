"""Bench helpers: CPU clocks, machine facts for the report header."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel_helpers import REPO, KeepAlive, ThreadStat, thread_stats


def cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


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
        f"command: {command}\n"
        f"load average at start: {loadavg()}"
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


@contextlib.contextmanager
def tree_at(rev: str) -> Iterator[Path]:
    """The repository at `rev` in a temporary directory: a daemon started with that as
    its working directory runs that code (python -m puts the cwd first on sys.path, and
    the bcc loader children inherit it through PYTHONPATH)."""
    with tempfile.TemporaryDirectory(prefix="linnix-rev-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def rev_name(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@dataclass
class PeriodicScraper:
    """Scrapes /metrics every `every` s over one keep-alive connection, as Prometheus
    does, in a thread; keeps the first and last parsed scrape."""

    port: int
    every: float
    stop: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def start(self) -> PeriodicScraper:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = KeepAlive(self.port)
        try:
            while not self.stop.is_set():
                m = conn.metrics()
                self.first = self.first or m
                self.last = m
                self.count += 1
                self.stop.wait(self.every)
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)


def cpu_by_thread(
    a: dict[int, ThreadStat], b: dict[int, ThreadStat]
) -> tuple[float, int, dict[str, float]]:
    """Run seconds and voluntary switches of the threads present in both readings, and
    run seconds by thread name. Threads that came or went are reported, not hidden."""
    common = set(a) & set(b)
    run = sum(b[t].run_ns - a[t].run_ns for t in common) / 1e9
    switches = sum(b[t].voluntary_switches - a[t].voluntary_switches for t in common)
    by_name: dict[str, float] = {}
    for t in common:
        key = b[t].comm
        by_name[key] = by_name.get(key, 0.0) + (b[t].run_ns - a[t].run_ns) / 1e9
    for t in set(a) ^ set(b):
        by_name[f"({(a.get(t) or b[t]).comm}: came or went)"] = 0.0
    return run, switches, by_name


__all__ = ["cpu_by_thread", "thread_stats"]
