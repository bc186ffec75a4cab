"""What a tick is, apart from how it runs: one immutable Tick (a snapshot, its rates and
the bounded label sets) and its keys. A leaf of the data path: figures, both sinks and
the dashboards import it without pulling in the kernel layer or the loop (schedule.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from linnix_exporter.owners import OwnerView
from linnix_exporter.prog_table import program_ids
from linnix_exporter.rates import Rates
from linnix_exporter.snapshot import ProgramStat, Snapshot
from linnix_exporter.topk import TopKView

ProgramKey = tuple[int, str, int]  # ProgramStat.identity

# The collectors, as named by linnix_exporter_collector_success{collector} and by their
# --collector.<name> switches (collectors/).
PROBES, PROGRAMS, OWNERS, SELF = "probes", "programs", "owners", "self"
STATISTICS = "statistics"
HOOKS = "hooks"


@dataclass(frozen=True, slots=True)
class Tick:
    """What every sink exports: one snapshot, its rates, and the bounded label sets."""

    snapshot: Snapshot
    rates: Rates | None  # None on the first tick: a ratio needs two reads
    programs: TopKView[ProgramKey]  # vec: (run_time_ns, run_cnt, recursion_misses)
    comms: TopKView[str] | None  # vec: (forks, execs, exits, exited_cpu_ns)
    budget_ratio: float
    collect_seconds: float  # wall time the reads took
    seq: int  # 1 for the first tick
    bpf_run_time_ns_total: int = 0  # every program, accumulated over ticks since start
    bpf_runs_total: int = 0
    # What statistics cost every program run, accumulated over ticks since start (s).
    stats_overhead_seconds_total: float = 0.0
    # What reaching every attached program through its hooks cost, accumulated over
    # ticks since start (s; rates.hooks_over), node and per program id (attached
    # programs that ran while the hooks collector priced them).
    hook_seconds_total: float = 0.0
    program_hook_seconds_total: Mapping[int, float] = field(default_factory=dict)
    read_method: str = "syscall"  # how program stats were read: iterator | syscall
    program_by_key: Mapping[ProgramKey, ProgramStat] = field(default_factory=dict)
    # Per collector (probes only when enabled): did its read succeed, and its wall time.
    # A failed collector's part of the snapshot is carried from the tick before and its
    # figures are not served.
    collector_success: Mapping[str, bool] = field(default_factory=dict)
    collector_seconds: Mapping[str, float] = field(default_factory=dict)
    # Collectors whose rates this tick cannot be trusted: failed now, or in the tick
    # before (then the delta spans two intervals but is divided by one).
    unreliable: frozenset[str] = frozenset()
    # Collectors switched off (--no-collector.<name>): not read, not served, no ratios.
    disabled: frozenset[str] = frozenset()

    def ok(self, collector: str) -> bool:
        """Serve this collector's figures: enabled, and its read succeeded."""
        return collector not in self.disabled and self.collector_success.get(collector, True)

    def rate_ok(self, *collectors: str) -> bool:
        return not self.unreliable.intersection(collectors)

    owners: OwnerView | None = None  # programs rolled up by owner (owners.py)
    bpf_budget_ratio: float = 0.05  # --bpf.node-budget

    @property
    def probes_attached(self) -> bool:
        """Every one of our programs is loaded (in the kernel's list) AND attached: the
        kernel reported it running on its tracepoint through the fd we hold."""
        s = self.snapshot
        ids = s.probe_program_ids
        present = program_ids(s.programs)
        return (
            s.probes is not None
            and bool(ids)
            and ids <= present
            and ids <= s.probes.attached_program_ids
        )
