"""The "hooks" collector: where each BPF program is attached (kernel/hooks.py: bpf links,
and perf events held by the processes the owner scan found), and what reaching a program
through each hook kind costs, calibrated on this host (kernel/hook_cost.py), and what the
programs' hooks cost over time: each program's runs x its price per run (rates.py:
hook_prices, hooks_over). Reads after the owners; attachments and per-program hook
seconds are served for the listed programs only (--bpf.top-programs bounds them with the
other per-program series).

Off (the default, --collector.hooks turns it on), every family here is absent: the hook
cost is unknown, not 0, and linnix_bpf_cost_ratio has no hooks component."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linnix_exporter.families import PROGRAM_ATTRS, PROGRAM_LABELS, F, Figure, FigureMaker
from linnix_exporter.prog_table import program_ids
from linnix_exporter.rates import hook_prices
from linnix_exporter.snapshot import NS, Hooks, OwnerMap
from linnix_exporter.tick import HOOKS, Tick

NAME = HOOKS
# Served cost sources: a kind this code calibrated, or one the kernel lacks (0). A kind
# present but not calibrated ("uncalibrated", "failed") is not served as a price.
SERVED_SOURCES = ("measured", "measured_shared", "unsupported")


class HooksSource(Protocol):
    def read(self, owners: OwnerMap) -> Hooks: ...

    def close(self) -> None: ...


FAMILIES = (
    F(
        "linnix_bpf_program_hook_info",
        "linnix.bpf.program.hook",
        "gauge",
        "1",
        "One attachment of a listed BPF program: the hook kind (tracepoint, "
        "raw_tracepoint, kprobe, kretprobe, uprobe, uretprobe, fentry, cgroup, tcx, xdp, "
        "...) and its target as the kernel tells it; namespace and pod: the Kubernetes "
        "pod whose cgroup a cgroup attachment is on (empty otherwise).",
        ("id", "name", "hook", "target", "namespace", "pod"),
        (
            "bpf.program.id",
            "bpf.program.name",
            "bpf.hook",
            "bpf.hook.target",
            "k8s.namespace.name",
            "k8s.pod.name",
        ),
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
    F(
        "linnix_bpf_program_hook_seconds_total",
        "linnix.bpf.program.hook.time",
        "counter",
        "s",
        "What reaching a listed BPF program through its hooks cost since the exporter "
        "started, outside its run_time_ns: its runs x the calibrated cost of its hook "
        "kind (runs of a program on several hooks split evenly over them).",
        PROGRAM_LABELS,
        PROGRAM_ATTRS,
    ),
    F(
        "linnix_bpf_hook_seconds_total",
        "linnix.bpf.hook",
        "counter",
        "s",
        "What reaching every attached BPF program on the node through its hooks cost "
        "since the exporter started (the sum over programs, listed or not).",
    ),
    F(
        "linnix_bpf_hook_uncalibrated_programs",
        "linnix.bpf.hook.uncalibrated_programs",
        "gauge",
        "{program}",
        "Programs with an attachment whose hook kind has no calibrated cost (its "
        "calibration failed, or a kind it does not cover: cgroup, tcx, xdp, lsm, ...): "
        "that attachment's share of their runs is priced 0 in the hook figures.",
    ),
)


def figures(tick: Tick, fig: FigureMaker) -> Iterator[Figure]:
    hooks = tick.snapshot.hooks
    if not tick.ok(HOOKS) or hooks is None:
        return
    listed = [tick.program_by_key[k] for k in sorted(tick.programs.listed)]
    names = {p.id: p.name for p in listed}
    for h in sorted(hooks.attachments):
        name = names.get(h.prog_id)
        if name is not None:
            yield fig(
                "linnix_bpf_program_hook_info",
                1,
                str(h.prog_id),
                name,
                h.hook,
                h.target,
                h.namespace,
                h.pod,
            )
    for c in hooks.costs:
        if c.source in SERVED_SOURCES:
            yield fig("linnix_bpf_hook_cost_seconds", c.cost_ns / NS, c.hook, c.source)
    prices = hook_prices(hooks)
    present = program_ids(tick.snapshot.programs)
    yield fig("linnix_bpf_hook_uncalibrated_programs", len(prices.uncalibrated & present))
    spent = tick.program_hook_seconds_total
    for p in listed:
        if p.id in prices.per_run_ns:  # attached: its counter, 0 until it runs
            labels = (str(p.id), p.name, p.type, p.tag, "true" if p.ours else "false")
            yield fig("linnix_bpf_program_hook_seconds_total", spent.get(p.id, 0.0), *labels)
    yield fig("linnix_bpf_hook_seconds_total", tick.hook_seconds_total)
