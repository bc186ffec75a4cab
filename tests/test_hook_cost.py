"""Hook cost calibration (kernel/hook_cost.py): the arithmetic on hand-worked rounds,
and on the real kernel: uprobes and the syscall tracepoint measured, kprobe and fentry
reported unsupported here instead of failing, within a stated CPU budget."""

from __future__ import annotations

import pytest

from linnix_exporter.kernel import hook_cost, raw_attach
from linnix_exporter.kernel.hook_cost import FAILED, MEASURED, UNSUPPORTED, HookCalibrator
from linnix_exporter.kernel.stats_cost import OwnStatsFd, StatsCalibrator

UPROBE = hook_cost.MEASURABLE[0]


def figure(
    rounds: list[tuple[float, int, int]], body: tuple[int, int, int], stats: float | None
) -> hook_cost.HookCost:
    return HookCalibrator(stats_cost_ns=stats)._figure(UPROBE, 1000, rounds, body)


def test_figure_statistics_off_subtracts_the_body_arm() -> None:
    # added per event 16,000 .. 16,600 ns: median of 7 is 16,100; body arm 53 ns a run
    rounds = [(a, 0, 0) for a in (16_000, 16_600, 16_100, 16_050, 16_300, 16_020, 16_200)]
    got = figure(rounds, (0, 53_000, 1000), None)
    assert (got.source, got.added_ns, got.body_ns) == (MEASURED, 16_100, 53)
    assert got.cost_ns == 16_100 - 53 and got.rounds == 7


def test_figure_statistics_held_on_subtracts_body_and_their_cost() -> None:
    # every "with" arm counted runs: 60 ns a run on average, statistics cost 40 ns a run
    rounds = [(300.0, 60_000, 1000), (320.0, 60_000, 1000), (310.0, 60_000, 1000)] * 2
    got = figure(rounds, (0, 0, 0), 40.0)
    assert got.source == MEASURED and got.body_ns == 60 and got.added_ns == 310
    assert got.cost_ns == 310 - 60 - 40
    assert "held on" in got.reason


def test_figure_held_on_without_a_stats_cost_or_mixed_arms_fails() -> None:
    held = [(300.0, 60_000, 1000)] * 5
    assert figure(held, (0, 0, 0), None).source == FAILED
    mixed = [(300.0, 0, 0)] * 3 + [(300.0, 60_000, 1000)] * 3
    assert figure(mixed, (0, 60_000, 1000), 40.0).source == FAILED


def test_figure_body_arm_that_missed_runs_fails() -> None:
    rounds = [(16_000.0, 0, 0)] * 5
    got = figure(rounds, (0, 10_000, 200), None)  # 200 runs for 1,000 events
    assert got.source == FAILED and "200 times" in got.reason


def test_figure_never_negative() -> None:
    got = figure([(30.0, 0, 0)] * 5, (0, 50_000, 1000), None)  # noise below the body
    assert got.cost_ns == 0.0 and got.added_ns == 30


# ---- on the real kernel ------------------------------------------------------------


def _stats_cost_ns() -> float:
    """The statistics' cost a run, used only if another holder keeps them on (a
    neighbour's exporter on this shared machine): the project's own estimate."""
    est = StatsCalibrator().estimate(None)
    return est.cost_ns if est else 0.0


@pytest.mark.kernel
@pytest.mark.skipif(raw_attach.kprobe_supported(), reason="this kernel has kprobes")
def test_kprobe_and_fentry_reported_unsupported_here() -> None:
    sw = OwnStatsFd()
    cal = HookCalibrator().calibrate(sw.on, sw.off, kinds=("kprobe", "kretprobe", "fentry"))
    got = {c.hook: c for c in cal.costs}
    assert sorted(got) == ["fentry", "kprobe", "kretprobe"]
    assert all(c.source == UNSUPPORTED and c.reason for c in got.values()), got
    assert "kprobe" in got["kprobe"].reason and "fentry" in got["fentry"].reason


@pytest.mark.kernel
def test_uprobe_and_tracepoint_calibrated_within_budget() -> None:
    sw = OwnStatsFd()
    cal = HookCalibrator(stats_cost_ns=_stats_cost_ns()).calibrate(
        sw.on, sw.off, kinds=("uprobe", "tracepoint")
    )
    got = cal.by_hook()
    up, tp = got["uprobe"], got["tracepoint"]
    assert up.source == MEASURED and tp.source == MEASURED, (up, tp)
    # Measured here: a uprobe costs 15.9-17.5 us a hit against a 50-100 ns body (int3 +
    # single-step in a VM). 20x the body is a floor no noise of a 1,000-event arm
    # (a few us in all) reaches; a bare-metal uprobe (~1.7 us published) passes it too.
    assert up.cost_ns > 20 * up.body_ns > 0, up
    # The tracepoint's glue was 7-120 ns here (load-dependent); it cannot reach a trap.
    assert 0 <= tp.cost_ns < up.cost_ns / 5, (tp, up)
    assert tp.body_ns > 0 and tp.events == hook_cost.SYSCALL_EVENTS
    # CPU budget: 0.28 s measured here for a uprobe kind under load (7 rounds of 1,000
    # hits at ~17 us each, the child's loop, its start); 0.5 s for a syscall kind.
    # 3 s for both leaves room for a loaded shared machine, not for a 10x regression.
    assert cal.cpu_seconds < 3.0, cal
