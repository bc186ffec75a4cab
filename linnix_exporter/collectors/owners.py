"""The "owners" collector: which processes hold each BPF program (a prog or link fd),
and where they run (kernel/progstats.OwnerScanner over the owners iterator or /proc,
kernel/attribution.py). Reads the ids the programs collector just read; labels those
programs (linnix_bpf_program_owner_info) and rolls them up by owner (owners.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import OTHER, OWNER_ATTRS, OWNER_LABELS, F, Figure, FigureMaker
from linnix_exporter.snapshot import NS, OwnerMap, ProgramStat
from linnix_exporter.tick import HOOKS, OWNERS, Tick

NAME = OWNERS


class OwnerSource(Protocol):
    def read(self, ids: frozenset[int]) -> OwnerMap: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_bpf_program_owner_info",
        "linnix.bpf.program.owner",
        "gauge",
        "1",
        "A process holding an fd (program or link) of a listed BPF program, with the "
        "container and Kubernetes pod it runs in (empty outside one).",
        ("id", "name", "owner_pid", "owner_comm", "container_id", "namespace", "pod"),
        (
            "bpf.program.id",
            "bpf.program.name",
            "process.pid",
            "process.command",
            "container.id",
            "k8s.namespace.name",
            "k8s.pod.name",
        ),
    ),
    F(
        "linnix_bpf_owner_run_time_seconds_total",
        "linnix.bpf.owner.run_time",
        "counter",
        "s",
        "Kernel run time of the BPF programs of one owner (each program counted once, "
        "under its lowest-pid holder; owner_comm=[none]: held by no process).",
        OWNER_LABELS,
        OWNER_ATTRS,
    ),
    F(
        "linnix_bpf_owner_cpu_ratio",
        "linnix.bpf.owner.cpu.ratio",
        "gauge",
        "1",
        "Kernel run time of one owner's BPF programs over the last interval as a share "
        "of the node.",
        OWNER_LABELS,
        OWNER_ATTRS,
    ),
    F(
        "linnix_bpf_owner_hook_seconds_total",
        "linnix.bpf.owner.hook",
        "counter",
        "s",
        "What reaching one owner's BPF programs through their hooks cost (each "
        "program's runs x its hook kind's calibrated cost; with --collector.hooks).",
        OWNER_LABELS,
        OWNER_ATTRS,
    ),
    F(
        "linnix_bpf_owner_map_memory_bytes",
        "linnix.bpf.owner.map.memory",
        "gauge",
        "By",
        "Kernel memory of the maps of one owner's BPF programs (each map once per owner).",
        OWNER_LABELS,
        OWNER_ATTRS,
    ),
    F(
        "linnix_bpf_owner_jited_bytes",
        "linnix.bpf.owner.jited",
        "gauge",
        "By",
        "JIT-compiled size of one owner's BPF programs.",
        OWNER_LABELS,
        OWNER_ATTRS,
    ),
)


def info_figures(p: ProgramStat, fig: FigureMaker) -> Iterator[Figure]:
    """One program's owners, served beside its own series."""
    for o in p.owners:
        yield fig(
            "linnix_bpf_program_owner_info",
            1,
            str(p.id),
            p.name,
            str(o.pid),
            o.comm,
            o.container_id,
            o.namespace,
            o.pod,
        )


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    """Programs rolled up by owner (owners.py), listed owners then "[other]"."""
    o, r = tick.owners, tick.rates
    if o is None:
        return
    rows = [(k, o.run_time_ns[k], o.interval_ns.get(k, 0)) for k in sorted(o.run_time_ns)]
    rows.append(((OTHER, "", ""), o.rest_run_time_ns, o.rest_interval_ns))
    for key, total_ns, interval_ns in rows:
        yield fig("linnix_bpf_owner_run_time_seconds_total", total_ns / NS, *key)
        if r is not None:
            yield fig("linnix_bpf_owner_cpu_ratio", r.node_ratio(interval_ns / NS), *key)
    # Hook seconds: only while the hooks collector prices hooks (absent: unknown).
    if tick.ok(HOOKS) and tick.snapshot.hooks is not None:
        for key in sorted(o.run_time_ns):
            yield fig("linnix_bpf_owner_hook_seconds_total", o.hook_ns.get(key, 0) / NS, *key)
        yield fig("linnix_bpf_owner_hook_seconds_total", o.rest_hook_ns / NS, OTHER, "", "")
    if tick.snapshot.memory is None:
        return
    for key in sorted(o.run_time_ns):
        yield fig("linnix_bpf_owner_map_memory_bytes", o.map_memory_bytes.get(key, 0), *key)
        yield fig("linnix_bpf_owner_jited_bytes", o.jited_bytes.get(key, 0), *key)
    yield fig("linnix_bpf_owner_map_memory_bytes", o.rest_map_memory_bytes, OTHER, "", "")
    yield fig("linnix_bpf_owner_jited_bytes", o.rest_jited_bytes, OTHER, "", "")
