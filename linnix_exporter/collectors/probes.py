"""The "probes" collector: the Linnix process probes' maps (kernel/probes.py): forks,
execs and exits on the node and per command, exited tasks' CPU, and process lifetimes.
Read before the program statistics, so the probe counts are no newer than the run
times read after them. Disabled (--no-collector.probes, or --no-probes.enabled), the
probes are not loaded at all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import OTHER, F, Figure, FigureMaker, HistogramFigure
from linnix_exporter.snapshot import NS, ProbeCounts
from linnix_exporter.tick import PROBES, Tick

NAME = PROBES
# Lifetime buckets: kernel slot i holds lifetimes in [2^i, 2^(i+1)) ns, so its upper
# bound is le = 2^(i+1) ns. Exported 2^17 ns (131 us) .. 2^42 ns (73 min); shorter
# lifetimes fold into the first bucket, longer ones only into +Inf.
LIFETIME_LE_EXPONENTS = range(17, 43)


class ProbeSource(Protocol):
    @property
    def program_ids(self) -> frozenset[int]: ...

    def read(self) -> ProbeCounts: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_process_forks_total",
        "linnix.process.forks",
        "counter",
        "{task}",
        "Tasks created (sched_process_fork; threads included).",
    ),
    F(
        "linnix_process_execs_total",
        "linnix.process.execs",
        "counter",
        "{exec}",
        "Successful execs (sched_process_exec).",
    ),
    F(
        "linnix_process_exits_total",
        "linnix.process.exits",
        "counter",
        "{task}",
        "Tasks that exited (sched_process_exit; threads included).",
    ),
    F(
        "linnix_process_comm_forks_total",
        "linnix.process.comm.forks",
        "counter",
        "{task}",
        "Forks by the forking task's command name.",
        ("comm",),
        ("process.command",),
    ),
    F(
        "linnix_process_comm_execs_total",
        "linnix.process.comm.execs",
        "counter",
        "{exec}",
        "Execs by the new command name.",
        ("comm",),
        ("process.command",),
    ),
    F(
        "linnix_process_comm_exits_total",
        "linnix.process.comm.exits",
        "counter",
        "{task}",
        "Exits by the exiting task's command name.",
        ("comm",),
        ("process.command",),
    ),
    F(
        "linnix_exited_task_cpu_seconds_total",
        "linnix.process.exited.cpu.time",
        "counter",
        "s",
        "CPU time (sum_exec_runtime) of tasks that exited, by command name: catches "
        "short-lived processes that /proc polling misses.",
        ("comm",),
        ("process.command",),
    ),
    F(
        "linnix_process_unlisted_comms",
        "linnix.process.comms.unlisted",
        "gauge",
        "{comm}",
        'Command names counted in comm="[other]" instead of their own series.',
    ),
    F(
        "linnix_process_lifetime_seconds",
        "linnix.process.lifetime",
        "histogram",
        "s",
        "Lifetime of processes (fork to exit of the thread-group leader), log2 buckets.",
    ),
)


def lifetime_buckets(slots: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """Cumulative (le seconds, count) pairs from the kernel's log2 slots."""
    out = [((2**exp) / NS, float(sum(slots[:exp]))) for exp in LIFETIME_LE_EXPONENTS]
    out.append((float("inf"), float(sum(slots))))
    return tuple(out)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure | HistogramFigure]:
    pc = tick.snapshot.probes
    if pc is None or not tick.ok(PROBES):
        return
    yield fig("linnix_process_forks_total", pc.forks)
    yield fig("linnix_process_execs_total", pc.execs)
    yield fig("linnix_process_exits_total", pc.exits)
    if tick.comms is not None:
        for comm, (forks, execs, exits, cpu_ns) in [
            *sorted(tick.comms.listed.items()),
            (OTHER, tick.comms.rest),
        ]:
            yield fig("linnix_process_comm_forks_total", forks, comm)
            yield fig("linnix_process_comm_execs_total", execs, comm)
            yield fig("linnix_process_comm_exits_total", exits, comm)
            yield fig("linnix_exited_task_cpu_seconds_total", cpu_ns / NS, comm)
        yield fig("linnix_process_unlisted_comms", tick.comms.rest_keys)
    lifetime = FAMILIES[-1]
    assert lifetime.prom == "linnix_process_lifetime_seconds"
    yield HistogramFigure(
        lifetime,
        lifetime_buckets(pc.lifetime_slots),
        float(pc.lifetime_count),
        pc.lifetime_sum_ns / NS,
    )
