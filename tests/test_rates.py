"""Derived ratios against values worked out by hand from fixture snapshots."""

from __future__ import annotations

import pytest

from linnix_exporter.rates import compute_rates, program_delta
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
