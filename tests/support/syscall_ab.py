"""The syscall-tracer A/B: what statistics cost a real traced hook, measured from outside.

bpftrace counts `raw_syscalls:sys_enter`; `dd bs=1` makes two syscalls per byte; dd's own
CPU time (getrusage of the reaped child, ns-exact) per syscall is compared with
statistics off and on, alternated, with one enable-stats fd of our own held only during
the "on" arms. The tracer's run_cnt is the witness that an "off" arm was off: it does
not move unless someone else holds statistics on, and such a round is measured again.
Used by tests/test_stats_cost.py and bench/stats_cost.py.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from linnix_exporter.kernel.bpf_syscall import ProgReader
from linnix_exporter.kernel.stats_cost import OwnStatsFd
from tests.kernel_helpers import held_by, stop_process
from tests.support.statsprobe import stats_holders, wait_stats_free

TRACER = "tracepoint:raw_syscalls:sys_enter { @syscalls = count(); }"


@contextmanager
def syscall_tracer(timeout: float = 30.0) -> Iterator[int]:
    """bpftrace counting every syscall; yields its program id once attached."""
    proc = subprocess.Popen(
        ["bpftrace", "-e", TRACER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (ids := held_by(proc.pid)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bpftrace did not attach: {proc.stderr.read()[-500:]}")
            time.sleep(0.1)
        (prog_id,) = ids
        yield prog_id
    finally:
        stop_process(proc)


def dd_ns_per_syscall(count: int) -> float:
    """CPU ns per syscall of `dd bs=1 count=N` (2N syscalls: one read, one write a byte)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Every arm on the same CPU: the two vCPUs of these VMs can differ by hundreds of ns
    # a syscall for minutes at a time, and an unpinned dd landing on one CPU for "off"
    # and the other for "on" read as a -250 or +420 ns "cost" (seen in a CI run).
    cpu = max(os.sched_getaffinity(0))
    subprocess.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={count}"],
        stderr=subprocess.DEVNULL,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / (2 * count) * 1e9


@dataclass
class ABResult:
    none_ns: float  # median ns/syscall with no tracer
    off_ns: list[float] = field(default_factory=list)  # per round, tracer, stats off
    on_ns: list[float] = field(default_factory=list)  # per round, tracer, stats on
    tracer_run_ns: list[float] = field(default_factory=list)  # tracer's run_time/run_cnt
    discarded: int = 0  # rounds whose "off" arm was not off (another holder)

    @property
    def pair_diffs(self) -> list[float]:
        return [b - a for a, b in zip(self.off_ns, self.on_ns, strict=True)]

    @property
    def per_run_ns(self) -> float:
        """Median of the paired differences: each pair ran back to back, so a slow
        stretch of the machine moves both arms of a pair, not the difference."""
        return statistics.median(self.pair_diffs)


def syscall_ab(
    rounds: int, count: int, max_discarded: int = 20, holder_wait: float = 120.0
) -> ABResult:
    """The A/B, `rounds` valid off/on pairs. Raises RuntimeError if other holders keep
    statistics on through more than `max_discarded` rounds."""
    result = ABResult(none_ns=statistics.median(dd_ns_per_syscall(count) for _ in range(3)))
    reader = ProgReader()
    stats = OwnStatsFd()
    with syscall_tracer() as prog_id:

        def counters() -> tuple[int, int]:
            info = reader.info_by_id(prog_id)
            assert info is not None, "the tracer went away"
            return info.run_time_ns, info.run_cnt

        while len(result.off_ns) < rounds:
            wait_stats_free(holder_wait)
            _, c0 = counters()
            off = dd_ns_per_syscall(count)
            t1, c1 = counters()
            stats.on()
            try:
                on = dd_ns_per_syscall(count)
                t2, c2 = counters()
            finally:
                stats.off()
            if c1 != c0:
                result.discarded += 1
                if result.discarded > max_discarded:
                    raise RuntimeError(
                        f"statistics held on by others through {result.discarded} rounds: "
                        f"{stats_holders()}"
                    )
                continue
            result.off_ns.append(off)
            result.on_ns.append(on)
            result.tracer_run_ns.append((t2 - t1) / max(1, c2 - c1))
    return result


def tracer_count(prog_id: int) -> int:
    """The tracer's own count of syscalls (its per-CPU array map, summed), read with
    bpftool: it counts every run whether statistics are on or not, so it is the true
    run count to hold the sampled counters against."""
    prog = json.loads(_bpftool("prog", "show", "id", str(prog_id)))
    for map_id in prog.get("map_ids", []):
        info = json.loads(_bpftool("map", "show", "id", str(map_id)))
        if info.get("type") != "percpu_array":
            continue
        (entry,) = json.loads(_bpftool("map", "dump", "id", str(map_id)))
        return sum(
            int.from_bytes(bytes(int(b, 16) for b in v["value"]), "little") for v in entry["values"]
        )
    raise RuntimeError(f"no per-CPU count map on program {prog_id}")


def _bpftool(*args: str) -> str:
    return subprocess.run(
        ["bpftool", "-j", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout
