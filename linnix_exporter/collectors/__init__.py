"""The collectors, one module each, in the manner of node_exporter: its source (the
Protocol its kernel reader meets), its metric families and its figures. Each is timed
and fails alone in every tick (state.Exporter), and has its own switch:
--collector.<name> / --no-collector.<name> (env LINNIX_EXPORTER_COLLECTOR_<NAME>).

Adding one: docs/architecture.md ("Adding a collector").
"""

from __future__ import annotations

from linnix_exporter.tick import HOOKS, OWNERS, PROBES, PROGRAMS, SELF, STATISTICS

# Read in this order every tick (state.Exporter.read_snapshot says why).
NAMES = (SELF, PROBES, PROGRAMS, OWNERS, HOOKS, STATISTICS)
# Off unless asked for: the hooks collector calibrates every hook kind at start-up
# (~0.8 s of CPU) and its costs do not yet enter any ratio (issue 19, points 3-4), so
# a default daemon does not pay for figures nothing uses yet.
DEFAULT_OFF = frozenset({HOOKS})
HELP = {
    SELF: "the exporter's own CPU time and memory, and the standard process_* families",
    PROBES: "the Linnix process probes (forks, execs, exits, lifetimes); off: not loaded, "
    "as with --no-probes.enabled",
    PROGRAMS: "every BPF program's statistics, details and map memory (off: no program "
    "figures and no overhead ratios)",
    OWNERS: "which processes, containers and pods hold each program",
    HOOKS: "where each listed program is attached (bpf links; perf events of the "
    "processes holding programs) and what each hook kind costs a hit, calibrated here",
    STATISTICS: "whether BPF statistics are on and what they cost (off: those figures are "
    "not served; statistics are still switched as --bpf.stats-method says)",
}


def enabled_collectors(switched_on: frozenset[str], probes_enabled: bool) -> frozenset[str]:
    """The collectors a tick reads, from the --collector.<name> switches: the probes also
    need --probes.enabled; the owners and hooks need the programs (they label those just
    read)."""
    on = set(switched_on)
    if not probes_enabled:
        on.discard(PROBES)
    if PROGRAMS not in on:
        on.discard(OWNERS)
        on.discard(HOOKS)
    return frozenset(on)
