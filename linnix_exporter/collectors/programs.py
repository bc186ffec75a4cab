"""The "programs" collector: every BPF program's kernel statistics (run time, runs,
recursion misses) through the stats iterator or the bpf() syscall
(kernel/progstats.ProgramReads), and, building the rows, each new program's details
and every map's memory at the owners' pace (kernel/progstats.ProgramRows): all of it
timed as this collector and failing alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.collectors import owners
from linnix_exporter.families import (
    OTHER_PROGRAM,
    PROGRAM_ATTRS,
    PROGRAM_LABELS,
    F,
    Figure,
    FigureMaker,
)
from linnix_exporter.prog_table import RawTable, run_time_of
from linnix_exporter.snapshot import NS, RawProg
from linnix_exporter.tick import OWNERS, PROGRAMS, Tick

NAME = PROGRAMS


class ProgramSource(Protocol):
    @property
    def method(self) -> str: ...

    def read(self) -> RawTable | list[RawProg]: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_bpf_read_method",
        "linnix.bpf.read_method",
        "gauge",
        "1",
        "How every program's statistics are read: iterator (one BPF iterator read) or "
        "syscall (bpf() calls per program).",
        ("method",),
        ("linnix.read.method",),
    ),
    F(
        "linnix_bpf_programs",
        "linnix.bpf.programs",
        "gauge",
        "{program}",
        "BPF programs loaded on the node.",
    ),
    F(
        "linnix_bpf_unlisted_programs",
        "linnix.bpf.programs.unlisted",
        "gauge",
        "{program}",
        'Programs counted in the name="[other]" series instead of their own.',
    ),
    F(
        "linnix_bpf_program_run_time_seconds_total",
        "linnix.bpf.program.run_time",
        "counter",
        "s",
        "Kernel run time of a BPF program (run_time_ns; advances only while stats are on).",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_runs_total",
        "linnix.bpf.program.runs",
        "counter",
        "{run}",
        "Times a BPF program ran (run_cnt).",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_recursion_misses_total",
        "linnix.bpf.program.recursion_misses",
        "counter",
        "{miss}",
        "Times a BPF program was skipped because it was already running on that CPU.",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_cpu_ratio",
        "linnix.bpf.program.cpu.ratio",
        "gauge",
        "1",
        "Kernel run time of a BPF program over the last interval as a share of the node.",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_map_memory_bytes",
        "linnix.bpf.program.map.memory",
        "gauge",
        "By",
        "Kernel memory of a BPF program's maps (sum of their memlock; a map shared by "
        "several programs counts in each).",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_maps",
        "linnix.bpf.program.maps",
        "gauge",
        "{map}",
        "Maps a BPF program uses.",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_program_jited_bytes",
        "linnix.bpf.program.jited",
        "gauge",
        "By",
        "Size of a BPF program's JIT-compiled image.",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_map_memory_bytes",
        "linnix.bpf.map.memory",
        "gauge",
        "By",
        "Kernel memory of every BPF map on the node, each counted once (memlock).",
    ),
    F("linnix_bpf_maps", "linnix.bpf.maps", "gauge", "{map}", "BPF maps on the node."),
    F(
        "linnix_bpf_jited_bytes",
        "linnix.bpf.jited",
        "gauge",
        "By",
        "JIT-compiled size of every BPF program on the node.",
    ),
    F(
        "linnix_bpf_jit_limit_bytes",
        "linnix.bpf.jit.limit",
        "gauge",
        "By",
        "net.core.bpf_jit_limit: JIT memory beyond it is refused to loaders without "
        "CAP_BPF/CAP_SYS_ADMIN.",
    ),
    F(
        "linnix_bpf_budget_ratio",
        "linnix.bpf.budget",
        "gauge",
        "1",
        "The node budget for all BPF programs (--bpf.node-budget) as a share of the node.",
    ),
    F(
        "linnix_bpf_run_time_seconds_total",
        "linnix.bpf.run_time",
        "counter",
        "s",
        "Kernel run time of all BPF programs on the node since the exporter started.",
    ),
    F(
        "linnix_bpf_runs_total",
        "linnix.bpf.runs",
        "counter",
        "{run}",
        "Runs of all BPF programs on the node since the exporter started.",
    ),
    F(
        "linnix_probes_run_time_seconds_total",
        "linnix.probes.run_time",
        "counter",
        "s",
        "Kernel run time of the exporter's own probes since they were loaded.",
    ),
    F(
        "linnix_probes_attached",
        "linnix.probes.attached",
        "gauge",
        "1",
        "1 if the Linnix probes are loaded and attached (checked against the kernel's "
        "program list); absent when they are disabled (--no-probes.enabled).",
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    """The programs' figures (and owners', which label its programs)."""
    if PROGRAMS in tick.disabled:
        return
    yield fig("linnix_bpf_read_method", 1, tick.read_method)
    if not tick.ok(PROGRAMS):
        return
    s, r = tick.snapshot, tick.rates
    rate_ok = tick.rate_ok(PROGRAMS)
    owners_ok = tick.ok(OWNERS)
    yield fig("linnix_bpf_programs", len(s.programs))
    yield fig("linnix_bpf_unlisted_programs", tick.programs.rest_keys)
    listed_ns = 0
    for key, (rt, cnt, rm) in sorted(tick.programs.listed.items()):
        p = tick.program_by_key[key]
        labels = (str(p.id), p.name, p.type, p.tag, "true" if p.ours else "false")
        # Each counts from the program's load (its first delta is its whole value).
        loaded = p.load_time_ns
        yield fig(
            "linnix_bpf_program_run_time_seconds_total", rt / NS, *labels, since_boot_ns=loaded
        )
        yield fig("linnix_bpf_program_runs_total", cnt, *labels, since_boot_ns=loaded)
        yield fig("linnix_bpf_program_recursion_misses_total", rm, *labels, since_boot_ns=loaded)
        if r is not None and rate_ok:
            d = r.programs.get(p.id)
            listed_ns += d.run_time_ns if d else 0
            yield fig("linnix_bpf_program_cpu_ratio", r.program_cpu_ratio(p.id), *labels)
        if s.memory is not None:
            yield fig("linnix_bpf_program_map_memory_bytes", p.map_memory_bytes, *labels)
            yield fig("linnix_bpf_program_maps", len(p.map_ids), *labels)
            yield fig("linnix_bpf_program_jited_bytes", p.jited_bytes, *labels)
        if owners_ok:
            yield from owners.info_figures(p, fig)
    other = OTHER_PROGRAM
    rt, cnt, rm = tick.programs.rest
    yield fig("linnix_bpf_program_run_time_seconds_total", rt / NS, *other)
    yield fig("linnix_bpf_program_runs_total", cnt, *other)
    yield fig("linnix_bpf_program_recursion_misses_total", rm, *other)
    if r is not None and rate_ok:
        rest_ns = max(0, r.bpf_run_time_ns - listed_ns)
        yield fig("linnix_bpf_program_cpu_ratio", r.run_time_ratio(rest_ns), *other)
    yield from _memory_figures(tick, fig)
    if owners_ok:
        yield from owners.figures(tick, fig)
    yield fig("linnix_bpf_budget_ratio", tick.bpf_budget_ratio)
    yield fig("linnix_bpf_run_time_seconds_total", tick.bpf_run_time_ns_total / NS)
    yield fig("linnix_bpf_runs_total", tick.bpf_runs_total)
    probes_ns = run_time_of(s.programs, s.probe_program_ids)
    yield fig("linnix_probes_run_time_seconds_total", probes_ns / NS)
    # Only when the probes are enabled (a load failure stops start-up, so no probe ids
    # means disabled on purpose): a node run without them must not read as broken.
    if s.probe_program_ids:
        yield fig("linnix_probes_attached", 1 if tick.probes_attached else 0)


def _memory_figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    """Node memory, and the "[other]" program row's (its programs' sums)."""
    m = tick.snapshot.memory
    if m is None:  # not read yet, or the read failed: unknown, not zero
        return
    # "[other]" = the node's sums over programs minus the listed ones (a short loop:
    # with 1,000 programs loaded, summing the unlisted ones would run every tick).
    listed = [tick.program_by_key[k] for k in tick.programs.listed]
    other = OTHER_PROGRAM
    mem = m.programs_map_memory_bytes - sum(p.map_memory_bytes for p in listed)
    yield fig("linnix_bpf_program_map_memory_bytes", mem, *other)
    yield fig(
        "linnix_bpf_program_maps", m.programs_maps - sum(len(p.map_ids) for p in listed), *other
    )
    yield fig(
        "linnix_bpf_program_jited_bytes", m.jited_bytes - sum(p.jited_bytes for p in listed), *other
    )
    yield fig("linnix_bpf_map_memory_bytes", m.map_memory_bytes)
    yield fig("linnix_bpf_maps", m.maps)
    yield fig("linnix_bpf_jited_bytes", m.jited_bytes)
    if m.jit_limit_bytes is not None:
        yield fig("linnix_bpf_jit_limit_bytes", m.jit_limit_bytes)
