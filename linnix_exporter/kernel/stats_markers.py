"""The sysctl kernel.bpf_stats_enabled shared by every instance on a node.

The sysctl is one global switch, but several instances may use it at once (the daemon,
`linnix-exporter top`, the `snapshot` and `prove` tools). Each one that switches it on
keeps a marker file in MARKER_DIR holding the value to restore: the value the first one
in found. The sysctl reads 1 while any live instance wants statistics on, and goes back
to that value when the last one stops wanting them (leaves, or pauses in sampled mode).

A marker's owner is alive while it holds an flock on the marker file: the kernel drops
the lock when the process dies, even by SIGKILL, so a pid reused later or a pid seen from
another pid namespace (a pod sharing /run/linnix-exporter) can never pass for the owner.
The name carries the pid for people and a random token for uniqueness across namespaces.

Every change (join, pause, resume, leave, recovery) happens under an exclusive flock on
one lock file in the same folder, so two instances starting or stopping at once are
serialised. Not covered: another program writing the sysctl (an operator, an older
linnix-exporter); StatsSwitch.state() reports what the sysctl really reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MARKER_DIR = Path("/run/linnix-exporter")
PREFIX = "bpf_stats_enabled"
PAUSED = "paused"  # second line of a marker whose owner wants statistics off for now


@dataclass(frozen=True)
class Marker:
    path: Path
    orig: str  # the sysctl value to restore; "" if its owner died before writing it
    wants_on: bool


def markers(folder: Path = MARKER_DIR, pid: int | None = None) -> list[Path]:
    """Every marker file in `folder` (the one-file name of older versions included),
    or those of process `pid`."""
    pattern = f"{PREFIX}*.orig" if pid is None else f"{PREFIX}.{pid}.*.orig"
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def saved(pid: int, folder: Path = MARKER_DIR) -> list[str]:
    """The values process `pid`'s markers hold to restore (for people and tests)."""
    return [m.orig for p in markers(folder, pid) if (m := _read(p)) is not None]


def _read(path: Path) -> Marker | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    orig = lines[0].strip() if lines else ""
    return Marker(path, orig, PAUSED not in lines[1:])


def _owner_alive(path: Path) -> bool | None:
    """True if a process holds the marker's lock; False if not (we then remove it);
    None if it vanished. Called under the folder lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return True  # cannot tell: leave it be
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Group:
    """This instance's membership in the node's sysctl group."""

    def __init__(self, sysctl: Path, folder: Path = MARKER_DIR) -> None:
        self._sysctl = sysctl
        self._folder = folder
        self.marker: Path | None = None
        self._fd: int | None = None  # our marker, locked for our whole life
        self._orig = ""
        self._line = 0  # bytes of the orig line in our marker

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._folder / f"{PREFIX}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # the lock goes with the fd

    def _scan(self) -> tuple[list[Marker], list[Marker]]:
        """Other instances' markers: (live, dead). Dead ones are removed."""
        live: list[Marker] = []
        dead: list[Marker] = []
        for path in markers(self._folder):
            if path == self.marker:
                continue
            m = _read(path)
            alive = _owner_alive(path)
            if m is None or alive is None:
                continue
            if alive:
                live.append(m)
            else:
                dead.append(m)
                path.unlink(missing_ok=True)
        return live, dead

    def _settle(self, live: list[Marker], orig: str) -> str | None:
        """The sysctl back to `orig` unless a live instance still wants it on."""
        if not orig or any(m.wants_on for m in live):
            return None
        with contextlib.suppress(OSError):
            self._sysctl.write_text(orig)
        return orig

    def recover(self) -> str | None:
        """Markers left by killed instances removed; the sysctl put back to the value
        they saved if no live instance wants it on. Returns the value written."""
        if not self._folder.is_dir():
            return None
        try:
            with self._locked():
                return self._recover_locked()
        except OSError:
            return None  # a folder we cannot write: nothing of ours can be in it

    def _recover_locked(self) -> str | None:
        live, dead = self._scan()
        saved = [m.orig for m in dead if m.orig]
        if not saved:
            return None
        if self.marker is not None and self._wants_on():
            return None  # we keep it on ourselves
        return self._settle(live, saved[0])

    def join(self) -> bool:
        """Statistics on through the sysctl, as one of the group. False (nothing done)
        if the sysctl is already on and not by one of ours: not ours to restore."""
        if self._fd is not None:
            return True  # joined already
        self._folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._recover_locked()
            live, _ = self._scan()
            if live:
                orig = live[0].orig  # what the first one in found
            else:
                orig = self._sysctl.read_text().strip()
                if orig == "1":
                    return False
            self._create(orig)
            try:
                self._sysctl.write_text("1")
            except OSError:
                self._remove()
                raise
        return True

    def _create(self, orig: str) -> None:
        path = self._folder / f"{PREFIX}.{os.getpid()}.{secrets.token_hex(4)}.orig"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else holds it
        line = f"{orig}\n".encode()
        os.write(fd, line)
        self.marker, self._fd, self._orig, self._line = path, fd, orig, len(line)

    def _remove(self) -> None:
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
        self.marker, self._fd = None, None

    def _wants_on(self) -> bool:
        m = _read(self.marker) if self.marker is not None else None
        return m is not None and m.wants_on

    def want(self, on: bool) -> None:
        """Ours on again (sysctl 1; raises OSError if refused), or paused: the sysctl
        back to the saved value unless another live instance wants it on."""
        if self._fd is None:
            return
        with self._locked():
            # In place (the lock is on this file): the orig line is never rewritten.
            if on:
                self._sysctl.write_text("1")  # refused: we stay paused
                os.ftruncate(self._fd, self._line)
            else:
                os.ftruncate(self._fd, self._line)
                os.pwrite(self._fd, f"{PAUSED}\n".encode(), self._line)
                live, _ = self._scan()
                self._settle(live, self._orig)

    def leave(self) -> None:
        """Our marker gone; the sysctl back to the saved value if we were the last live
        instance wanting it on. Idempotent."""
        if self._fd is None:
            return
        try:
            with self._locked():
                self._remove()
                live, _ = self._scan()
                self._settle(live, self._orig)
        except OSError:  # the folder went away under us: put back what we saved
            self._remove()
            self._settle([], self._orig)
