"""Kernel memory, map counts, JIT'd sizes and full names of foreign programs (bpftrace and
bcc's syscount from bpfcc-tools) against bpftool, on the real kernel."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linnix_exporter.kernel import iter_loader
from linnix_exporter.kernel.bpf_objects import KERNEL_NAME_MAX, ObjectsReader, jit_limit
from linnix_exporter.kernel.prog_iter import PROG_NAME
from linnix_exporter.kernel.progstats import (
    OwnerScanner,
    ProgramPass,
    ProgramReads,
    ProgSource,
)
from linnix_exporter.snapshot import ProgramStat
from tests.kernel_helpers import bpftool_progs, foreign_agent
from tests.support import trivial_prog

pytestmark = pytest.mark.kernel

# Several maps of different kinds: a per-comm count (per-CPU hash), a histogram and a
# plain hash keyed by pid.
BPFTRACE = (
    "tracepoint:raw_syscalls:sys_enter { @calls[comm] = count(); @ids = hist(args->id); }"
    " tracepoint:sched:sched_process_fork { @forks[pid] = count(); }"
)


def bpftool_maps() -> dict[int, dict[str, Any]]:
    out = subprocess.run(
        ["bpftool", "map", "show", "-j"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return {m["id"]: m for m in json.loads(out)}


@contextlib.contextmanager
def foreign(argv: list[str], count: int) -> Iterator[list[int]]:
    with foreign_agent(argv, count) as (_, ids):
        yield ids


def _check(ours: ProgramStat, progs: dict[int, Any], maps: dict[int, Any]) -> list[str]:
    """What differs between our row and bpftool's view of the same program."""
    o = progs[ours.id]
    want_maps = sorted(o.get("map_ids", []))
    want_mem = sum(maps[m]["bytes_memlock"] for m in want_maps)
    got = (ours.name, ours.jited_bytes, list(ours.map_ids), ours.map_memory_bytes)
    want = (o["name"], o["bytes_jited"], want_maps, want_mem)
    return [] if got == want else [f"{ours.id}: ours {got} != bpftool {want}"]


def programs(source: ProgSource | None = None, owner_refresh: float = 60.0) -> ProgramPass:
    """What the daemon composes (bpf() syscalls unless `source`, the /proc owner walk).
    `owner_refresh` 0: an owner scan, so a read of every map's memory, on every read."""
    budget = math.inf if owner_refresh == 0 else 1.0  # no pause after a scan either
    return ProgramPass(ProgramReads(source), OwnerScanner(owner_refresh, budget=budget))


def _compare(ids: list[int], reader: ProgramPass) -> list[str]:
    """Our rows against bpftool for `ids`. A hash map without preallocation grows as it
    gets new keys, so a map's memlock may move between our read and bpftool's: the
    comparison is repeated (a few times at most), never loosened."""
    diffs: list[str] = []
    for _ in range(5):
        rows = {p.id: p for p in reader.rows()}  # owner_refresh 0: memory read again
        progs, maps = bpftool_progs(), bpftool_maps()
        diffs = [d for i in ids for d in _check(rows[i], progs, maps)]
        if not diffs:
            return []
        time.sleep(0.5)
    return diffs


@pytest.mark.skipif(shutil.which("bpftrace") is None, reason="needs bpftrace")
def test_bpftrace_programs_match_bpftool() -> None:
    with foreign(["bpftrace", "-e", BPFTRACE], 2) as ids:
        reader = programs(owner_refresh=0)
        assert _compare(ids, reader) == []
        rows = {p.id: p for p in reader.rows()}
        assert all(rows[i].jited_bytes > 0 and rows[i].map_ids for i in ids)
        # Three maps: at least one program uses two of them.
        assert max(len(rows[i].map_ids) for i in ids) >= 2


@pytest.mark.skipif(shutil.which("syscount-bpfcc") is None, reason="needs bpfcc-tools")
def test_bcc_syscount_full_name_and_memory_match_bpftool() -> None:
    # bcc loads it as "raw_syscalls__s" (15 characters); its BTF names the function
    # tracepoint__raw_syscalls__sys_exit, which bpftool prints.
    with foreign(["syscount-bpfcc", "-i", "60"], 1) as ids:
        for method in ("syscall", "iterator"):
            source = iter_loader.load_iterators(owners=False)[0] if method == "iterator" else None
            reader = programs(source, owner_refresh=0)
            try:
                assert _compare(ids, reader) == [], method
                rows = {p.id: p for p in reader.rows()}
                names = [rows[i].name for i in ids]
                assert all(len(n) > KERNEL_NAME_MAX for n in names), names
                assert "tracepoint__raw_syscalls__sys_exit" in names
            finally:
                reader.close()


@pytest.mark.skipif(shutil.which("syscount-bpfcc") is None, reason="needs bpfcc-tools")
def test_snapshot_and_compare_carry_full_names(tmp_path: Path) -> None:
    """The snapshot report and compare's JSON name bcc's program as bpftool does."""
    full = "tracepoint__raw_syscalls__sys_exit"
    with foreign(["syscount-bpfcc", "-i", "60"], 1) as ids:
        assert bpftool_progs()[ids[0]]["name"] == full
        reports = []
        for i in range(2):
            out = tmp_path / f"r{i}.json"
            cmd = [sys.executable, "-m", "linnix_exporter", "snapshot", "--duration", "1s"]
            subprocess.run([*cmd, "--output", str(out)], check=True, timeout=60)
            reports.append(out)
    names = {p["name"] for p in json.loads(reports[0].read_text())["program_stats"].values()}
    assert full in names and "raw_syscalls__s" not in names
    cmp = subprocess.run(
        [
            sys.executable,
            "-m",
            "linnix_exporter",
            "compare",
            *map(str, reports),
            "--format",
            "json",
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert f'"{full}"' in cmp.stdout and '"raw_syscalls__s"' not in cmp.stdout


def test_our_iterator_is_named_for_what_it_is() -> None:
    with iter_loader.load_iterators(owners=False)[0] as it:
        assert bpftool_progs()[it.prog_id]["name"] == PROG_NAME == "linnix_progstat"
        rows = {p.id: p for p in programs().rows()}
        assert rows[it.prog_id].name == "linnix_progstat"


def test_node_totals_match_bpftool_map_show() -> None:
    """Every map on the node once: our map memory and count against bpftool's list.
    Other sessions create and remove maps at any time: repeated until two reads agree,
    never loosened."""
    from tests.support import bpf_maps

    objects = ObjectsReader()
    fd = bpf_maps.create(2, 4, 64, 16)  # one map at least, however quiet the node
    try:
        for _ in range(10):
            ours = objects.map_memory()
            oracle = {i: m["bytes_memlock"] for i, m in bpftool_maps().items()}
            if ours == oracle:
                break
            time.sleep(0.3)
    finally:
        os.close(fd)
    assert ours == oracle
    assert len(ours) > 0


def test_node_sums_follow_an_unload_without_an_owner_scan() -> None:
    """An unload triggers no owner scan (only new programs do), yet the node's sums over
    programs must drop by what the unloaded programs held (bpftool's bytes_jited).
    Other sessions load and unload programs too: an attempt in which anything but ours
    changed between the two reads is repeated whole, never loosened."""
    for _ in range(10):
        fds = trivial_prog.load_many(6, prefix="lnx_unload")
        try:
            reader = programs(owner_refresh=3600)
            rows = {p.id: p for p in reader.rows()}
            mine = sorted(i for i, p in rows.items() if p.name.startswith("lnx_unload"))
            jited = {i: bpftool_progs()[i]["bytes_jited"] for i in mine[:3]}
            before = reader.memory
            trivial_prog.close_all(fds[:3])  # loaded in fd order: the three lowest ids
            fds = fds[3:]
            after_rows = {p.id: p for p in reader.rows()}
            after = reader.memory
        finally:
            trivial_prog.close_all(fds)
        if set(after_rows) == set(rows) - set(jited):
            break
        time.sleep(0.3)
    assert set(after_rows) == set(rows) - set(jited) and len(jited) == 3
    assert before is not None and after is not None and after is not before
    assert before.jited_bytes - after.jited_bytes == sum(jited.values())
    assert after.memlock_by_map is before.memlock_by_map  # no map read in between


def test_jit_limit_is_the_sysctl() -> None:
    out = subprocess.run(
        ["sysctl", "-n", "net.core.bpf_jit_limit"], check=True, capture_output=True, text=True
    ).stdout
    assert jit_limit() == int(out)


# (kind, key size, value size, entries, flags): every kind memlock_is_fixed trusts that
# user space can fill. The fd arrays (prog, perf event, cgroup, array of maps) share the
# array's map_mem_usage in the kernel; ring buffers, stack traces and hash of maps
# cannot be filled from here: for those the list rests on kernel/bpf's map_mem_usage.
FILLABLE_FIXED = (
    (1, 4, 8, 64, 0),  # hash, preallocated
    (5, 4, 8, 64, 0),  # per-CPU hash
    (9, 4, 8, 64, 0),  # LRU hash
    (10, 4, 8, 64, 0),  # LRU per-CPU hash
    (2, 4, 8, 64, 0),  # array
    (6, 4, 8, 64, 0),  # per-CPU array
    (22, 0, 8, 64, 0),  # queue
    (23, 0, 8, 64, 0),  # stack
    (30, 0, 8, 64, 0),  # bloom filter
)
NO_PREALLOC_HASH = (1, 4, 8, 64, 1)  # BPF_F_NO_PREALLOC: memlock follows the elements


def test_map_memory_reads_each_fixed_map_once_and_growing_ones_always(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A map whose memlock cannot change is read once in its life; one that grows with
    its elements at every read. Both stay right: each kind is filled between two reads
    and every figure is compared with bpftool's bytes_memlock after the fill (the fixed
    kinds' figures come from before it)."""
    from linnix_exporter.kernel import bpf_objects
    from tests.support import bpf_maps

    read: list[int] = []
    real = bpf_objects.map_fdinfo

    def counting(map_id: int) -> bytes | None:
        read.append(map_id)
        return real(map_id)

    monkeypatch.setattr(bpf_objects, "map_fdinfo", counting)
    specs = (*FILLABLE_FIXED, NO_PREALLOC_HASH)
    fds = [bpf_maps.create(*spec) for spec in specs]
    try:
        objects = ObjectsReader()
        ids = {m["id"]: m for m in bpftool_maps().values() if m.get("name") == "lnx_memtest"}
        mine = sorted(ids)  # created in order: ids ascend with the specs
        assert len(mine) == len(specs)
        first = objects.map_memory()
        for fd, (kind, key, value, _, _) in zip(fds, specs, strict=True):
            for i in range(40):
                bpf_maps.update(fd, kind, i.to_bytes(key, "little") if key else None, value)
        read.clear()
        second = objects.map_memory()
        oracle = {i: m["bytes_memlock"] for i, m in bpftool_maps().items() if i in ids}
    finally:
        bpf_maps.close_all(fds)
    growing = mine[-1]
    assert [m for m in mine if m in read] == [growing]
    assert {m: second[m] for m in mine} == oracle
    assert second[growing] > first[growing]  # 40 elements more
    assert all(second[m] == first[m] for m in mine[:-1])
