"""Roll-up by owner (owners.py): the counting rule, and that the owners add up to the
programs, [other] rows included, tick after tick."""

from __future__ import annotations

import dataclasses
import random

from linnix_exporter.owners import UNOWNED, OwnerRollup, memory_by_owner, owner_key
from linnix_exporter.rates import compute_rates
from linnix_exporter.snapshot import Hook, HookCost, Hooks, NodeMemory, Owner, ProgramStat
from tests.fixtures import prog, snap

A = Owner(10, "agent", "a" * 64, "kube-system", "agent-1")
B = Owner(20, "loader")
C = Owner(5, "early")


def test_rule_lowest_pid_once_and_none() -> None:
    assert owner_key(prog(1, 0, 0, owners=(A, B))) == ("agent", "kube-system", "agent-1")
    assert owner_key(prog(1, 0, 0, owners=())) == (UNOWNED, "", "")


def test_hand_worked_ticks() -> None:
    r = OwnerRollup(limit=10)
    agent, loader = ("agent", "kube-system", "agent-1"), ("loader", "", "")
    # Tick 1: program 1 (agent+loader) has 300 ns of history, program 2 (loader) 50 ns:
    # history before the first measurement is not counted; both owners are listed at 0.
    s1 = snap(0.0, [prog(1, 300, 3, owners=(A, B)), prog(2, 50, 1, owners=(B,))], 0.0)
    v = r.update(s1.programs, None, None)
    assert v.run_time_ns == {agent: 0, loader: 0}
    assert v.interval_ns == {}  # no rates on the first tick
    # Tick 2: program 1 +700 ns, program 2 unloaded, program 3 loaded after tick 1 with
    # 40 ns and no holder (all of it ran inside the interval).
    s2 = snap(
        1.0,
        [prog(1, 1000, 9, owners=(A, B)), prog(3, 40, 1, owners=(), load=5)],
        0.0,
        boot=1,
    )
    v = r.update(s2.programs, compute_rates(s1, s2), None)
    assert v.run_time_ns == {agent: 700, loader: 0, (UNOWNED, "", ""): 40}
    assert v.interval_ns == {agent: 700, loader: 0, (UNOWNED, "", ""): 40}
    # Tick 3: nothing ran; counters stay.
    s3 = snap(2.0, list(s2.programs), 0.0, boot=2)
    v = r.update(s3.programs, compute_rates(s2, s3), None)
    assert v.run_time_ns == {agent: 700, loader: 0, (UNOWNED, "", ""): 40}
    assert sum(v.interval_ns.values()) == 0


def test_memory_counts_each_map_once_per_owner() -> None:
    progs = [
        prog(1, 0, 0, owners=(A,), map_ids=(1, 2), jited=100),
        prog(2, 0, 0, owners=(A,), map_ids=(2, 3), jited=50),
        prog(3, 0, 0, owners=(B,), map_ids=(3,), jited=10),
    ]
    memlock = {1: 4096, 2: 8192, 3: 100}
    mem, jited = memory_by_owner(progs, memlock)
    agent = ("agent", "kube-system", "agent-1")
    assert mem == {agent: 4096 + 8192 + 100, ("loader", "", ""): 100}
    assert jited == {agent: 150, ("loader", "", ""): 10}


def test_sum_over_owners_equals_sum_over_programs_with_other_rows() -> None:
    """Random programs loading, running, unloading and changing holders for 300 ticks.
    Every tick: the owners' interval run times (listed + [other], what the ratios show)
    add up to the programs' (the node's run time over the interval); with every owner
    listed, their counters add up to the node's run time since start; with only 3
    listed, each listed counter is that owner's own (the same as with all listed) and
    [other] only grows: the same rule as the program series (topk.py)."""
    rng = random.Random(13)
    owners = [Owner(p, f"c{p % 7}", "", f"ns{p % 3}", f"pod{p % 5}") for p in range(1, 40)]
    roll = OwnerRollup(limit=3)
    every = OwnerRollup(limit=10_000)
    live: dict[int, ProgramStat] = {}
    next_id = 1
    prev = None
    node_total = 0
    listed_seen = set()
    rest_before = 0
    for t in range(300):
        for pid in list(live):
            if rng.random() < 0.05:
                del live[pid]  # unloaded
        while len(live) < 12 or rng.random() < 0.1:
            held = tuple(sorted(rng.sample(owners, rng.randint(0, 3)), key=lambda o: o.pid))
            live[next_id] = prog(next_id, rng.randint(0, 10**6), 1, owners=held, load=t)
            next_id += 1
        for pid, p in list(live.items()):
            grow = rng.choice((0, 0, rng.randint(1, 10**5)))
            held = p.owners
            if rng.random() < 0.05:  # a holder exits, or another process opens it
                held = tuple(sorted(rng.sample(owners, rng.randint(0, 3)), key=lambda o: o.pid))
            live[pid] = p._replace(
                run_time_ns=p.run_time_ns + grow, run_cnt=p.run_cnt + 1, owners=held
            )
        cur = snap(float(t), list(live.values()), 0.0, boot=t)
        rates = compute_rates(prev, cur) if prev else None
        view = roll.update(cur.programs, rates, None)
        full = every.update(cur.programs, rates, None)
        assert len(view.run_time_ns) <= 3
        listed_seen |= set(view.run_time_ns)
        if rates is not None:
            node_total += rates.bpf_run_time_ns
            per_program = sum(d.run_time_ns for d in rates.programs.values())
            assert sum(view.interval_ns.values()) + view.rest_interval_ns == per_program, t
            assert sum(full.interval_ns.values()) == per_program, t
        assert full.rest_run_time_ns == 0
        assert sum(full.run_time_ns.values()) == node_total, t
        for k, v in view.run_time_ns.items():
            assert full.run_time_ns[k] == v, (t, k)
        assert view.rest_run_time_ns >= rest_before
        rest_before = view.rest_run_time_ns
        prev = cur
    assert node_total > 0 and view.rest_run_time_ns > 0  # [other] was exercised
    assert len(listed_seen) > 3  # the listed set moved


def test_memory_follows_the_node_read() -> None:
    r = OwnerRollup(limit=10)
    progs = [prog(1, 0, 0, owners=(B,), map_ids=(1,), jited=7)]
    m1 = NodeMemory(4096, 1, 7, None, {1: 4096})
    assert r.update(progs, None, m1).map_memory_bytes == {("loader", "", ""): 4096}
    m2 = NodeMemory(8192, 1, 7, None, {1: 8192})  # the map grew by the next read
    assert r.update(progs, None, m2).map_memory_bytes == {("loader", "", ""): 8192}
    assert r.update(progs, None, None).map_memory_bytes == {("loader", "", ""): 0}


def test_hook_seconds_ride_the_same_rule_and_add_up_with_other() -> None:
    """Program 1 (agent, lowest pid) on a uprobe, program 2 (loader) on a tracepoint.
    With one owner listed (agent, the larger run time) the loader's hook cost goes to
    "[other]"; listed + rest = the node's hooks_ns."""
    agent = ("agent", "kube-system", "agent-1")
    hooks = Hooks(
        (Hook(1, "uprobe", "/bin/a+0x10", pid=A.pid), Hook(2, "tracepoint", "x:y", pid=B.pid)),
        (HookCost("uprobe", "measured", 16_000.0), HookCost("tracepoint", "measured", 7.0)),
    )
    r = OwnerRollup(limit=1)
    s1 = snap(0.0, [prog(1, 0, 0, owners=(A, B)), prog(2, 0, 0, owners=(B,))], 0.0)
    r.update(s1.programs, None, None)
    s2 = snap(1.0, [prog(1, 900, 6, owners=(A, B)), prog(2, 50, 10, owners=(B,))], 0.0)
    s2 = dataclasses.replace(s2, hooks=hooks)
    rates = compute_rates(s1, s2)
    assert rates is not None and rates.hooks_ns == 6 * 16_000 + 10 * 7
    v = r.update(s2.programs, rates, None)
    assert v.run_time_ns == {agent: 900}
    assert v.hook_ns == {agent: 96_000}  # 6 runs x 16 us
    assert v.rest_hook_ns == 70  # the loader's 10 runs x 7 ns, unlisted
    # Nothing ran: the counters stay.
    s3 = dataclasses.replace(s2, monotonic=2.0)
    v = r.update(s3.programs, compute_rates(s2, s3), None)
    assert (v.hook_ns, v.rest_hook_ns) == ({agent: 96_000}, 70)
