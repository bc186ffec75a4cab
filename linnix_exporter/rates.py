"""All derived math: rates and overhead ratios from two consecutive snapshots.

Every ratio divides by the *measured* interval between the two reads (monotonic clock),
never the nominal tick. "Node" ratios divide by interval x online CPUs (0..1, share of
the whole machine); "core" ratios divide by the interval only (share of one core, can
exceed 1, as bpftop shows it).

The overhead has three terms: our probes' kernel run time (plus what their hooks cost to
reach them, when the hooks collector priced them), the exporter's CPU, and what BPF
statistics cost every program run while we hold them on (runs x calibrated cost).

The whole price of every BPF program on the node (linnix_bpf_cost_ratio) has three
components: run_time (the kernel's run_time_ns, the body), hooks (each program's runs x
the calibrated cost of reaching it through its hook kinds, see hook_prices) and stats
(every counted run x the cost of statistics, whoever holds them on).
In sampled mode run times and run counts advance only while statistics are on, so
run-time ratios divide by the time they were on (an estimate of the whole interval from
its sampled part), while the statistics term is exact: runs that happened with
statistics off paid nothing. See docs/how-overhead-is-measured.md.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress
from types import MappingProxyType
from typing import NamedTuple

from linnix_exporter.prog_table import RUN_CNT, RUN_TIME, ProgramKey, ProgramTable
from linnix_exporter.snapshot import KERNEL_FIELDS, NS, SAMPLED, Hooks, ProgramStat, Snapshot


class ProgramDelta(NamedTuple):
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


_NONE = ProgramDelta(0, 0, 0)

# Hook cost sources that price a run (kernel/hook_cost.py): measured here, or a kind the
# kernel lacks (no program can be attached through it: 0 is exact); measured_shared: beside
# other programs on a syscall tracepoint, a lower bound (kernel/hook_cost.py).
PRICED_SOURCES = ("measured", "measured_shared", "unsupported")
# Hooks with no price of their own: an iterator's program runs inside the read() of
# whoever reads it, so reaching it is that reader's CPU (ours is in the exporter's).
UNPRICED_HOOKS = frozenset({"iter"})


@dataclass(frozen=True, slots=True)
class HookPrices:
    """What reaching each attached program costs per run, in ns.

    The kernel counts a program's runs, not through which of its attachments each came:
    the runs of a program attached N times are split evenly over its attachments, so a
    run costs the mean of its attachments' per-event costs. An attachment whose hook
    kind has no calibrated cost (calibration failed, or a kind the calibration does not
    cover: cgroup, tcx, xdp, lsm, fexit, ...) prices its share at 0 and the program is
    counted as uncalibrated (`uncalibrated`), never silently free.

    Left out: a hook shared by several programs (one uprobe trap, one tracepoint hit
    running each) is priced once per program, as calibrated with one program alone (an
    overcount of the shared trap, at most the number of programs sharing it); a
    kretprobe that missed (maxactive exhausted) paid its entry trap without a run, so
    it is not counted; a uprobe on an instruction the kernel emulates (x86: push, nop,
    call, jmp) skips the single-step and costs less than the calibrated one (zlibVersion: lea).
    """

    per_run_ns: Mapping[int, float]  # prog id -> ns per run, attached programs only
    uncalibrated: frozenset[int]  # prog ids with an attachment of no known price


# The last prices and what they were made of: the hooks reader hands the same tuples
# tick after tick until attachments or costs change, and both the rates and the hooks
# collector's figures ask (one tuple swap: safe to read from any thread).
_last_prices: tuple[object, object, HookPrices] | None = None


def hook_prices(hooks: Hooks) -> HookPrices:
    global _last_prices
    last = _last_prices
    if last is not None and last[0] is hooks.attachments and last[1] is hooks.costs:
        return last[2]
    prices = _hook_prices(hooks)
    _last_prices = (hooks.attachments, hooks.costs, prices)
    return prices


def _hook_prices(hooks: Hooks) -> HookPrices:
    cost = {c.hook: c.cost_ns for c in hooks.costs if c.source in PRICED_SOURCES}
    kinds: dict[int, list[str]] = {}
    for h in hooks.attachments:
        if h.hook not in UNPRICED_HOOKS:
            kinds.setdefault(h.prog_id, []).append(h.hook)
    per_run: dict[int, float] = {}
    uncalibrated: set[int] = set()
    for prog_id, ks in kinds.items():
        known = [cost.get(k) for k in ks]
        if None in known:
            uncalibrated.add(prog_id)
        per_run[prog_id] = sum(c for c in known if c is not None) / len(ks)
    return HookPrices(MappingProxyType(per_run), frozenset(uncalibrated))


COST_COMPONENTS = ("run_time", "hooks", "stats")  # linnix_bpf_cost_component_ratio


@dataclass(frozen=True, slots=True)
class Rates:
    interval_seconds: float
    online_cpus: int
    programs: Mapping[int, ProgramDelta]  # by program id, programs in `cur` only
    bpf_run_time_ns: int  # every program on the host, over the interval
    bpf_runs: int
    probes_run_time_ns: int  # our probes only
    exporter_cpu_seconds: float
    # Seconds of the interval run times were counted in: the time statistics were on in
    # sampled mode; None: the whole interval (always mode).
    sampled_seconds: float | None = None
    stats_run_cost_ns: float = 0.0  # served cost per run (0 while unknown)
    stats_ours: bool = False  # we turned statistics on: their cost is our overhead
    # What reaching the programs through their hooks cost over the interval (ns, runs x
    # hook_prices, scaled to the whole interval in sampled mode like run times). None:
    # the hooks collector is off or has not read (unknown, not 0).
    hooks_ns: float | None = None
    program_hooks_ns: Mapping[int, float] = field(default_factory=dict)  # attached, ran
    probes_hooks_ns: float = 0.0  # our probes' share of hooks_ns

    def node_ratio(self, seconds: float) -> float:
        return seconds / (self.interval_seconds * self.online_cpus)

    def core_ratio(self, seconds: float) -> float:
        return seconds / self.interval_seconds

    @property
    def duty_ratio(self) -> float:
        """Share of the interval statistics were on (counted in)."""
        if self.sampled_seconds is None:
            return 1.0
        return min(1.0, self.sampled_seconds / self.interval_seconds)

    @property
    def counted_seconds(self) -> float:
        """Seconds of the interval runs and run times were counted in: all of it in
        always mode, the time statistics were on in sampled mode."""
        return self.interval_seconds if self.sampled_seconds is None else self.sampled_seconds

    def run_rate(self, runs: float) -> float:
        """Runs per second, over the part of the interval they were counted in."""
        counted = self.counted_seconds
        return runs / counted if counted > 0 else 0.0

    def run_time_core_ratio(self, run_time_ns: float) -> float:
        """A run time as a share of one core (bpftop's CPU%), over the counted part."""
        return self.core_ratio(self._full_interval(run_time_ns))

    def _full_interval(self, run_time_ns: float) -> float:
        """Run time counted over the sampled seconds, scaled to the whole interval."""
        if self.sampled_seconds is None:
            return run_time_ns / NS
        if self.sampled_seconds <= 0:
            return 0.0
        return run_time_ns / NS * (self.interval_seconds / self.sampled_seconds)

    def run_time_ratio(self, run_time_ns: float) -> float:
        """A run time as a node share, over the part of the interval it was counted in."""
        return self.node_ratio(self._full_interval(run_time_ns))

    @property
    def bpf_cpu_ratio(self) -> float:
        return self.run_time_ratio(self.bpf_run_time_ns)

    @property
    def probes_cpu_ratio(self) -> float:
        return self.run_time_ratio(self.probes_run_time_ns)

    @property
    def exporter_cpu_ratio(self) -> float:
        return self.node_ratio(self.exporter_cpu_seconds)

    @property
    def stats_overhead_seconds(self) -> float:
        """What statistics cost every program on the node over the interval, whoever
        turned them on: each counted run paid the calibrated cost once."""
        return self.bpf_runs * self.stats_run_cost_ns / NS

    @property
    def hooks_seconds(self) -> float | None:
        return None if self.hooks_ns is None else self.hooks_ns / NS

    def cost_component_seconds(self) -> dict[str, float]:
        """The whole price of every BPF program over the interval, by component:
        run_time (the bodies), hooks (absent while unknown), stats (every counted run x
        the statistics' cost, whoever holds them on)."""
        out = {"run_time": self._full_interval(self.bpf_run_time_ns)}
        if self.hooks_ns is not None:
            out["hooks"] = self.hooks_ns / NS
        out["stats"] = self.stats_overhead_seconds
        return out

    def cost_component_ratios(self) -> dict[str, float]:
        return {k: self.node_ratio(v) for k, v in self.cost_component_seconds().items()}

    @property
    def cost_ratio(self) -> float:
        return self.node_ratio(sum(self.cost_component_seconds().values()))

    def component_seconds(self) -> dict[str, float]:
        """The overhead's three terms in seconds of CPU over the interval."""
        return {
            "probes": self._full_interval(self.probes_run_time_ns) + self.probes_hooks_ns / NS,
            "exporter": self.exporter_cpu_seconds,
            "stats": self.stats_overhead_seconds if self.stats_ours else 0.0,
        }

    def component_ratios(self) -> dict[str, float]:
        return {k: self.node_ratio(v) for k, v in self.component_seconds().items()}

    @property
    def overhead_seconds(self) -> float:
        """What running the exporter cost the node: our probes' kernel time + our CPU
        + statistics' cost to every program run, if we turned them on."""
        return sum(self.component_seconds().values())

    @property
    def overhead_ratio(self) -> float:
        return self.node_ratio(self.overhead_seconds)

    @property
    def overhead_core_ratio(self) -> float:
        return self.core_ratio(self.overhead_seconds)

    def program_cpu_ratio(self, prog_id: int) -> float:
        d = self.programs.get(prog_id)
        return 0.0 if d is None else self.run_time_ratio(d.run_time_ns)


def program_delta(
    prev: ProgramStat | None, cur: ProgramStat, prev_boottime_ns: int
) -> ProgramDelta:
    """What one program ran between two reads; never negative.

    A program absent from the previous read counts in full only if it was loaded after
    that read (everything it ran happened inside the interval); otherwise we cannot
    tell when its counters grew, so it contributes nothing this time.
    """
    # Same identity (id matched by the caller; tag and load time compared here).
    if prev is not None and prev.load_time_ns == cur.load_time_ns and prev.tag == cur.tag:
        if (
            prev.run_cnt == cur.run_cnt
            and prev.run_time_ns == cur.run_time_ns
            and (prev.recursion_misses == cur.recursion_misses)
        ):
            return _NONE  # idle program: the common case with many loaded
        return ProgramDelta(
            max(0, cur.run_time_ns - prev.run_time_ns),
            max(0, cur.run_cnt - prev.run_cnt),
            max(0, cur.recursion_misses - prev.recursion_misses),
        )
    if cur.load_time_ns >= prev_boottime_ns:
        return ProgramDelta(cur.run_time_ns, cur.run_cnt, cur.recursion_misses)
    return _NONE


class TableDeltas(Mapping[int, ProgramDelta]):
    """Per-program deltas between two reads as ProgramTables, computed only for the ids
    asked for: with 2,000 programs a tick needs the listed ones' deltas and the node's
    sums, which compute_rates takes over whole columns. The rule is program_delta's."""

    __slots__ = ("_aligned", "_boot", "cur", "prev", "same")

    def __init__(self, prev: ProgramTable, cur: ProgramTable, prev_boottime_ns: int) -> None:
        self.prev, self.cur = prev, cur
        self.same = prev.layout.same_programs(cur.layout)  # same programs, same positions
        self._boot = prev_boottime_ns
        # Where cur's programs were in prev, when the reader made cur's layout against
        # prev's (the daemon's case): no key matching here. Taken now: the layout lets
        # go of it when the next one is made.
        self._aligned = None if self.same else cur.layout.aligned_to(prev.layout)

    def at(self, pos: int) -> ProgramDelta:
        """The delta of the program at this position of `cur`."""
        b = self.cur.counters(pos)
        ppos: int | None
        if self.same:
            ppos = pos
        elif self._aligned is not None:
            ppos = self._aligned.old_pos[pos]
            if ppos == len(self.prev):
                ppos = None
        else:
            key = self.cur.layout.key(pos)
            ppos = self.prev.layout.index.get(key[0])
            if ppos is not None and self.prev.layout.key(ppos) != key:
                ppos = None  # the id names another program (a reload): a new one
        if ppos is None:
            if self.cur.layout.templates[pos].load_time_ns >= self._boot:
                return ProgramDelta(*b)
            return _NONE
        a = self.prev.counters(ppos)
        if a == b:
            return _NONE
        return ProgramDelta(max(0, b[0] - a[0]), max(0, b[1] - a[1]), max(0, b[2] - a[2]))

    def __getitem__(self, prog_id: int) -> ProgramDelta:
        return self.at(self.cur.layout.index[prog_id])

    def get(self, prog_id: int, default: object = None) -> ProgramDelta | None:  # type: ignore[override]
        pos = self.cur.layout.index.get(prog_id)
        return default if pos is None else self.at(pos)  # type: ignore[return-value]

    def __contains__(self, prog_id: object) -> bool:
        return prog_id in self.cur.layout.index

    def __iter__(self) -> Iterator[int]:
        return iter(self.cur.layout.ids)

    def __len__(self) -> int:
        return len(self.cur)

    def run_time_before(self) -> Sequence[int]:
        """Per position of `cur`, the run time its delta is counted from: the program's
        in `prev`; for a program `prev` did not have, 0 when it was loaded inside the
        interval (its whole run time counts) and its own run time otherwise (nothing
        counts), as program_delta rules. Per-program Python only when the set changed."""
        if self.same:
            return self.prev.run_times()
        al = self._aligned
        if al is not None:
            # By position in prev, C-level (a sentinel past prev's end for new ones),
            # then each new program's own rule.
            before = [*self.prev.run_times(), 0]
            aligned = list(map(before.__getitem__, al.old_pos))
            for pos in al.new:
                aligned[pos] = self.cur.value(pos, RUN_TIME) - self.at(pos).run_time_ns
            return aligned
        # By id, C-level (map over dict lookups); positions whose program the previous
        # read did not have (or had under another identity) are fixed one by one.
        a, b = self.prev.layout, self.cur.layout
        prev_rt = dict(zip(a.ids, self.prev.run_times(), strict=True))
        out: list[int] = list(map(prev_rt.get, b.ids))  # type: ignore[arg-type]
        for pos in _positions(self.cur, a.key_set & b.key_set):
            out[pos] = self.cur.value(pos, RUN_TIME) - self.at(pos).run_time_ns
        return out

    def sums(self) -> tuple[int, int]:
        """(run time, runs) summed over every program's delta, by columns.

        A program's counters never go down between two reads (per-CPU counters only
        grow, and the later read reads every CPU later), so for the programs in both
        reads the sum of differences is the difference of the sums, as program_delta's
        max(0, ...) would give it. Programs that came or went (few, and only in a tick
        where the set changed) are taken out of the sums one by one, and a new one
        counts whole when it was loaded inside the interval."""
        a, b = self.prev, self.cur
        rt = b.total(RUN_TIME) - a.total(RUN_TIME)
        runs = b.total(RUN_CNT) - a.total(RUN_CNT)
        if self.same:
            return rt, runs
        al = self._aligned
        if al is not None:
            new, gone = al.new, al.gone
        else:
            common = a.layout.key_set & b.layout.key_set
            new, gone = _positions(b, common), _positions(a, common)
        for pos in new:
            now = b.counters(pos)
            rt -= now[0]
            runs -= now[1]
            d = self.at(pos)  # whole when loaded inside the interval, else nothing
            rt += d.run_time_ns
            runs += d.run_cnt
        for pos in gone:
            was = a.counters(pos)
            rt += was[0]
            runs += was[1]
        return rt, runs


def _positions(t: ProgramTable, common: frozenset[ProgramKey]) -> list[int]:
    """Positions of `t`'s programs that are not in `common`."""
    keys = t.layout.keys
    if len(common) == len(t.layout.ids):
        return []
    return list(compress(range(len(keys)), map(operator.not_, map(common.__contains__, keys))))


def compute_rates(prev: Snapshot, cur: Snapshot) -> Rates | None:
    """Rates over (prev, cur], or None if the clock did not advance."""
    interval = cur.monotonic - prev.monotonic
    if interval <= 0 or cur.online_cpus <= 0:
        return None
    a, b = prev.programs, cur.programs
    if isinstance(a, ProgramTable) and isinstance(b, ProgramTable):
        # The daemon's case: sums over columns (TableDeltas.sums), per-program deltas
        # left for whoever asks (the listed programs, owners).
        cols = TableDeltas(a, b, prev.boottime_ns)
        index = b.layout.index
        probes = sum(cols.at(index[i]).run_time_ns for i in cur.probe_program_ids if i in index)
        rt, runs = cols.sums()
        return _rates(prev, cur, interval, cols, rt, runs, probes)
    before = {p.id: p for p in prev.programs}
    boot = prev.boottime_ns
    ours = cur.probe_program_ids
    deltas: dict[int, ProgramDelta] = {}
    run_time = runs = probes_run_time = 0
    for p in cur.programs:
        q = before.get(p.id)
        # Idle program (the common case with many loaded): the reader reuses the row
        # (same object), or what the kernel reported (id .. misses) is unchanged: one
        # C-level compare, nothing to add up.
        if q is p or (q is not None and q[KERNEL_FIELDS] == p[KERNEL_FIELDS]):
            deltas[p.id] = _NONE
            continue
        d = deltas[p.id] = program_delta(q, p, boot)
        run_time += d.run_time_ns
        runs += d.run_cnt
        if p.id in ours:
            probes_run_time += d.run_time_ns
    return _rates(prev, cur, interval, MappingProxyType(deltas), run_time, runs, probes_run_time)


def _rates(
    prev: Snapshot,
    cur: Snapshot,
    interval: float,
    deltas: Mapping[int, ProgramDelta],
    run_time: int,
    runs: int,
    probes_run_time: int,
) -> Rates:
    st = cur.stats
    sampled = None
    if st.mode == SAMPLED or prev.stats.mode == SAMPLED:
        sampled = min(interval, max(0.0, st.on_seconds - prev.stats.on_seconds))
    hooks = hooks_over(deltas, cur.hooks, cur.probe_program_ids, interval, sampled)
    return Rates(
        interval_seconds=interval,
        online_cpus=cur.online_cpus,
        programs=deltas,
        bpf_run_time_ns=run_time,
        bpf_runs=runs,
        probes_run_time_ns=probes_run_time,
        exporter_cpu_seconds=max(0.0, cur.self_usage.cpu_seconds - prev.self_usage.cpu_seconds),
        sampled_seconds=sampled,
        stats_run_cost_ns=st.run_cost_ns or 0.0,
        stats_ours=st.ours,
        hooks_ns=hooks[0],
        program_hooks_ns=hooks[1],
        probes_hooks_ns=hooks[2],
    )


def hooks_over(
    deltas: Mapping[int, ProgramDelta],
    hooks: Hooks | None,
    probe_ids: frozenset[int],
    interval: float,
    sampled: float | None,
) -> tuple[float | None, Mapping[int, float], float]:
    """(node, per program, our probes') hook cost in ns over the interval: each attached
    program's counted runs x its price per run (hook_prices). Runs are counted only
    while statistics are on; the hooks are paid either way, so in sampled mode the
    counted runs stand for the whole interval (scaled like run times)."""
    if hooks is None:
        return None, MappingProxyType({}), 0.0
    scale = 1.0
    if sampled is not None:
        scale = interval / sampled if sampled > 0 else 0.0
    per_prog: dict[int, float] = {}
    for prog_id, ns in hook_prices(hooks).per_run_ns.items():
        d = deltas.get(prog_id)
        if d is not None and d.run_cnt and ns:
            per_prog[prog_id] = d.run_cnt * ns * scale
    probes = sum(v for k, v in per_prog.items() if k in probe_ids)
    return sum(per_prog.values()), MappingProxyType(per_prog), probes
