"""The owners iterator (bpf/prog_owners_iter.c) against /proc: the same holders, link-only
holders included, from one read."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from linnix_exporter.kernel import iter_loader
from linnix_exporter.kernel.owner_iter import OwnerIterReader
from linnix_exporter.kernel.progstats import scan_owners
from tests.kernel_helpers import link_only_holder
from tests.support import trivial_prog

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def owners() -> Iterator[OwnerIterReader]:
    stats, reader, why = iter_loader.load_iterators()
    stats.close()
    assert reader is not None, why
    yield reader
    reader.close()


def test_same_owners_as_proc_including_link_only_holders(owners: OwnerIterReader) -> None:
    fds = trivial_prog.load_many(5, prefix="lnx_own")
    try:
        with link_only_holder() as holder:
            # Processes elsewhere on this shared machine load and close programs: a pair
            # read while that happens is read again; the comparison itself stays exact.
            for _ in range(10):
                a, b, c = scan_owners(), owners.scan(), scan_owners()
                if a == c == b:
                    break
            assert a == c, "programs kept changing on this machine"
            assert b == a
            by_holder = {i for i, os_ in b.items() if holder.pid in {o.pid for o in os_}}
            assert len(by_holder) == 1
            (prog_id,) = by_holder
            with open(f"/proc/{holder.pid}/comm") as f:
                assert {o.comm for o in b[prog_id] if o.pid == holder.pid} == {f.read().strip()}
        me = {i for i, os_ in b.items() if os.getpid() in {o.pid for o in os_}}
        assert owners.prog_id in me
        assert len(me) >= 5 + 1  # the trivial programs and the iterator itself
    finally:
        trivial_prog.close_all(fds)


def test_closed_fd_is_gone_at_the_next_scan(owners: OwnerIterReader) -> None:
    fds = trivial_prog.load_many(1, prefix="lnx_gone")
    from linnix_exporter.kernel.bpf_syscall import prog_id_of_fd

    prog_id = prog_id_of_fd(fds[0])
    assert os.getpid() in {o.pid for o in owners.scan()[prog_id]}
    trivial_prog.close_all(fds)
    assert prog_id not in owners.scan()
