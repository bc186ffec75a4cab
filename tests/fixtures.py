"""Hand-built snapshots for the pure-logic tests: every expected figure in the tests is
worked out by hand from these numbers, not by calling the code under test."""

from __future__ import annotations

from types import MappingProxyType

from linnix_exporter.snapshot import (
    LIFETIME_SLOTS,
    CommCounts,
    NodeMemory,
    Owner,
    ProbeCounts,
    ProgramStat,
    SelfUsage,
    Snapshot,
    StatsState,
)


def prog(
    pid: int,
    rt: int,
    cnt: int,
    *,
    ours: bool = False,
    load: int = 1_000,
    name: str = "p",
    ptype: str = "tracepoint",
    misses: int = 0,
    owners: tuple[Owner, ...] | None = None,
    jited: int = 0,
    map_ids: tuple[int, ...] = (),
    map_memory: int = 0,
) -> ProgramStat:
    return ProgramStat(
        id=pid,
        name=name,
        type=ptype,
        tag=f"{pid:016x}",
        load_time_ns=load,
        run_time_ns=rt,
        run_cnt=cnt,
        recursion_misses=misses,
        ours=ours,
        owners=(Owner(100 + pid, "agent"),) if owners is None else owners,
        jited_bytes=jited,
        map_ids=map_ids,
        map_memory_bytes=map_memory,
    )


def probes(
    forks: int = 0,
    by_comm: dict[str, CommCounts] | None = None,
    slots: dict[int, int] | None = None,
    life_ns: int = 0,
) -> ProbeCounts:
    s = [0] * LIFETIME_SLOTS
    for i, n in (slots or {}).items():
        s[i] = n
    return ProbeCounts(
        forks=forks,
        execs=forks,
        exits=forks,
        exited_cpu_ns=0,
        by_comm=MappingProxyType(by_comm or {}),
        lifetime_slots=tuple(s),
        lifetime_sum_ns=life_ns,
    )


def snap(
    t: float,
    programs: list[ProgramStat],
    cpu: float,
    *,
    cpus: int = 2,
    boot: int = 0,
    ours: frozenset[int] = frozenset(),
    probe_counts: ProbeCounts | None = None,
    stats: StatsState | None = None,
    memory: NodeMemory | None = None,
) -> Snapshot:
    return Snapshot(
        monotonic=t,
        wall_time=1_700_000_000 + t,
        boottime_ns=boot,
        online_cpus=cpus,
        programs=tuple(programs),
        self_usage=SelfUsage(
            cpu * 0.75, cpu * 0.25, 20 << 20, 260 << 20, 27, 1024.0, 1_699_999_000.0
        ),
        stats=stats or StatsState(True, "enable_stats_fd"),
        probes=probe_counts,
        probe_program_ids=ours,
        memory=memory,
    )
