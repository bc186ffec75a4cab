"""Turning the kernel's BPF run-time statistics on, and leaving them as we found them.

Preferred: BPF_ENABLE_STATS, an fd that keeps stats on until it is closed, so they go
off by themselves even after SIGKILL. Fallback (kernels < 5.8, or the fd is denied):
the global sysctl kernel.bpf_stats_enabled, shared by every instance on the node (the
daemon, `top`, the `snapshot` / `prove` tools): markers.py keeps the one value to
restore, so the last instance out puts back what the first one in found.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from linnix_exporter.kernel.bpf_syscall import BpfError, enable_stats
from linnix_exporter.kernel.stats_markers import MARKER_DIR, Group
from linnix_exporter.snapshot import StatsState

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")

METHODS = ("auto", "enable_stats_fd", "sysctl", "off")


class StatsSwitch:
    def __init__(self, sysctl: Path = SYSCTL, markers: Path = MARKER_DIR) -> None:
        self._sysctl = sysctl
        self._group = Group(sysctl, markers)
        self._fd: int | None = None
        self.method = "off"
        self.error = ""  # why the preferred method failed, for the log
        # Time stats were on (monotonic seconds), for ratios over the sampled part of an
        # interval: accumulated at each off(), plus the running stretch since on.
        self._on_total = 0.0
        self._on_since: float | None = None

    @property
    def marker(self) -> Path | None:
        """This instance's crash marker while it shares the sysctl, else None."""
        return self._group.marker

    def recover_after_crash(self) -> str | None:
        """Put back the sysctl value that killed instances left changed (markers whose
        owner is dead) when no live instance still wants it; returns the value written."""
        return self._group.recover()

    def enable(self, method: str = "auto") -> StatsState:
        if method not in METHODS:
            raise ValueError(f"unknown stats method {method!r}")
        if method in ("auto", "enable_stats_fd"):
            try:
                self._fd = enable_stats()
                self.method = "enable_stats_fd"
                self._on_since = time.monotonic()
                return self.state()
            except BpfError as e:
                self.error = f"BPF_ENABLE_STATS failed: {e.strerror}"
                if method == "enable_stats_fd":
                    return self.state()
        if method in ("auto", "sysctl"):
            self._enable_sysctl()
            if self.method != "off":
                self._on_since = time.monotonic()
        return self.state()

    def _enable_sysctl(self) -> None:
        try:
            self.method = "sysctl" if self._group.join() else "already_on"
        except OSError as e:
            self.error += f"; sysctl {self._sysctl}: {e.strerror}"
            self.method = "off"

    @property
    def can_toggle(self) -> bool:
        """Whether we may switch stats off and on again (sampling, calibration): only if
        we turned them on. `already_on` belongs to someone else."""
        return self.method in ("enable_stats_fd", "sysctl")

    @property
    def is_on(self) -> bool:
        return self._on_since is not None

    def _release(self) -> None:
        """Statistics off the way we turned them on: our fd closed, the sysctl put back."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif self._on_since is not None:
            # Off only if no other instance of ours wants it on (stats_markers.py).
            with contextlib.suppress(OSError):
                self._group.want(False)
        if self._on_since is not None:
            self._on_total += time.monotonic() - self._on_since
            self._on_since = None

    def off(self) -> None:
        """Stats off for now (they stay ours: on() turns them back on the same way)."""
        if self.can_toggle and self._on_since is not None:
            self._release()

    def on(self) -> None:
        """Stats on again after off(). Raises BpfError/OSError if the kernel refuses."""
        if not self.can_toggle or self._on_since is not None:
            return
        if self.method == "enable_stats_fd":
            self._fd = enable_stats()
        else:
            self._group.want(True)
        self._on_since = time.monotonic()

    def credit(self, seconds: float) -> None:
        """Count `seconds` of our "off" time as on: someone else held statistics on, so
        the kernel went on counting runs (sampled mode checks both ends of the gap)."""
        self._on_total += max(0.0, seconds)

    def on_seconds(self, now: float) -> float:
        """Seconds stats have been on since enable(), at monotonic time `now`."""
        running = max(0.0, now - self._on_since) if self._on_since is not None else 0.0
        return self._on_total + running

    def state(self, now: float | None = None) -> StatsState:
        on_seconds = self.on_seconds(time.monotonic() if now is None else now)
        if self.method == "enable_stats_fd":
            return StatsState(self._fd is not None, self.method, on_seconds)
        if self.method in ("sysctl", "already_on"):
            # Someone may switch the sysctl off under us: report what is true now.
            try:
                on = self._sysctl.read_text().strip() == "1"
            except OSError:
                on = False
            return StatsState(on, self.method, on_seconds)
        return StatsState(False, "off", on_seconds)

    def close(self) -> None:
        """Stats off again if we turned them on. Idempotent."""
        self._release()
        self._group.leave()
        self.method = "off"
