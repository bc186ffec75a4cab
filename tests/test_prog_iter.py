"""The bpf_prog iterator (kernel/prog_iter.py) against ProgReader and bpftool."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from linnix_exporter.kernel import iter_loader
from linnix_exporter.kernel.bpf_objects import KERNEL_NAME_MAX, ObjectsReader
from linnix_exporter.kernel.bpf_syscall import (
    ProgReader,
    RawProg,
    decode_name,
    enable_stats,
    prog_id_of_fd,
    prog_type_name,
)
from linnix_exporter.kernel.prog_iter import (
    RECORD_SIZE,
    IterError,
    IterProgReader,
    contiguous_possible_cpus,
)
from tests.kernel_helpers import bpftool_progs, bpftrace_fork_counter, forks
from tests.support import trivial_prog

N_TRIVIAL = 1000


def test_record_is_64_bytes() -> None:
    assert RECORD_SIZE == 64


@pytest.mark.parametrize(("text", "n"), [("0", 1), ("0-1", 2), ("0-127", 128)])
def test_possible_cpus(text: str, n: int) -> None:
    assert contiguous_possible_cpus(text) == n


@pytest.mark.parametrize("text", ["0-3,8", "1-3", "", "x"])
def test_sparse_possible_cpus_refused(text: str) -> None:
    with pytest.raises(IterError):
        contiguous_possible_cpus(text)


@pytest.fixture(scope="module")
def reader() -> Iterator[IterProgReader]:
    r = iter_loader.load_iterators(owners=False)[0]
    yield r
    r.close()


@pytest.fixture(scope="module")
def trivial() -> Iterator[list[int]]:
    fds = trivial_prog.load_many(N_TRIVIAL, prefix="lnx_iter")
    yield fds
    trivial_prog.close_all(fds)


@pytest.fixture
def stats_on() -> Iterator[None]:
    fd = enable_stats()
    yield
    os.close(fd)


def _static(r: RawProg) -> tuple[int, int, bytes, int, bytes]:
    return r.type, r.id, r.tag, r.load_time_ns, r.name


@pytest.mark.kernel
def test_every_program_matches_prog_reader(reader: IterProgReader, trivial: list[int]) -> None:
    ours = reader.all()
    ref = ProgReader().all()
    ids = [r.id for r in ours]
    assert ids == sorted(ids)
    mine = {r.id: r for r in ours}
    theirs = {r.id: r for r in ref}
    # Programs can come and go on the host between the two reads, but not ours.
    both = set(mine) & set(theirs)
    assert len(both) >= N_TRIVIAL + 1
    assert reader.prog_id in both
    for pid in both:
        assert _static(mine[pid]) == _static(theirs[pid]), pid
    # Ours by id from their fds, never by name: another session here may load programs
    # of the same names (this very test, run elsewhere at once).
    trivial_ids = [prog_id_of_fd(fd) for fd in trivial]
    assert set(trivial_ids) <= set(mine)
    names = [decode_name(mine[i].name) for i in trivial_ids]
    assert names == [f"lnx_iter{n}" for n in range(N_TRIVIAL)]
    # Programs that never ran (no stats, no runs) read as zeros, like the syscall path.
    for pid in trivial_ids:
        assert (mine[pid].run_cnt, mine[pid].run_time_ns, mine[pid].recursion_misses) == (0, 0, 0)


@pytest.mark.kernel
def test_every_program_matches_bpftool(reader: IterProgReader, trivial: list[int]) -> None:
    ours = {r.id: r for r in reader.all()}
    oracle = bpftool_progs()
    both = set(ours) & set(oracle)
    assert len(both) >= N_TRIVIAL + 1
    objects = ObjectsReader()
    for pid in both:
        r, o = ours[pid], oracle[pid]
        assert r.tag.hex() == o["tag"], pid
        assert prog_type_name(r.type) == o["type"], pid
        name = decode_name(r.name)
        if len(name) < KERNEL_NAME_MAX:
            assert o.get("name", "") == name, pid
            continue
        # A 15-character name may be truncated: bpftool prints the BTF function name
        # instead, which need not start with it (bcc names a tracepoint program after
        # its tracepoint, `raw_syscalls__s`, its function `tracepoint__raw_syscalls__sys_exit`).
        details = objects.read_details(pid)
        if details is not None:  # else unloaded since bpftool listed it
            assert o.get("name", "") == details.name, pid


@pytest.mark.kernel
def test_run_stats_sandwich_bpftool(
    reader: IterProgReader, trivial: list[int], stats_on: None
) -> None:
    with bpftrace_fork_counter() as (_, prog_id):
        forks(2000)
        # bpftool forks, so its counters land between our two reads.
        before = {r.id: r for r in reader.all()}[prog_id]
        oracle = bpftool_progs()[prog_id]
        after = {r.id: r for r in reader.all()}[prog_id]
        assert before.run_cnt >= 2000
        assert before.run_cnt <= oracle["run_cnt"] <= after.run_cnt
        assert before.run_time_ns <= oracle["run_time_ns"] <= after.run_time_ns
        # And the syscall path read between them too.
        forks(100)
        mid = ProgReader().info_by_id(prog_id)
        forks(100)
        last = {r.id: r for r in reader.all()}[prog_id]
        assert mid is not None
        assert after.run_cnt <= mid.run_cnt <= last.run_cnt
        assert after.run_time_ns <= mid.run_time_ns <= last.run_time_ns
        assert last.run_cnt >= after.run_cnt + 200
        assert last.recursion_misses == mid.recursion_misses == 0


@pytest.mark.kernel
def test_iterator_runs_are_accounted_to_itself(reader: IterProgReader, stats_on: None) -> None:
    first = {r.id: r for r in reader.all()}
    n = len(first)
    second = {r.id: r for r in reader.all()}
    me0, me1 = first[reader.prog_id], second[reader.prog_id]
    # One run per program plus the end-of-iteration call, give or take churn.
    assert me1.run_cnt - me0.run_cnt >= n
    assert me1.run_time_ns > me0.run_time_ns


@pytest.mark.kernel
def test_close_unloads_the_iterator() -> None:
    r = iter_loader.load_iterators(owners=False)[0]
    pid = r.prog_id
    assert pid in {p.id for p in r.all()}
    r.close()
    r.close()  # idempotent
    with pytest.raises(IterError):
        r.all()
    deadline = time.monotonic() + 10
    while ProgReader().info_by_id(pid) is not None:
        assert time.monotonic() < deadline, "iterator program still loaded after close()"
        time.sleep(0.05)
    assert pid not in bpftool_progs()
