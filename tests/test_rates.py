"""Derived ratios against values worked out by hand from fixture snapshots."""

from __future__ import annotations

import dataclasses

import pytest

from linnix_exporter.rates import compute_rates, hook_prices, program_delta
from linnix_exporter.snapshot import Hook, HookCost, Hooks, StatsState
from tests.fixtures import prog, snap


def test_overhead_ratios_by_hand() -> None:
    # Interval 10 s measured, 2 CPUs. Our probe (id 1) ran 50 ms, a foreign program
    # (id 2) 150 ms; the exporter used 30 ms of CPU.
    prev = snap(
        100.0,
        [prog(1, 1_000_000, 10, ours=True), prog(2, 0, 0)],
        cpu=1.0,
        ours=frozenset({1}),
        boot=5_000,
    )
    cur = snap(
        110.0,
        [prog(1, 51_000_000, 110, ours=True), prog(2, 150_000_000, 40)],
        cpu=1.03,
        ours=frozenset({1}),
        boot=10_000_005_000,
    )
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.interval_seconds == pytest.approx(10.0)
    assert r.probes_run_time_ns == 50_000_000
    assert r.bpf_run_time_ns == 200_000_000
    assert r.bpf_runs == 140
    # (0.05 s + 0.03 s) / (10 s * 2 CPUs) = 0.004; of one core: 0.008
    assert r.overhead_ratio == pytest.approx(0.004)
    assert r.overhead_core_ratio == pytest.approx(0.008)
    assert r.probes_cpu_ratio == pytest.approx(0.0025)
    assert r.exporter_cpu_ratio == pytest.approx(0.0015)
    assert r.bpf_cpu_ratio == pytest.approx(0.01)
    assert r.program_cpu_ratio(2) == pytest.approx(0.0075)


def test_measured_interval_not_nominal() -> None:
    # A tick that fired 2.5 s late: 12.5 s measured, so 125 ms is 1% of one core.
    prev = snap(0.0, [prog(1, 0, 0)], cpu=0.0)
    cur = snap(12.5, [prog(1, 125_000_000, 1)], cpu=0.0)
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.core_ratio(r.bpf_run_time_ns / 1e9) == pytest.approx(0.01)


def test_program_churn_never_negative() -> None:
    # id 3 vanished, id 4 was loaded inside the interval (load_time after prev read),
    # id 5 is new to us but was loaded before the previous read: it contributes nothing.
    prev = snap(0.0, [prog(3, 9_000_000, 9)], cpu=0.0, boot=1_000_000)
    cur = snap(
        1.0,
        [prog(4, 2_000, 2, load=1_500_000), prog(5, 7_000, 7, load=10)],
        cpu=0.0,
        boot=2_000_000,
    )
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.programs[4].run_time_ns == 2_000
    assert r.programs[5].run_time_ns == 0
    assert 3 not in r.programs
    assert r.bpf_run_time_ns == 2_000


def test_reloaded_program_same_id_new_identity() -> None:
    # Same id but a different load time: a different program, counted from its load.
    before = prog(7, 500, 5, load=100)
    after = prog(7, 40, 1, load=900)
    d = program_delta(before, after, prev_boottime_ns=800)
    assert (d.run_time_ns, d.run_cnt) == (40, 1)


def test_counter_going_backwards_clamped() -> None:
    d = program_delta(prog(1, 500, 5), prog(1, 400, 4), prev_boottime_ns=0)
    assert (d.run_time_ns, d.run_cnt) == (0, 0)


def test_no_rates_without_time_passing() -> None:
    s = snap(5.0, [], cpu=0.0)
    assert compute_rates(s, s) is None


def test_sampled_interval_by_hand() -> None:
    # 10 s measured, 2 CPUs, statistics on for 2.5 s of it (sampled mode, duty 0.25),
    # cost 70 ns a run. Counted in the window: our probe 10 ms over 10,000 runs, a
    # foreign program 5 ms over 100,000 runs; the exporter used 30 ms of CPU.
    def stats(on: float) -> StatsState:
        return StatsState(True, "enable_stats_fd", on, "sampled", 70.0, "measured")

    prev = snap(
        100.0,
        [prog(1, 0, 0, ours=True), prog(2, 0, 0)],
        cpu=1.0,
        ours=frozenset({1}),
        stats=stats(50.0),
    )
    cur = snap(
        110.0,
        [prog(1, 10_000_000, 10_000, ours=True), prog(2, 5_000_000, 100_000)],
        cpu=1.03,
        ours=frozenset({1}),
        stats=stats(52.5),
    )
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.duty_ratio == pytest.approx(0.25)
    # Run times are scaled to the whole interval: 10 ms in 2.5 s is 40 ms in 10 s.
    assert r.probes_cpu_ratio == pytest.approx(0.040 / 20)
    assert r.bpf_cpu_ratio == pytest.approx(0.060 / 20)
    assert r.program_cpu_ratio(2) == pytest.approx(0.020 / 20)
    # The stats term is not scaled: runs outside the window paid nothing.
    # 110,000 runs x 70 ns = 7.7 ms.
    assert r.stats_overhead_seconds == pytest.approx(0.0077)
    c = r.component_ratios()
    assert c == pytest.approx({"probes": 0.040 / 20, "exporter": 0.030 / 20, "stats": 0.0077 / 20})
    assert r.overhead_ratio == pytest.approx((0.040 + 0.030 + 0.0077) / 20)
    assert r.overhead_ratio == pytest.approx(sum(c.values()))


def test_stats_already_on_are_not_our_overhead() -> None:
    # Someone else turned statistics on: the node still pays 1,000 runs x 100 ns, but
    # our marginal cost is zero.
    st = StatsState(True, "already_on", 0.0, "always", 100.0, "measured")
    prev = snap(0.0, [prog(2, 0, 0)], cpu=0.0, stats=st)
    cur = snap(10.0, [prog(2, 1_000_000, 1_000)], cpu=0.01, stats=st)
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.stats_overhead_seconds == pytest.approx(1e-4)
    assert r.component_ratios()["stats"] == 0.0
    assert r.overhead_ratio == pytest.approx(0.01 / 20)


def test_unknown_cost_counts_nothing() -> None:
    prev = snap(0.0, [prog(2, 0, 0)], cpu=0.0)
    cur = snap(10.0, [prog(2, 1_000_000, 1_000)], cpu=0.0)
    r = compute_rates(prev, cur)
    assert r is not None
    assert r.stats_overhead_seconds == 0.0
    assert r.duty_ratio == 1.0


# ---- the whole price: hooks (rates.hook_prices, rates.hooks_over) ----------------------

_COSTS = (
    HookCost("uprobe", "measured", cost_ns=16_000.0),
    HookCost("tracepoint", "measured", cost_ns=7.0),
    HookCost("kprobe", "unsupported"),
    HookCost("raw_tracepoint", "failed", reason="statistics switched mid-arm"),
)


def test_hook_prices_split_runs_evenly_and_count_uncalibrated_programs() -> None:
    hooks = Hooks(
        (
            Hook(10, "uprobe", "/bin/x+0x10", pid=5),
            Hook(10, "tracepoint", "syscalls:sys_enter_getppid", pid=5),
            Hook(11, "cgroup", "cgroup_inet_ingress cgroup_id=9", link_id=1, cgroup_id=9),
            Hook(12, "iter", "bpf_prog", link_id=2),
            Hook(13, "tracepoint", "sched:sched_switch", pid=6),
            Hook(13, "lsm", "bpf", link_id=3),
            Hook(14, "kprobe", "do_sys_open+0x0", pid=7),
            Hook(15, "raw_tracepoint", "sys_enter", link_id=4),
        ),
        _COSTS,
    )
    p = hook_prices(hooks)
    # 10: half its runs through the uprobe, half through the tracepoint: (16000 + 7) / 2.
    # 11: a cgroup hook has no calibrated price: 0, and uncalibrated. 12: an iterator is
    # not priced at all. 13: (7 + unknown as 0) / 2, uncalibrated. 14: an unsupported
    # kind is exactly 0 (nothing can attach there), calibrated. 15: calibration failed.
    assert dict(p.per_run_ns) == {10: 8003.5, 11: 0.0, 13: 3.5, 14: 0.0, 15: 0.0}
    assert p.uncalibrated == {11, 13, 15}


def test_hook_seconds_and_the_whole_price_by_hand() -> None:
    # 10 s, 2 CPUs, always mode. Program 1 (ours, tracepoint) ran 1,000 times for 40 us;
    # program 2 (uprobe) 500 times for 50 us; program 3 (not attached) 10 us in 2 runs.
    # Statistics cost 100 ns a run and are ours.
    hooks = Hooks(
        (Hook(1, "tracepoint", "sched:sched_process_fork"), Hook(2, "uprobe", "/bin/y+0x8")),
        _COSTS,
    )
    prev = snap(
        0.0, [prog(1, 0, 0, ours=True), prog(2, 0, 0), prog(3, 0, 0)], 0.0, ours=frozenset({1})
    )
    cur = snap(
        10.0,
        [prog(1, 40_000, 1_000, ours=True), prog(2, 50_000, 500), prog(3, 10_000, 2)],
        0.0,
        ours=frozenset({1}),
        stats=StatsState(True, "enable_stats_fd", 10.0, "always", 100.0, "measured"),
    )
    r = compute_rates(prev, dataclasses.replace(cur, hooks=hooks))
    assert r is not None
    # Hooks: 1,000 x 7 ns = 7 us (ours); 500 x 16 us = 8 ms.
    assert dict(r.program_hooks_ns) == {1: 7_000.0, 2: 8_000_000.0}
    assert r.hooks_ns == 8_007_000.0
    assert r.probes_hooks_ns == 7_000.0
    # Whole price over 20 CPU-seconds: run time 100 us, hooks 8.007 ms, stats 1,502 runs
    # x 100 ns = 150.2 us.
    comp = r.cost_component_ratios()
    assert comp == pytest.approx({"run_time": 5e-6, "hooks": 4.0035e-4, "stats": 7.51e-6})
    assert r.cost_ratio == pytest.approx(5e-6 + 4.0035e-4 + 7.51e-6)
    assert r.bpf_cpu_ratio == pytest.approx(5e-6)  # the body only, as before
    # Our probes' term: 40 us run time + 7 us hooks, over 20 CPU-seconds.
    assert r.component_ratios()["probes"] == pytest.approx(47e-6 / 20)


def test_hooks_unknown_without_the_collector_and_scaled_when_sampled() -> None:
    prev = snap(0.0, [prog(2, 0, 0)], 0.0)
    cur = snap(10.0, [prog(2, 50_000, 500)], 0.0)
    r = compute_rates(prev, cur)  # no hooks read: unknown, not 0
    assert r is not None and r.hooks_ns is None
    assert "hooks" not in r.cost_component_ratios()
    # Sampled: statistics on 2.5 s of the 10 s, so the 500 counted runs stand for 2,000.
    hooks = Hooks((Hook(2, "uprobe", "/bin/y+0x8"),), _COSTS)
    sampled = StatsState(True, "enable_stats_fd", 2.5, "sampled", 100.0, "measured")
    prev = dataclasses.replace(prev, stats=StatsState(True, "enable_stats_fd", 0.0, "sampled"))
    r = compute_rates(prev, dataclasses.replace(cur, hooks=hooks, stats=sampled))
    assert r is not None
    assert r.hooks_ns == pytest.approx(2_000 * 16_000.0)
    # ... while the statistics' component stays exact: only counted runs paid it.
    assert r.cost_component_seconds()["stats"] == pytest.approx(500 * 100e-9)
