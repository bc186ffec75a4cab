"""Hook cost calibration (kernel/hook_cost.py): the arithmetic on hand-worked rounds,
and on the real kernel: uprobes and the syscall tracepoint measured, kprobe and fentry
reported unsupported here instead of failing, within a stated CPU budget."""

from __future__ import annotations

import os

import pytest

from linnix_exporter.kernel import hook_cost, raw_attach
from linnix_exporter.kernel.hook_cost import FAILED, MEASURED, UNSUPPORTED, HookCalibrator
from linnix_exporter.kernel.hooks import all_hooks
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
    # measured_shared: another helper's program on a syscall tracepoint (the machine
    # is shared); the figure is still a measurement, its bound below.
    assert up.source == MEASURED and tp.source in (MEASURED, hook_cost.SHARED), (up, tp)
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


def test_syscall_tracepoint_sharers_are_every_syscall_tracepoint() -> None:
    Hook = hook_cost.hooks.Hook
    mine = [
        Hook(1, "tracepoint", "sys_enter_getppid"),
        Hook(2, "tracepoint", "sys_exit_openat"),
        Hook(3, "raw_tracepoint", "sys_enter"),
        Hook(4, "tracepoint", "raw_syscalls:sys_exit"),
    ]
    others = [
        Hook(5, "tracepoint", "sched_process_fork"),
        Hook(6, "raw_tracepoint", "sched_switch"),
        Hook(7, "uprobe", "/lib/x86_64-linux-gnu/libc.so.6+0x48a60"),
        Hook(8, "kprobe", "sys_enter_x+0x0"),  # not a tracepoint, whatever its name
    ]
    assert hook_cost.syscall_tracepoint_sharers(mine + others) == mine


def test_private_copy_is_a_new_libz_file_removed_on_close() -> None:
    t = hook_cost.Trigger()
    try:
        assert t.private and t.lib == t.private and t.func == hook_cost.PRIVATE_FUNC
        assert os.path.basename(t.private).startswith("linnix-hook-cost-")
        with open(f"/proc/{t.proc.pid}/maps") as f:
            assert t.private in f.read()  # the child calls into the copy
        assert t.run("call", 10) > 0
    finally:
        t.close()
    assert not os.path.exists(t.private)


LIBC = "/lib/x86_64-linux-gnu/libc.so.6"


@pytest.mark.kernel
def test_uprobe_cost_unmoved_by_another_agent_on_the_target() -> None:
    """Another agent's uprobe on libc abs (the old target) and tracepoint on getppid: the
    uprobe's calibrated cost stays where a calibration without the agent put it, in the
    same test; the tracepoint reports the sharing with the agent's program."""
    from tests.test_hook_accounting import bpftrace

    stats = _stats_cost_ns()
    sw = OwnStatsFd()

    def uprobe_and_tracepoint() -> tuple[hook_cost.HookCost, hook_cost.HookCost]:
        got = HookCalibrator(stats_cost_ns=stats).calibrate(
            sw.on, sw.off, kinds=("uprobe", "tracepoint")
        )
        return got.by_hook()["uprobe"], got.by_hook()["tracepoint"]

    alone, _ = uprobe_and_tracepoint()
    with (
        bpftrace("-e", f"uprobe:{LIBC}:abs {{ @n = count(); }}"),
        bpftrace("-e", "tracepoint:syscalls:sys_enter_getppid { @n = count(); }") as tp_id,
    ):
        beside, tp = uprobe_and_tracepoint()
        sharers = {h.prog_id for h in hook_cost.syscall_tracepoint_sharers(all_hooks())}
    assert alone.source == MEASURED and beside.source == MEASURED, (alone, beside)
    assert "libz" in beside.target, beside
    # The fooled figure was 990 ns against 16 us (16x); two calibrations of one target a
    # minute apart moved by 10% here, under a busy neighbour 1.5x: 2x tells them apart.
    assert alone.cost_ns / 2 < beside.cost_ns < alone.cost_ns * 2, (alone, beside)
    assert tp.source == hook_cost.SHARED, tp
    assert tp_id in sharers and f"prog_id {tp_id}" in tp.reason, tp  # the newest first
    print(f"uprobe alone {alone.cost_ns:.0f} ns, beside bpftrace {beside.cost_ns:.0f} ns")
