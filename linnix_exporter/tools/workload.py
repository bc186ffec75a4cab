"""Process storms for `prove` and bench/storm_overhead.py: fork/exec at a paced rate or
as fast as the machine goes.

- paced (a number R): `python -m linnix_exporter.tools.workload --rate R` spawns /bin/true
  R times a second (posix_spawn, i.e. clone(CLONE_VFORK) + exec, then waitpid) from a few
  threads on an absolute schedule, until SIGTERM; it then prints one JSON line with the
  spawns it completed. In a process of its own so that its GIL and CPU never delay the
  sampler in `prove`.
- max: `stress-ng --fork N` (fork + exit, no exec: the cheapest task life, so where the
  probes weigh most) beside a shell loop exec'ing /bin/true (fork + exec + exit: every
  probe fires), N = online CPUs. stress-ng will not run its exec stressor as root, hence
  the shell loop. Without stress-ng, N shell loops.

Every storm runs in its own session (process group), so stopping or an interrupted run
can kill whatever it left with one killpg, and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

TRUE = "/bin/true"
# Pacing: one worker keeps up with ~1,500 spawns/s on this project's VMs; more workers
# than needed only add context switches.
SPAWNS_PER_WORKER = 500
MAX_WORKERS = 8
# Behind schedule by more than this, the spawner drops the backlog instead of bursting.
MAX_LAG_SECONDS = 1.0
GROUP_GONE_TIMEOUT = 5.0
# The shell loop counts its iterations and prints the count when told to stop; the trap
# runs once the /bin/true in flight has been reaped.
SH_LOOP = "n=0; trap 'echo \"$n\"; exit 0' TERM; while :; do /bin/true; n=$((n+1)); done"


def workers_for(rate: float) -> int:
    return max(1, min(MAX_WORKERS, math.ceil(rate / SPAWNS_PER_WORKER)))


def parse_rate(text: str) -> float | None:
    """'1000' -> 1000.0; 'max' -> None (as fast as it goes)."""
    t = text.strip().lower()
    if t == "max":
        return None
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"invalid rate {text!r} (a number of spawns per second, or max)") from None
    if not 0 < value <= 1_000_000 or not math.isfinite(value):
        raise ValueError(f"rate must be in (0, 1000000], got {text!r}")
    return value


def rate_label(rate: float | None) -> str:
    return "max" if rate is None else f"{rate:g}"


@dataclass(frozen=True, slots=True)
class StormResult:
    """What a storm did: spawns it completed (None if it could not tell), over how long."""

    label: str
    spawns: int | None
    seconds: float
    parts: tuple[str, ...]

    @property
    def per_second(self) -> float | None:
        return None if self.spawns is None or self.seconds <= 0 else self.spawns / self.seconds


class _Part:
    """One child of a storm, in its own session."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def output(self, timeout: float) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.proc.communicate()
        return out or ""

    def kill(self) -> None:
        """SIGKILL the part's whole session (its own children too), reap it, and wait
        until nothing of the session is left (orphans are reaped by init)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        deadline = time.monotonic() + GROUP_GONE_TIMEOUT
        while session_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def session_members(sid: int, proc: str = "/proc") -> list[int]:
    """Processes (zombies included) still in session `sid`."""
    out = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{proc}/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6: session id
            out.append(int(entry.name))
    return out


class Storm:
    """A running storm: `Storm.start(rate, seconds)`, then `stop()` -> StormResult.

    `seconds` is how long it is meant to run: stress-ng is given it as --timeout (it
    writes its counts only when it ends by itself); the others run until stop().
    """

    def __init__(self, rate: float | None, seconds: float, cpus: int) -> None:
        self.rate = rate
        self.label = rate_label(rate)
        self._parts: list[_Part] = []
        self._yaml: str | None = None
        self.started = time.monotonic()
        try:
            if rate is not None:
                argv = [sys.executable, "-m", "linnix_exporter.tools.workload"]
                argv += ["--rate", repr(rate), "--workers", str(workers_for(rate))]
                self._parts.append(_Part("spawner", argv))
            elif shutil.which("stress-ng"):
                fd, self._yaml = tempfile.mkstemp(prefix="linnix-prove-", suffix=".yaml")
                os.close(fd)
                argv = ["stress-ng", "--fork", str(cpus), "--timeout", f"{math.ceil(seconds)}s"]
                # No --quiet: it also drops the metrics from the YAML report.
                argv += ["--metrics-brief", "--yaml", self._yaml]
                self._parts.append(_Part("stress-ng", argv))
                self._parts.append(_Part("sh", ["sh", "-c", SH_LOOP]))
            else:
                self._parts += [_Part("sh", ["sh", "-c", SH_LOOP]) for _ in range(cpus)]
        except BaseException:
            self.kill()
            raise

    @classmethod
    def start(cls, rate: float | None, seconds: float, cpus: int) -> Storm:
        return cls(rate, seconds, cpus)

    def stop(self, timeout: float = 30.0) -> StormResult:
        """Stop and count. stress-ng is waited for (it stops at its --timeout)."""
        elapsed = time.monotonic() - self.started
        for p in self._parts:
            if p.name != "stress-ng":
                p.signal(signal.SIGTERM)
        total: int | None = 0
        for p in self._parts:
            out = p.output(timeout)
            count = _count(p.name, out, self._yaml)
            total = None if total is None or count is None else total + count
            if p.name == "spawner":
                # Its own clock: it starts spawning only once Python has started.
                elapsed = _spawner_seconds(out) or elapsed
            p.kill()  # anything it left behind in its session
        self._cleanup()
        return StormResult(self.label, total, elapsed, tuple(p.name for p in self._parts))

    def kill(self) -> None:
        """Interrupted: kill every part's session, count nothing."""
        for p in self._parts:
            p.kill()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._yaml is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._yaml)
            self._yaml = None


def _count(name: str, out: str, yaml_path: str | None) -> int | None:
    """Spawns a part reports: the spawner's JSON line, the shell's count, stress-ng's
    bogo ops (one per fork for the fork stressor) from its YAML report."""
    try:
        if name == "spawner":
            return int(json.loads(out.strip().splitlines()[-1])["spawns"])
        if name == "sh":
            return int(out.strip().splitlines()[-1])
        if name == "stress-ng" and yaml_path is not None:
            with open(yaml_path) as f:
                return parse_stress_ng_ops(f.read())
    except (ValueError, IndexError, KeyError, OSError):
        return None
    return None


def _spawner_seconds(out: str) -> float | None:
    try:
        return float(json.loads(out.strip().splitlines()[-1])["seconds"])
    except (ValueError, IndexError, KeyError, TypeError):
        return None


def parse_stress_ng_ops(text: str) -> int | None:
    """Sum of `bogo-ops:` in stress-ng's --yaml report (no YAML parser needed)."""
    ops = [
        int(line.split(":", 1)[1])
        for line in text.splitlines()
        if line.strip().startswith("bogo-ops:")
    ]
    return sum(ops) if ops else None


# ---- the paced spawner (child process) ----------------------------------------------


def spawn_loop(rate: float | None, workers: int, stop: threading.Event) -> tuple[int, int]:
    """posix_spawn /bin/true from `workers` threads until `stop`: (spawns, errors).

    Paced on an absolute schedule (worker i at t0 + i/rate + k*workers/rate), so the
    average rate is exact while the machine keeps up; a worker more than
    MAX_LAG_SECONDS behind restarts its schedule from now rather than bursting.
    """
    counts = [0] * workers
    errors = [0] * workers
    period = workers / rate if rate else 0.0
    t0 = time.monotonic()

    def worker(i: int) -> None:
        due = t0 + (i / rate if rate else 0.0)
        while not stop.is_set():
            if period:
                delay = due - time.monotonic()
                if delay > 0:
                    if stop.wait(delay):
                        break
                elif delay < -MAX_LAG_SECONDS:
                    due = time.monotonic()
                due += period
            try:
                pid = os.posix_spawn(TRUE, [TRUE], {})
                os.waitpid(pid, 0)
            except OSError:
                errors[i] += 1
                continue
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    # Python runs signal handlers in the main thread only, when it runs bytecode. The
    # kernel may deliver SIGTERM to a worker thread; a main thread blocked in a plain
    # join() then never ran the handler that sets `stop`, and the storm ran on until
    # killed (1 stop in 3 at 3000/s on a busy node). Joining with a timeout wakes it.
    for t in threads:
        while t.is_alive():
            t.join(0.1)
    return sum(counts), sum(errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m linnix_exporter.tools.workload")
    ap.add_argument("--rate", type=float, help="spawns per second (default: as fast as it goes)")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    rate: float | None = args.rate
    workers = args.workers or (workers_for(rate) if rate else os.cpu_count() or 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started = time.monotonic()
    spawns, errors = spawn_loop(rate, workers, stop)
    seconds = time.monotonic() - started
    print(json.dumps({"spawns": spawns, "errors": errors, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
