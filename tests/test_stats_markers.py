"""Several instances sharing the sysctl method (kernel/stats_markers.py), each a real
process with its own StatsSwitch, the sysctl pointed at a file (the same writes as the
real one: tests/test_stats_switch.py does it on the real sysctl). Liveness is the
kernel's: a SIGKILLed process loses its marker's lock."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

from linnix_exporter.kernel.stats_markers import markers, saved
from linnix_exporter.kernel.stats_switch import StatsSwitch
from tests.support.switch_user import user


def sysctl_file(tmp_path: Path, value: str = "0") -> Path:
    f = tmp_path / "bpf_stats_enabled"
    f.write_text(value)
    return f


def test_second_instance_joins_and_last_one_out_restores(tmp_path: Path) -> None:
    """The old single marker: B "recovered" A's value under A, then saw already_on and
    let A switch the sysctl off under it."""
    f = sysctl_file(tmp_path)
    run = tmp_path / "run"
    with user(run, f) as a, user(run, f) as b:
        assert a.ask("enable sysctl") == "sysctl True"
        assert b.ask("recover") == "None"  # A lives: its marker is not a crash's
        assert f.read_text() == "1"
        assert b.ask("enable sysctl") == "sysctl True"  # joined, not already_on
        # B found the sysctl at 1 but saves what A found before it.
        assert (saved(a.pid, run), saved(b.pid, run)) == (["0"], ["0"])
        assert a.ask("close") == "off False"
        assert f.read_text() == "1"  # B still wants it
        assert b.ask("state") == "sysctl True"
        assert b.ask("close") == "off False"
        assert f.read_text() == "0"  # the last one out
    assert markers(run) == []


def test_killed_member_is_recovered_only_when_nobody_wants_it(tmp_path: Path) -> None:
    f = sysctl_file(tmp_path)
    run = tmp_path / "run"
    with user(run, f) as a, user(run, f) as b, user(run, f) as c:
        assert a.ask("enable sysctl") == "sysctl True"
        assert b.ask("enable sysctl") == "sysctl True"
        a.kill()
        # C starting: A's marker is dead and removed, but B keeps the sysctl on.
        assert c.ask("recover") == "None"
        assert markers(run, a.pid) == []
        assert f.read_text() == "1"
        b.kill()
        # Nobody alive wants it now: C puts back what the first one in found.
        assert c.ask("recover") == "0"
        assert (f.read_text(), markers(run)) == ("0", [])


def test_a_live_pid_in_the_name_is_not_an_owner(tmp_path: Path) -> None:
    """Liveness is the marker's lock, never the pid in its name: a pid reused by another
    process (here: this test's own, alive) does not keep a dead marker."""
    f = sysctl_file(tmp_path, "1")
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f"bpf_stats_enabled.{os.getpid()}.0badcafe.orig"
    stale.write_text("0\n")
    assert StatsSwitch(sysctl=f, markers=run).recover_after_crash() == "0"
    assert (f.read_text(), stale.exists()) == ("0", False)


def test_older_versions_single_marker_is_recovered(tmp_path: Path) -> None:
    f = sysctl_file(tmp_path, "1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "bpf_stats_enabled.orig").write_text("0")  # what versions before this wrote
    assert StatsSwitch(sysctl=f, markers=run).recover_after_crash() == "0"
    assert (f.read_text(), markers(run)) == ("0", [])


def test_sampled_pause_leaves_it_on_for_the_others(tmp_path: Path) -> None:
    """off() in sampled mode pauses our share: the sysctl goes to 0 only when no live
    member wants it on."""
    f = sysctl_file(tmp_path)
    run = tmp_path / "run"
    with user(run, f) as a, user(run, f) as b:
        a.ask("enable sysctl")
        b.ask("enable sysctl")
        assert a.ask("off") == "sysctl True"  # B holds it on
        assert b.ask("off") == "sysctl False"  # both paused: back to 0
        assert a.ask("on") == "sysctl True"
        b.kill()  # a paused member killed: nothing to put back while A wants it
        assert a.ask("recover") == "None"
        assert f.read_text() == "1"
        assert a.ask("close") == "off False"
        assert (f.read_text(), markers(run)) == ("0", [])


def test_sysctl_on_by_someone_else_is_not_ours(tmp_path: Path) -> None:
    f = sysctl_file(tmp_path, "1")
    run = tmp_path / "run"
    with user(run, f) as a:
        assert a.ask("enable sysctl") == "already_on True"
        assert markers(run) == []
        assert a.ask("close") == "off False"
    assert f.read_text() == "1"


def test_many_starting_and_stopping_at_once(tmp_path: Path) -> None:
    """Six instances told to start in the same instant, then to stop: the folder lock
    serialises them, so each joins (none sees its peers' 1 as someone else's) and the
    sysctl goes back to 0 only after the last."""
    f = sysctl_file(tmp_path)
    run = tmp_path / "run"
    with ExitStack() as stack:
        users = [stack.enter_context(user(run, f)) for _ in range(6)]
        for u in users:  # all written before any answer is read
            assert u.proc.stdin is not None
            u.proc.stdin.write("enable sysctl\n")
            u.proc.stdin.flush()
        answers = [u.proc.stdout.readline().split() for u in users if u.proc.stdout]
        # The method only: "enabled" is read outside the lock, and a file (unlike the
        # real sysctl) reads empty for an instant while a peer rewrites it.
        assert [method for method, _ in answers] == ["sysctl"] * 6
        assert f.read_text() == "1"
        assert [saved(u.pid, run) for u in users] == [["0"]] * 6
        for u in users:
            assert u.proc.stdin is not None
            u.proc.stdin.write("close\n")
            u.proc.stdin.flush()
        assert [u.proc.stdout.readline().strip() for u in users if u.proc.stdout] == [
            "off False"
        ] * 6
    assert (f.read_text(), markers(run)) == ("0", [])
