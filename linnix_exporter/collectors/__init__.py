"""The collectors, one module each, in the manner of node_exporter: its source (the
Protocol its kernel reader meets), its metric families and its figures. Each is timed
and fails alone in every tick (state.Exporter), and has its own switch:
--collector.<name> / --no-collector.<name> (env LINNIX_EXPORTER_COLLECTOR_<NAME>).

Adding one: a module here (NAME, FAMILIES, figures), its line in NAMES and HELP, its
read in state.Exporter.read_snapshot, its reader in wiring.kernel_sources.
"""

from __future__ import annotations

from typing import Protocol

from linnix_exporter.tick import OWNERS, PROBES, PROGRAMS, SELF, STATISTICS

# Read in this order every tick (state.Exporter.read_snapshot says why).
NAMES = (SELF, PROBES, PROGRAMS, OWNERS, STATISTICS)
HELP = {
    SELF: "the exporter's own CPU time and memory",
    PROBES: "the Linnix process probes (forks, execs, exits, lifetimes); off: not loaded, "
    "as with --no-probes.enabled",
    PROGRAMS: "every BPF program's statistics, details and map memory (off: no program "
    "figures and no overhead ratios)",
    OWNERS: "which processes, containers and pods hold each program",
    STATISTICS: "whether BPF statistics are on and what they cost (off: those figures are "
    "not served; statistics are still switched as --bpf.stats-method says)",
}


class Switches(Protocol):
    """RunConfig's part this module reads: one flag per collector."""

    @property
    def probes_enabled(self) -> bool: ...

    @property
    def collector_self(self) -> bool: ...

    @property
    def collector_probes(self) -> bool: ...

    @property
    def collector_programs(self) -> bool: ...

    @property
    def collector_owners(self) -> bool: ...

    @property
    def collector_statistics(self) -> bool: ...


def enabled_collectors(cfg: Switches) -> frozenset[str]:
    on = {name for name in NAMES if getattr(cfg, f"collector_{name}")}
    if not cfg.probes_enabled:
        on.discard(PROBES)
    if PROGRAMS not in on:
        on.discard(OWNERS)  # owners are read for the programs just read
    return frozenset(on)
