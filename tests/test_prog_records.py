"""The syscall path's records (ProgReader.records): bpf_prog_info structs cut into the
iterator's 64-byte records by strided copies. A hand-worked fixture first, then the
real kernel against ProgReader.all() (one RawProg per program, the reference)."""

from __future__ import annotations

import os
import struct

import pytest

from linnix_exporter.kernel.bpf_syscall import (
    _INFO,
    _INFO_SIZE,
    ProgReader,
    RawProg,
    enable_stats,
    info_records,
)
from linnix_exporter.prog_table import RECORD, RawTable
from tests.support import trivial_prog


def test_info_records_by_hand() -> None:
    # Two bpf_prog_info structs back to back, every field we keep set to a value of
    # its own, and the bytes we drop (the 24 after the tag, the 16 after load_time,
    # the 112 before run_time_ns, the tail) 0xee, so a copy from a wrong word shows.
    infos = bytearray(b"\xee" * (2 * _INFO_SIZE))
    a = (1, 7, b"\x01\x02\x03\x04\x05\x06\x07\x08", 5_000, b"first\0".ljust(16, b"\0"), 300, 4, 1)
    b = (26, 4_000_000_000, b"tagtagta", 2**63 + 5, b"x" * 16, 2**64 - 1, 0, 0)
    _INFO.pack_into(infos, 0, *a)
    _INFO.pack_into(infos, _INFO_SIZE, *b)
    got = info_records(bytes(infos))
    assert got == RECORD.pack(*a) + RECORD.pack(*b)
    assert len(got) == 2 * 64
    # Whole records only: the columns of one record sit at words 0-7.
    assert struct.unpack_from("<II", got, 64) == (26, 4_000_000_000)
    assert info_records(b"") == b""


@pytest.mark.kernel
def test_records_match_one_info_per_program() -> None:
    stats = enable_stats()  # run counts advance only while statistics are on
    fds = trivial_prog.load_many(50, prefix="lnx_recs")
    try:
        for i, fd in enumerate(fds):
            trivial_prog.run(fd, repeat=i + 1)  # run counts 1..50: each program its own
        reader = ProgReader()
        for _ in range(2):  # a full id walk, then known ids + the walk above them
            got = {r.id: r for r in RawTable(reader.records()).records()}
            ref = {r.id: r for r in ProgReader().all()}
            ours = [pid for pid, r in ref.items() if r.name.startswith(b"lnx_recs")]
            assert len(ours) == 50
            # Other programs come and go on a shared host, ours do not, and theirs do
            # not run between the two reads (only this test runs them).
            for pid in ours:
                assert got[pid] == ref[pid], pid
            assert sorted(r.run_cnt for pid, r in got.items() if pid in ours) == list(range(1, 51))
            assert isinstance(next(iter(got.values())), RawProg)
    finally:
        trivial_prog.close_all(fds)
        os.close(stats)
