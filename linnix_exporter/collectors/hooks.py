"""The "hooks" collector: where each BPF program is attached (kernel/hooks.py: bpf links,
and perf events held by the processes the owner scan found), and what reaching a program
through each hook kind costs, calibrated on this host (kernel/hook_cost.py). Reads after
the owners; its attachments are served for the listed programs only (--bpf.top-programs
bounds them with the other per-program series)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import F, Figure, FigureMaker
from linnix_exporter.snapshot import NS, Hooks
from linnix_exporter.tick import HOOKS, Tick

NAME = HOOKS
# Served cost sources: a kind this code calibrated, or one the kernel lacks (0). A kind
# present but not calibrated ("uncalibrated", "failed") is not served as a price.
SERVED_SOURCES = ("measured", "unsupported")


class HooksSource(Protocol):
    def read(self, pids: frozenset[int], prog_ids: frozenset[int]) -> Hooks: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_bpf_program_hook_info",
        "linnix.bpf.program.hook",
        "gauge",
        "1",
        "One attachment of a listed BPF program: the hook kind (tracepoint, "
        "raw_tracepoint, kprobe, kretprobe, uprobe, uretprobe, fentry, cgroup, tcx, xdp, "
        "...) and its target as the kernel tells it.",
        ("id", "name", "hook", "target"),
        ("bpf.program.id", "bpf.program.name", "bpf.hook", "bpf.hook.target"),
    ),
    F(
        "linnix_bpf_hook_cost_seconds",
        "linnix.bpf.hook.cost",
        "gauge",
        "s",
        "What reaching a program through this hook kind costs per event, outside its "
        "run_time_ns, calibrated on this host; source measured, or unsupported (0: the "
        "kernel lacks the hook kind).",
        ("hook", "source"),
        ("bpf.hook", "source"),
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    hooks = tick.snapshot.hooks
    if not tick.ok(HOOKS) or hooks is None:
        return
    names = {tick.program_by_key[k].id: tick.program_by_key[k].name for k in tick.programs.listed}
    for h in sorted(hooks.attachments):
        name = names.get(h.prog_id)
        if name is not None:
            yield fig("linnix_bpf_program_hook_info", 1, str(h.prog_id), name, h.hook, h.target)
    for c in hooks.costs:
        if c.source in SERVED_SOURCES:
            yield fig("linnix_bpf_hook_cost_seconds", c.cost_ns / NS, c.hook, c.source)
