"""The data model: one immutable snapshot of everything read from the kernel per tick.

Readers (kernel/*) produce the parts; state.py assembles one Snapshot per tick;
rates.py derives ratios from two consecutive snapshots; every sink reads the same
Snapshot/Rates pair, so /metrics and OTLP can never disagree about a tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import MappingProxyType
from typing import Final, NamedTuple

# --bpf.stats-mode settings; StatsState.mode is ALWAYS or SAMPLED (the schedule in force).
ALWAYS, SAMPLED, AUTO = "always", "sampled", "auto"
NS = 1e9  # nanoseconds per second: kernel counters are in ns, figures in seconds


@dataclass(frozen=True, slots=True)
class Owner:
    """A process holding an fd of a BPF program (prog fd or link fd)."""

    pid: int
    comm: str
    # Where the process runs (kernel/attribution.py); "" outside a container or pod.
    container_id: str = ""
    namespace: str = ""
    pod: str = ""


class RawProg(NamedTuple):
    """bpf_prog_info fields as the kernel gave them. tag and name stay raw bytes here:
    decoding them every tick would cost more than the syscalls (callers cache them)."""

    type: int
    id: int
    tag: bytes
    load_time_ns: int  # CLOCK_BOOTTIME ns
    name: bytes
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


class ProgramStat(NamedTuple):
    """Cumulative kernel statistics of one BPF program at one instant.

    A NamedTuple rather than a frozen dataclass: one is built per program per tick, and
    with 1,000 programs construction cost is part of the collection budget."""

    id: int
    name: str  # full name as bpftool prints it (BTF), else the kernel's 15 chars: never a key
    type: str
    tag: str
    load_time_ns: int  # CLOCK_BOOTTIME ns
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    ours: bool = False
    owners: tuple[Owner, ...] = ()
    # Kernel memory (kernel/bpf_objects.py): JIT'd size and maps are fixed for the
    # program's life; the maps' memlock is read when the program set changes or at the
    # owner refresh.
    jited_bytes: int = 0
    map_ids: tuple[int, ...] = ()
    map_memory_bytes: int = 0

    @property
    def identity(self) -> tuple[int, str, int]:
        """(id, tag, load_time) identifies one program even across a reload."""
        return (self.id, self.tag, self.load_time_ns)


# Named slices of a ProgramStat, for the hot loops that must not build a tuple in Python
# per program (a slice is one C call): its counters, and everything the kernel read.
COUNTERS = slice(5, 8)  # (run_time_ns, run_cnt, recursion_misses)
KERNEL_FIELDS = slice(0, 8)  # id .. recursion_misses: unchanged means an idle program
# Checked at import: reordering ProgramStat's fields fails here, not in a figure.
assert tuple(ProgramStat._fields[5:8]) == ("run_time_ns", "run_cnt", "recursion_misses")
assert ProgramStat._fields[7] == "recursion_misses" and KERNEL_FIELDS.stop == 8
# RawProg.id's index: the id of every raw record, read with a C-level item lookup.
RAW_ID: Final = 1
assert RawProg._fields[RAW_ID] == "id"
_raw_id = itemgetter(RAW_ID)


def prog_ids(raws: Iterable[RawProg]) -> frozenset[int]:
    """The ids of raw records (every tick, every program: map over a C itemgetter)."""
    return frozenset(map(_raw_id, raws))


class NodeMemory(NamedTuple):
    """What BPF holds in kernel memory on the node: maps read with the owners, sums
    over programs again whenever the program set changes."""

    map_memory_bytes: int  # every map on the node, each counted once
    maps: int
    jited_bytes: int  # every program's JIT'd image
    jit_limit_bytes: int | None  # net.core.bpf_jit_limit; None if unreadable
    memlock_by_map: Mapping[int, int] = MappingProxyType({})  # map id -> bytes_memlock
    # Sums over programs of their map_memory_bytes and map counts (a shared map counts
    # in each program): what the per-program series add up to, "[other]" included.
    programs_map_memory_bytes: int = 0
    programs_maps: int = 0


@dataclass(frozen=True, slots=True)
class CommCounts:
    """Per-command-name probe counters (cumulative)."""

    forks: int = 0
    execs: int = 0
    exits: int = 0
    # Final CPU time of tasks that exited under this comm, counted when each task is
    # freed (an RCU grace period after its reap): it can lag `exits` by a tick.
    exited_cpu_ns: int = 0

    def __add__(self, o: CommCounts) -> CommCounts:
        return CommCounts(
            self.forks + o.forks,
            self.execs + o.execs,
            self.exits + o.exits,
            self.exited_cpu_ns + o.exited_cpu_ns,
        )


# Lifetime histogram: slot i counts lifetimes with floor(log2(ns)) == i.
LIFETIME_SLOTS = 64


@dataclass(frozen=True, slots=True)
class ProbeCounts:
    """What the Linnix probes counted in the kernel, cumulative since they loaded."""

    forks: int
    execs: int
    exits: int
    # Final CPU of all exited tasks, whether or not their comm is in by_comm; counted
    # when each task is freed, so it can lag `exits` by a tick.
    exited_cpu_ns: int
    by_comm: Mapping[str, CommCounts]
    lifetime_slots: tuple[int, ...]  # LIFETIME_SLOTS entries
    lifetime_sum_ns: int
    # Those of the probes' programs the kernel reported attached at this read.
    attached_program_ids: frozenset[int] = frozenset()

    @property
    def lifetime_count(self) -> int:
        return sum(self.lifetime_slots)


@dataclass(frozen=True, slots=True)
class SelfUsage:
    """The exporter's own cost: CPU includes reaped helper processes (the compile child)."""

    user_seconds: float
    system_seconds: float
    rss_bytes: int
    # The rest of what Prometheus' standard process_* families report (process.py).
    virtual_bytes: int = 0
    open_fds: int = 0
    max_fds: float = 0.0  # RLIMIT_NOFILE soft limit (inf when unlimited)
    start_time_seconds: float = 0.0  # Unix time the process started

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


OUR_STATS_METHODS = ("enable_stats_fd", "sysctl")  # we turned statistics on: their cost is ours


@dataclass(frozen=True, slots=True)
class StatsState:
    """Whether the kernel is accumulating run_time_ns/run_cnt, how it was turned on, and
    what that costs every program run."""

    enabled: bool
    method: str  # "enable_stats_fd" | "sysctl" | "already_on" | "off"
    # Seconds statistics were on since start (monotonic, read with the snapshot): in
    # sampled mode run times cover only this part of each interval.
    on_seconds: float = 0.0
    mode: str = ALWAYS  # "always" | "sampled": the schedule in force (--bpf.stats-mode)
    run_cost_ns: float | None = None  # extra ns per program run while on; None: unknown
    cost_source: str = ""  # "measured" | "estimated" (see kernel/stats_cost.py)
    # Sampled mode found statistics on while ours were off: another process holds them
    # on, so switching ours costs the node nothing more.
    held_elsewhere: bool = False

    @property
    def ours(self) -> bool:
        """We turned statistics on, so what they cost the node is part of our overhead."""
        return self.method in OUR_STATS_METHODS and not self.held_elsewhere


class Hook(NamedTuple):
    """One attachment of one program (kernel/hooks.py)."""

    prog_id: int
    hook: str  # tracepoint, raw_tracepoint, kprobe, kretprobe, uprobe, uretprobe, fentry, ...
    target: str  # where, as the kernel tells it (see kernel/hooks.parse_link_info)
    link_id: int = 0  # the bpf link, 0 for a perf event held by a process
    pid: int = 0  # the process holding the perf event, 0 for a link
    cgroup_id: int = 0  # a cgroup link's cgroup (pods are found by it)
    namespace: str = ""  # the Kubernetes pod whose cgroup that is (kernel/attribution.py)
    pod: str = ""


@dataclass(frozen=True, slots=True)
class HookCost:
    """What reaching a program through one hook kind costs, per event (kernel/hook_cost.py)."""

    hook: str
    source: str  # measured | unsupported | uncalibrated | failed
    cost_ns: float = 0.0  # per event, outside the program's run_time_ns
    added_ns: float = 0.0  # per event, the A/B difference (body included)
    body_ns: float = 0.0  # the trivial program's run_time_ns / run_cnt
    target: str = ""
    events: int = 0  # per arm
    rounds: int = 0  # valid rounds behind the medians
    reason: str = ""

    @property
    def failed(self) -> bool:
        """A kind this code calibrates whose last calibration gave no figure."""
        return self.source == "failed"


@dataclass(frozen=True, slots=True)
class Hooks:
    """The hooks collector's part of a snapshot: every attachment, the last calibration."""

    attachments: tuple[Hook, ...]
    costs: tuple[HookCost, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything read in one tick. Immutable: sinks may read it from any thread."""

    monotonic: float  # time.monotonic() at the read, the clock rates are computed on
    wall_time: float  # time.time(), for timestamps only
    boottime_ns: int  # CLOCK_BOOTTIME at the read: the clock of ProgramStat.load_time_ns
    online_cpus: int
    programs: Sequence[ProgramStat]  # kernel/prog_table.ProgramTable in the daemon
    self_usage: SelfUsage
    stats: StatsState
    probes: ProbeCounts | None  # None when the probes are disabled (--no-probes.enabled)
    probe_program_ids: frozenset[int] = frozenset()
    memory: NodeMemory | None = None  # None until the first read (or when it failed)
    hooks: Hooks | None = None  # None when the hooks collector is off (or never read)


# prog id -> the processes holding it (kernel/progstats.OwnerScanner).
OwnerMap = Mapping[int, tuple[Owner, ...]]
