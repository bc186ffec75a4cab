"""What one tick's read of the probe maps costs the daemon: now (Probes.read: the
counters through mmap, the LRU fallback hash only once used, plus the four attachment
checks of probes_attached) against the read before the comm cache (git b420ef3: one
BPF_MAP_LOOKUP_BATCH per map on its three per-CPU maps, decoded the same way).

Both probe sets are attached at once and see the same events; a workload of 40
distinct comms forks first, so both hold a realistic spread of comms. CPU per read is
CLOCK_THREAD_CPUTIME_ID around the read (ns); bpf() calls are counted by wrapping the
module's syscall entry. Warm: the median of 300 back-to-back reads. Cold: one read
after 10 s asleep, as the daemon lives between ticks, the reads in rotated order,
median. The read now is also timed in its parts: the maps alone (and those split into
the mmapped counters and the LRU fallback hash), the four attachment checks of
probes_attached alone, and a bare Python call for scale.

Usage: python -m bench.probe_read_cost [--cold-rounds 6] [--idle 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bench.common import header
from bench.probe_cost import before_source
from linnix_exporter.kernel import _loader, bpf_syscall
from linnix_exporter.kernel.probes import Probes, _PerCpuMapReader
from linnix_exporter.snapshot import CommCounts

# Forks a child under each of N comms (prctl), so every probe set sees N comms.
COMMS = """
import ctypes, os, sys
prctl = ctypes.CDLL(None).prctl
for i in range(int(sys.argv[1])):
    prctl(15, f"lnx-read-{i:02d}".encode(), 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def before_reader(b: Any) -> Callable[[], object]:
    """The read as it was before the comm cache, on the old probes' three maps."""
    ncpus = bpf_syscall.possible_cpus()
    readers = {}
    for name in ("totals", "lifetime_hist", "comm_counts"):
        fd = b.get_table(name).map_fd
        readers[name] = _PerCpuMapReader(fd, bpf_syscall.map_info(fd), ncpus)
    comm_side = SimpleNamespace(_comm_reader=readers["comm_counts"])

    def read() -> object:
        slots = [0] * 64
        for _keys, vals, n in readers["lifetime_hist"].chunks():
            for i in range(n):
                slots[i] = sum(vals[i * ncpus : (i + 1) * ncpus])
        by_comm: dict[str, CommCounts] = {}
        Probes._read_comm_hash(comm_side, by_comm)  # type: ignore[arg-type]
        t = [0] * 5
        for _, vals, _ in readers["totals"].chunks():
            t = [sum(vals[f::5]) for f in range(5)]
        return t, by_comm, slots

    return read


class SyscallCounter:
    def __init__(self) -> None:
        self.calls = 0
        self._real = bpf_syscall._syscall

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self._real(*args)

    def per_read(self, read: Callable[[], object]) -> int:
        bpf_syscall._syscall = self  # type: ignore[assignment]
        try:
            self.calls = 0
            read()
            return self.calls
        finally:
            bpf_syscall._syscall = self._real


def cpu_ns(read: Callable[[], object]) -> int:
    t0 = time.thread_time_ns()
    read()
    return time.thread_time_ns() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold-rounds", type=int, default=6)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds asleep before a cold read")
    args = ap.parse_args()
    print(
        header(
            f"python -m bench.probe_read_cost --cold-rounds {args.cold_rounds} --idle {args.idle:g}"
        )
    )
    src = before_source()
    if src is None:
        raise SystemExit("needs a git checkout holding the old probes (bench.probe_cost)")
    old = _loader.compile_probes(1024, src=src)
    _loader.attach(old)
    try:
        with Probes.load() as probes:
            subprocess.run([sys.executable, "-c", COMMS, "40"], check=True)
            reads: dict[str, Callable[[], object]] = {
                "before (3 batch lookups)": before_reader(old),
                "now (maps + attachment checks)": probes.read,
                "now, maps alone (mmap + LRU fallback)": probes.read_maps,
                "now, counters alone (mmap)": lambda: probes._counters.read({}),
                "now, LRU fallback hash alone (read)": lambda: probes._read_comm_hash({}),
                "now, attachment checks alone": probes.attached_program_ids,
                "a bare Python call (baseline)": lambda: sum([1, 2, 3]),
            }
            now = probes.read()
            done = probes._counters.lru_marks()[0]
            print(f"comms held: {len(now.by_comm)}; LRU hash updates so far: {done}")
            counter = SyscallCounter()
            print("\n| read | bpf() calls | warm CPU µs (median of 300) |")
            print("|---|---:|---:|")
            for name, read in reads.items():
                warm = statistics.median(cpu_ns(read) for _ in range(300)) / 1e3
                print(f"| {name} | {counter.per_read(read)} | {warm:.1f} |")
            cold: dict[str, list[int]] = {n: [] for n in reads}
            print(f"\ncold reads, each after {args.idle:g} s asleep (µs of CPU):")
            for r in range(args.cold_rounds):
                order = list(cold)[r % len(cold) :] + list(cold)[: r % len(cold)]
                for name in order:
                    time.sleep(args.idle)
                    ns = cpu_ns(reads[name])
                    cold[name].append(ns)
                    print(f"round {r + 1} {name}: {ns / 1e3:.0f}", flush=True)
            print("\n| read | cold CPU µs, median | min | max |")
            print("|---|---:|---:|---:|")
            for name, v in cold.items():
                print(
                    f"| {name} | {statistics.median(v) / 1e3:.0f} | {min(v) / 1e3:.0f} | "
                    f"{max(v) / 1e3:.0f} |"
                )
    finally:
        _loader.detach(old)


if __name__ == "__main__":
    main()
