"""Derived ratios against values worked out by hand from fixture snapshots."""

from __future__ import annotations

import pytest

from linnix_exporter.rates import compute_rates, program_delta
from linnix_exporter.snapshot import StatsState
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
