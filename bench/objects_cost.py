"""What reading kernel memory and full names costs (kernel/bpf_objects.py).

With N trivial programs (15-character names, so the full-name rule is checked) and N
array maps loaded, in one run:
- details: ObjectsReader.read_details per program (open by id, two OBJ_GET_INFO_BY_FD,
  close): paid once per program, when it appears;
- memlock: a first map_memory() per map (GET_NEXT_ID, GET_FD_BY_ID, read fdinfo,
  close), a new reader each round: paid at start and for each new map; after it, maps
  whose memlock cannot change are only walked by id (bench/crowded_node.py prints both);
- roll-up: OwnerRollup.update on a tick where one program ran and one where all ran;
- ticks: ProgramPass.rows() (the daemon's programs -> owners -> rows) on an idle tick
  (nothing changed: no memory read) and on a refresh tick (owner scan + the map read:
  new maps and those whose memlock can grow), interleaved.
CPU time of this process (getrusage, user + system), mean of ROUNDS.

Usage: python -m bench.objects_cost [N ...]   (default 100 1000)
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable

from bench.common import cpu_seconds, header
from linnix_exporter.kernel.bpf_objects import ObjectsReader
from linnix_exporter.kernel.progstats import OwnerScanner, ProgramPass, ProgramReads
from linnix_exporter.owners import OwnerRollup
from linnix_exporter.rates import compute_rates
from tests.fixtures import snap
from tests.support import bpf_maps, trivial_prog

ROUNDS = 20


def create_array(entries: int = 64) -> int:
    return bpf_maps.create(bpf_maps.BPF_MAP_TYPE_ARRAY, 4, 8, entries, name="")


def _mean_cpu(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    out = []
    for _ in range(rounds):
        c0 = cpu_seconds()
        fn()
        out.append(cpu_seconds() - c0)
    return statistics.mean(out)


def measure(n: int) -> dict[str, float]:
    progs = trivial_prog.load_many(n, prefix="lnx_objbench_xx")  # 15 characters
    maps = [create_array() for _ in range(n)]
    try:
        reader = ProgramPass(ProgramReads(), OwnerScanner(3600))
        rows = reader.rows()
        # An owner scan (so every map's memlock) on every read: refresh 0, no pause.
        rescan = ProgramPass(ProgramReads(), OwnerScanner(0.0, budget=math.inf))
        rescan.rows()
        ids = [p.id for p in rows]
        objects = ObjectsReader()
        n_maps = len(objects.map_memory())

        def details() -> None:
            for i in ids:
                objects.read_details(i)

        def idle() -> None:
            reader.rows()

        def refresh() -> None:
            rescan.rows()

        def refresh_without_memory() -> None:
            built = rescan._rows
            saved = built._read_memlock
            built._read_memlock = lambda: built._memlock  # type: ignore[method-assign]
            try:
                rescan.rows()
            finally:
                built._read_memlock = saved  # type: ignore[method-assign]

        roll = OwnerRollup(50)
        a = snap(0.0, list(rows), 0.0, memory=reader.memory)
        b = snap(1.0, list(rows), 0.0, memory=reader.memory)
        busy = snap(2.0, [p._replace(run_time_ns=p.run_time_ns + 100) for p in rows], 0.0, boot=1)
        idle_rates, busy_rates = compute_rates(a, b), compute_rates(b, busy)
        roll.update(rows, idle_rates, reader.memory)
        roll_idle = _mean_cpu(lambda: roll.update(rows, idle_rates, reader.memory), 200)
        roll_busy = _mean_cpu(lambda: roll.update(busy.programs, busy_rates, reader.memory), 200)

        idle_s, refresh_s, bare_s = [], [], []
        for _ in range(ROUNDS):  # interleaved: the machine's noise hits all three
            idle_s.append(_mean_cpu(idle, 1))
            refresh_s.append(_mean_cpu(refresh, 1))
            bare_s.append(_mean_cpu(refresh_without_memory, 1))
        return {
            "programs": len(ids),
            "maps": n_maps,
            "details_us_per_program": _mean_cpu(details, 5) / len(ids) * 1e6,
            "memlock_us_per_map": _mean_cpu(lambda: ObjectsReader().map_memory(), 5) / n_maps * 1e6,
            "rollup_idle_us": roll_idle * 1e6,
            "rollup_busy_us": roll_busy * 1e6,
            "idle_tick_ms": statistics.mean(idle_s) * 1e3,
            "refresh_tick_ms": statistics.mean(refresh_s) * 1e3,
            "refresh_tick_no_memory_ms": statistics.mean(bare_s) * 1e3,
        }
    finally:
        trivial_prog.close_all(progs)
        for fd in maps:
            os.close(fd)


def main(argv: list[str]) -> None:
    counts = [int(a) for a in argv] or [100, 1000]
    print(header("python -m bench.objects_cost " + " ".join(map(str, counts))))
    print(f"rounds: {ROUNDS}, started {time.strftime('%H:%M:%S')}")
    print(
        "| programs (all) | maps (all) | details/program | memlock/map | roll-up, one ran "
        "| roll-up all ran | idle tick | refresh tick | refresh tick without memory |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        r = measure(n)
        print(
            f"| {r['programs']:.0f} | {r['maps']:.0f} | {r['details_us_per_program']:.2f} µs "
            f"| {r['memlock_us_per_map']:.2f} µs | {r['rollup_idle_us']:.1f} µs "
            f"| {r['rollup_busy_us']:.1f} µs | {r['idle_tick_ms']:.2f} ms "
            f"| {r['refresh_tick_ms']:.2f} ms | {r['refresh_tick_no_memory_ms']:.2f} ms |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
