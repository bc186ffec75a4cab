"""Program statistics against bpftool, on the real kernel."""

from __future__ import annotations

import os

import pytest

from linnix_exporter.kernel.bpf_syscall import enable_stats
from linnix_exporter.kernel.progstats import OwnerScanner, ProgramPass, ProgramReads, scan_owners
from tests.kernel_helpers import bpftool_progs, bpftrace_fork_counter, forks, link_only_holder
from tests.support import trivial_prog

pytestmark = pytest.mark.kernel


@pytest.fixture
def stats_on():  # type: ignore[no-untyped-def]
    fd = enable_stats()
    yield
    os.close(fd)


def programs() -> ProgramPass:
    """What the daemon composes, with the /proc owner walk and the bpf() syscalls."""
    return ProgramPass(ProgramReads(), OwnerScanner())


def test_foreign_program_matches_bpftool_and_owner(stats_on: None) -> None:
    reader = programs()
    with bpftrace_fork_counter() as (bpftrace, prog_id):
        forks(3000)
        # Sandwich bpftool's read between two of ours: forks happen in between (bpftool
        # itself forks), so bpftool's counters must lie between our two readings.
        before = {p.id: p for p in reader.rows()}[prog_id]
        oracle = bpftool_progs()[prog_id]
        after = {p.id: p for p in reader.rows()}[prog_id]
        assert before.run_cnt <= oracle["run_cnt"] <= after.run_cnt
        assert before.run_time_ns <= oracle["run_time_ns"] <= after.run_time_ns
        assert before.run_cnt >= 3000
        # Read at the same moment, ours and bpftool's agree within 1%.
        assert abs(before.run_cnt - oracle["run_cnt"]) <= 0.01 * oracle["run_cnt"]
        assert abs(before.run_time_ns - oracle["run_time_ns"]) <= 0.01 * oracle["run_time_ns"]
        assert after.name == oracle["name"]
        assert after.tag == oracle["tag"]
        assert after.type == oracle["type"]
        assert after.ours is False
        assert bpftrace.pid in {o.pid for o in after.owners}
        assert {o.comm for o in after.owners if o.pid == bpftrace.pid} == {"bpftrace"}


def test_every_program_is_listed() -> None:
    fds = trivial_prog.load_many(20, prefix="lnx_list")
    try:
        ours = {p.id: p for p in programs().rows()}
        oracle = bpftool_progs()
        # Programs that bpftool listed and we did not can only be ones loaded meanwhile.
        assert all(i > max(ours) for i in set(oracle) - set(ours))
        mine = [p for p in ours.values() if p.name.startswith("lnx_list")]
        assert len(mine) == 20
        for p in mine:
            assert oracle[p.id]["name"] == p.name
            assert oracle[p.id]["type"] == "socket_filter"
            assert os.getpid() in {o.pid for o in p.owners}
    finally:
        trivial_prog.close_all(fds)


def test_new_ids_found_without_full_walk() -> None:
    reader = programs()
    reader.rows()
    fds = trivial_prog.load_many(3, prefix="lnx_new")
    try:
        names = {p.name for p in reader.rows()}  # second read: incremental walk
        assert {"lnx_new0", "lnx_new1", "lnx_new2"} <= names
    finally:
        trivial_prog.close_all(fds)
    assert not {"lnx_new0"} & {p.name for p in reader.rows()}


def test_link_only_holder_is_an_owner() -> None:
    """An agent that keeps only the link fd (prog fd closed) still owns the program."""
    with link_only_holder() as p:
        owned = {pid for pid, owners in scan_owners().items() if p.pid in {o.pid for o in owners}}
        assert owned, "the link holder was not found as an owner"
