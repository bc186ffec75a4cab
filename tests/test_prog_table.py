"""Programs as columns (prog_table.py): every figure the tick derives from a
ProgramTable equals what the per-row code (the reference kept for tools and tests)
derives from the same programs as ProgramStat tuples: rates, the listed programs and
"[other]", owners' run times. Hand-worked cases first, then random ticks with every
program running, programs loaded and unloaded, pins and a name filter."""

from __future__ import annotations

import dataclasses
import random
from operator import itemgetter

from linnix_exporter.kernel.bpf_objects import node_memory
from linnix_exporter.kernel.bpf_syscall import RawProg
from linnix_exporter.kernel.progstats import _memory_after
from linnix_exporter.owners import OwnerRollup
from linnix_exporter.prog_table import (
    Layout,
    ProgramTable,
    RawTable,
    _align_by_id,
    align,
    run_time_of,
)
from linnix_exporter.rates import TableDeltas, compute_rates
from linnix_exporter.snapshot import Owner, ProgramStat, Snapshot
from linnix_exporter.topk import ProgramTopK, TopKAccumulator
from tests.fixtures import prog, snap


def raw_of(programs: list[ProgramStat]) -> RawTable:
    """The programs' 64-byte records, as a read returns them."""
    return RawTable.from_raws(
        [
            RawProg(
                5,
                p.id,
                bytes.fromhex(p.tag),
                p.load_time_ns,
                p.name.encode()[:15],
                p.run_time_ns,
                p.run_cnt,
                p.recursion_misses,
            )
            for p in programs
        ]
    )


def table_of(programs: list[ProgramStat], after: ProgramTable | None = None) -> ProgramTable:
    """The same programs as the daemon holds them: 64-byte records + a layout. `after`:
    the table read before, whose layout this one is aligned to (as ProgramRows does)."""
    raw = raw_of(programs)
    zero = [p._replace(run_time_ns=0, run_cnt=0, recursion_misses=0) for p in programs]
    if after is not None and after.layout.ident == raw.ident:
        return ProgramTable(raw.raw, after.layout)  # the same programs: the same layout
    alignment = align(after.layout, raw) if after is not None else None
    if alignment is not None:
        # A program's labels, owners and memory are fixed in these fixtures: its row is
        # the one it had (what ProgramRows marks when it reuses rows).
        alignment.kept = True
    return ProgramTable(raw.raw, Layout(raw, zero, alignment))


def as_table(s: Snapshot) -> Snapshot:
    return dataclasses.replace(s, programs=table_of(list(s.programs)))


def test_rows_on_demand_equal_the_programs() -> None:
    ps = [prog(3, 10, 1, misses=2), prog(7, 25, 4, ours=True)]
    t = table_of(ps)
    assert list(t) == ps and t == ps and len(t) == 2
    assert t.get(7) == ps[1] and t.get(8) is None
    assert t.total(5) == 35 and t.counters(1) == (25, 4, 0)
    assert t.by_key()[(7, f"{7:016x}", 1_000)] == ps[1]
    assert run_time_of(t, [7, 99]) == 25 == run_time_of(ps, [7, 99])


def test_rates_by_hand_same_and_changed_set() -> None:
    # Same programs: 2 ran 150 and 30 ns more. Then 3 unloads and 4 (loaded at 2,000,
    # after the previous read at boot time 1,500) appears with 70 ns: counted whole;
    # 5 is new to us but loaded before that read (at 100): counted as nothing.
    a = snap(0.0, [prog(2, 100, 1), prog(3, 50, 5)], cpu=0.0, boot=1_000)
    b = snap(1.0, [prog(2, 250, 2), prog(3, 80, 6)], cpu=0.0, boot=1_500)
    c = snap(2.0, [prog(2, 260, 3), prog(4, 70, 7, load=2_000), prog(5, 9, 9, load=100)], cpu=0.0)
    r1 = compute_rates(as_table(a), as_table(b))
    assert r1 is not None and (r1.bpf_run_time_ns, r1.bpf_runs) == (180, 2)
    assert isinstance(r1.programs, TableDeltas) and r1.programs.same
    r2 = compute_rates(as_table(b), as_table(c))
    assert r2 is not None and (r2.bpf_run_time_ns, r2.bpf_runs) == (10 + 70, 1 + 7)
    assert r2.programs[4].run_time_ns == 70 and r2.programs[5].run_time_ns == 0
    # The same with c's layout aligned to b's (the daemon's tables): the same figures,
    # and each program's run time before (what owners subtract): 2's 250, 4 counted
    # from 0 (whole), 5 from its own 9 (nothing).
    tb = table_of(list(b.programs))
    tc = table_of(list(c.programs), after=tb)
    b2, c2 = dataclasses.replace(b, programs=tb), dataclasses.replace(c, programs=tc)
    r3 = compute_rates(b2, c2)
    assert r3 is not None and isinstance(r3.programs, TableDeltas)
    assert (r3.bpf_run_time_ns, r3.bpf_runs) == (10 + 70, 1 + 7)
    assert r3.programs[4].run_time_ns == 70 and r3.programs[5].run_time_ns == 0
    assert list(r3.programs.run_time_before()) == [250, 0, 9]


def test_alignment_by_hand() -> None:
    # Before: 2, 3, 5. Now: 2 as it was, 5 reloaded under its id (another load time:
    # a new program), 6 new. 2 was at 0; 5 and 6 have no position before (3 = past the
    # end); 3 and the old 5 (positions 1 and 2) are gone.
    before = table_of([prog(2, 1, 1), prog(3, 1, 1), prog(5, 1, 1)])
    now = table_of([prog(2, 9, 2), prog(5, 4, 1, load=7_000), prog(6, 3, 1)], after=before)
    al = now.layout.alignment
    assert al is not None and al.prev is before.layout
    assert (al.old_pos, al.new, al.gone) == ([0, 3, 3], [1, 2], [1, 2])
    assert now.layout.aligned_to(before.layout) is al
    # Only the newest alignment is kept (no chain of layouts back to the first read).
    later = table_of([prog(2, 9, 2), prog(6, 3, 1)], after=now)
    assert now.layout.alignment is None and later.layout.aligned_to(now.layout) is not None
    assert later.layout.alignment is not None and later.layout.alignment.gone == [1]


def test_node_memory_after_a_change_of_the_set() -> None:
    # Before: 2 (JIT 100, maps 7 and 8: 30 + 50), 3 (JIT 40, map 8), 5 (JIT 10, none).
    # Now: 3 unloaded, 6 new (JIT 7, map 9: 11). Sums over programs, each map once per
    # program: jited 100 + 10 + 7 = 117, map memory 80 + 0 + 11 = 91, maps 2 + 0 + 1.
    memlock = {7: 30, 8: 50, 9: 11}
    p2 = prog(2, 0, 0, jited=100, map_ids=(7, 8), map_memory=80)
    p3 = prog(3, 0, 0, jited=40, map_ids=(8,), map_memory=50)
    p5 = prog(5, 0, 0, jited=10)
    p6 = prog(6, 0, 0, jited=7, map_ids=(9,), map_memory=11)
    before = table_of([p2, p3, p5])
    now = table_of([p2, p5, p6], after=before)
    al = now.layout.alignment
    assert al is not None and al.kept
    got = _memory_after(node_memory(memlock, [p2, p3, p5]), al, [p2, p5, p6])
    assert (got.jited_bytes, got.programs_map_memory_bytes, got.programs_maps) == (117, 91, 3)
    assert got == node_memory(memlock, [p2, p5, p6])


def test_alignment_by_runs_equals_by_id() -> None:
    # align() matches runs of equal identity bytes; _align_by_id looks every id up.
    # Random sets: programs unloaded anywhere, new ones at higher ids, now and then one
    # reloaded under its id (another load time) or many places changed at once.
    rnd = random.Random(7)
    for case in range(300):
        ids = sorted(rnd.sample(range(1, 400), rnd.randint(0, 60)))
        before = table_of([prog(i, 1, 1) for i in ids])
        keep = [i for i in ids if rnd.random() > (0.05 if case % 3 else 0.5)]
        top = max(ids, default=0)
        added = list(range(top + 1, top + 1 + rnd.randint(0, 5)))
        now_ps = [prog(i, 2, 2) for i in keep + added]
        if keep and case % 7 == 0:
            k = rnd.randrange(len(keep))
            now_ps[k] = prog(keep[k], 2, 2, load=9_999)  # reloaded under its id
        raw = raw_of(now_ps)
        by_id = _align_by_id(before.layout, raw)
        runs = align(before.layout, raw)
        assert (runs.old_pos, runs.new, runs.gone) == (by_id.old_pos, by_id.new, by_id.gone), case


def test_topk_by_hand() -> None:
    # limit 1: 9 (ours) is pinned; 2 leads, 1 and 3 add up in [other].
    top = ProgramTopK(limit=1)
    t1 = table_of([prog(1, 5, 1), prog(2, 50, 2), prog(3, 7, 1), prog(9, 1, 1, ours=True)])
    v1 = top.update(t1, pinned=[9])
    assert {k[0] for k in v1.listed} == {2, 9} and v1.rest == (12, 2, 0) and v1.rest_keys == 2
    # 3 overtakes 2 (+100): listed now, so its growth is not [other]'s; 2's +1 is.
    t2 = table_of([prog(1, 5, 1), prog(2, 51, 3), prog(3, 107, 2), prog(9, 1, 1, ours=True)])
    v2 = top.update(t2, pinned=[9])
    assert {k[0] for k in v2.listed} == {3, 9} and v2.rest == (13, 3, 0)


def _random_ticks(seed: int, ticks: int = 40) -> list[list[ProgramStat]]:
    """Programs that all run every tick; now and then some unload and new ones load
    (higher ids, as the kernel allocates them); owners fixed per program."""
    rnd = random.Random(seed)
    owners = [(Owner(10, "agent"),), (Owner(11, "cilium", "c1", "kube-system", "cilium-x"),), ()]
    live: dict[int, list[int]] = {}
    meta: dict[int, tuple[int, tuple[Owner, ...], bool]] = {}
    next_id = 1
    out = []
    for t in range(ticks):
        if t == 0 or rnd.random() < 0.3:
            for pid in rnd.sample(sorted(live), k=min(len(live), rnd.randint(0, 3))):
                del live[pid]
            for _ in range(rnd.randint(1, 8) if t else 30):
                live[next_id] = [0, 0, 0]
                meta[next_id] = (t * 1_000 + 1, rnd.choice(owners), next_id % 11 == 0)
                next_id += 1
        for c in live.values():
            if rnd.random() < 0.9:  # almost every program runs
                runs = rnd.randint(1, 5)
                c[0] += runs * rnd.choice([0, 40, 41, 1_000])  # ties, zeros
                c[1] += runs
                c[2] += rnd.random() < 0.05
        out.append(
            [
                prog(
                    pid,
                    c[0],
                    c[1],
                    misses=c[2],
                    load=meta[pid][0],
                    owners=meta[pid][1],
                    ours=meta[pid][2],
                    name=f"p{pid % 4}",
                )
                for pid, c in sorted(live.items())
            ]
        )
    return out


def test_random_ticks_match_the_row_code() -> None:
    # Seeds 0, 1, 4, 5: each table's layout aligned to the one before (the daemon's
    # tables); 2, 3, 6, 7: independent layouts (keys matched by the consumers).
    for seed in range(8):
        aligned = seed % 4 < 2
        filtered = seed % 2 == 1  # a name filter on odd seeds

        def eligible(k: tuple[int, str, int]) -> bool:
            return k[0] % 4 != 1

        ref: TopKAccumulator[tuple[int, str, int]] = TopKAccumulator(
            width=3, limit=5, score=itemgetter(0), forget_missing=True
        )
        top = ProgramTopK(limit=5)
        ref_owners, tab_owners = OwnerRollup(2), OwnerRollup(2)
        prev_rows = prev_tab = None
        for i, ps in enumerate(_random_ticks(seed)):
            ours = frozenset(p.id for p in ps if p.ours)
            rows = snap(float(i), ps, cpu=0.0, boot=i * 1_000, ours=ours)
            after = prev_tab.programs if aligned and prev_tab is not None else None
            tab = dataclasses.replace(rows, programs=table_of(ps, after))  # type: ignore[arg-type]
            want = ref.update(
                {p.identity: (p.run_time_ns, p.run_cnt, p.recursion_misses) for p in ps},
                pinned=[p.identity for p in ps if p.ours],
                eligible=eligible if filtered else None,
            )
            got = top.update(
                tab.programs,  # type: ignore[arg-type]
                pinned=sorted(ours),
                eligible=eligible if filtered else None,
            )
            assert got == want, (seed, i)
            if prev_rows is not None and prev_tab is not None:
                r_rows = compute_rates(prev_rows, rows)
                r_tab = compute_rates(prev_tab, tab)
                assert r_rows is not None and r_tab is not None
                assert (r_tab.bpf_run_time_ns, r_tab.bpf_runs, r_tab.probes_run_time_ns) == (
                    r_rows.bpf_run_time_ns,
                    r_rows.bpf_runs,
                    r_rows.probes_run_time_ns,
                ), (seed, i)
                assert dict(r_tab.programs) == dict(r_rows.programs), (seed, i)
            else:
                r_rows = r_tab = None
            w = ref_owners.update(rows.programs, r_rows, None)
            g = tab_owners.update(tab.programs, r_tab, None)
            assert g == w, (seed, i)
            prev_rows, prev_tab = rows, tab
