"""Turning BPF stats on and leaving them as found: fd method, sysctl fallback, crash
recovery. Checked through the kernel's own counters and the sysctl file."""

from __future__ import annotations

from pathlib import Path

import pytest

from linnix_exporter.kernel.progstats import ProgramStatsReader
from linnix_exporter.kernel.stats_switch import SYSCTL, StatsSwitch
from tests.kernel_helpers import bpftrace_fork_counter, forks

pytestmark = pytest.mark.kernel


def runs(prog_id: int) -> int:
    return {p.id: p for p in ProgramStatsReader().read()}[prog_id].run_cnt


def test_fd_method_counts_while_held_and_stops_after(tmp_path: Path) -> None:
    assert SYSCTL.read_text().strip() == "0", "another agent left the stats sysctl on"
    with bpftrace_fork_counter() as (_, prog_id):
        forks(20)
        assert runs(prog_id) == 0  # stats off: the kernel does not count
        sw = StatsSwitch(marker=tmp_path / "m")
        state = sw.enable("auto")
        assert (state.enabled, state.method) == (True, "enable_stats_fd")
        forks(20)
        counted = runs(prog_id)
        assert counted >= 20
        sw.close()
        assert sw.state().enabled is False
        forks(20)
        assert runs(prog_id) == counted  # frozen, not reset, once the fd is closed
    assert SYSCTL.read_text().strip() == "0"  # the fd method never touched it


def test_sysctl_fallback_restores_value(tmp_path: Path) -> None:
    marker = tmp_path / "run" / "orig"
    assert SYSCTL.read_text().strip() == "0"
    sw = StatsSwitch(marker=marker)
    state = sw.enable("sysctl")
    try:
        assert (state.enabled, state.method) == (True, "sysctl")
        assert SYSCTL.read_text().strip() == "1"
        assert marker.read_text() == "0"
        with bpftrace_fork_counter() as (_, prog_id):
            forks(10)
            assert runs(prog_id) >= 10
    finally:
        sw.close()
    assert SYSCTL.read_text().strip() == "0"
    assert not marker.exists()


def test_sysctl_switched_off_behind_our_back_is_reported(tmp_path: Path) -> None:
    sw = StatsSwitch(marker=tmp_path / "m")
    sw.enable("sysctl")
    try:
        SYSCTL.write_text("0")
        assert sw.state().enabled is False
    finally:
        sw.close()


def test_crash_recovery_puts_sysctl_back(tmp_path: Path) -> None:
    marker = tmp_path / "orig"
    # A predecessor turned the sysctl on and was SIGKILLed before restoring it.
    marker.write_text("0")
    SYSCTL.write_text("1")
    try:
        assert StatsSwitch(marker=marker).recover_after_crash() == "0"
        assert SYSCTL.read_text().strip() == "0"
        assert not marker.exists()
    finally:
        SYSCTL.write_text("0")


def test_off_method_touches_nothing(tmp_path: Path) -> None:
    sw = StatsSwitch(marker=tmp_path / "m")
    assert sw.enable("off").enabled is False
    assert SYSCTL.read_text().strip() == "0"
    sw.close()
