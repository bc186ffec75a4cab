"""kernel/btf.py against bpftool's reading of the same BTF, and on a hand-built blob."""

from __future__ import annotations

import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from linnix_exporter.kernel import btf

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_TYPE_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'")
_MEMBER_RE = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")


@dataclass(frozen=True)
class DumpedStruct:
    type_id: int
    members: dict[str, tuple[int, int]]  # name -> (type_id, bits_offset)


@pytest.fixture(scope="module")
def dumped() -> dict[str, list[DumpedStruct]]:
    """Every STRUCT in `bpftool btf dump file vmlinux` (raw format), by name."""
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(VMLINUX)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    structs: dict[str, list[DumpedStruct]] = {}
    current: DumpedStruct | None = None
    for line in out.splitlines():
        m = _TYPE_RE.match(line)
        if m:
            current = None
            if m.group(2) == "STRUCT" and m.group(3):
                current = DumpedStruct(int(m.group(1)), {})
                structs.setdefault(m.group(3), []).append(current)
            continue
        mm = _MEMBER_RE.match(line)
        # bpftool prints anonymous members as '(anon)': they have no name to look up.
        if mm and current is not None and mm.group(1) not in ("", "(anon)"):
            current.members[mm.group(1)] = (int(mm.group(2)), int(mm.group(3)))
    return structs


def _only(structs: dict[str, list[DumpedStruct]], name: str) -> DumpedStruct:
    found = [s for s in structs.get(name, []) if s.members]
    assert len(found) == 1, f"expected one struct {name} in bpftool's dump, got {len(found)}"
    return found[0]


@pytest.mark.kernel
def test_probe_offsets_match_bpftool(dumped: dict[str, list[DumpedStruct]]) -> None:
    task = _only(dumped, "task_struct")
    se = _only(dumped, "sched_entity")
    se_type, se_bits = task.members["se"]
    assert se_type == se.type_id, "task_struct.se is not struct sched_entity in bpftool's dump"
    start_bits = task.members["start_time"][1]
    runtime_bits = se.members["sum_exec_runtime"][1]

    assert btf.member_offset("task_struct", "start_time") * 8 == start_bits
    assert btf.member_offset("task_struct", "se") * 8 == se_bits
    assert btf.member_offset("sched_entity", "sum_exec_runtime") * 8 == runtime_bits
    assert btf.offset_of("task_struct", "se.sum_exec_runtime") * 8 == se_bits + runtime_bits


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["task_struct", "sched_entity"])
def test_every_member_matches_bpftool(dumped: dict[str, list[DumpedStruct]], name: str) -> None:
    """All named members, bitfields included (task_struct has kind_flag bitfields)."""
    want = _only(dumped, name).members
    parsed = btf.vmlinux()
    for member, (_, bits) in want.items():
        assert parsed.bit_offset_of(name, member) == bits, member


@pytest.mark.kernel
def test_missing_member_and_struct() -> None:
    with pytest.raises(btf.BtfError, match="no member 'no_such_member'"):
        btf.member_offset("task_struct", "no_such_member")
    with pytest.raises(btf.BtfError, match="no member 'nope'"):
        btf.offset_of("task_struct", "se.nope")
    with pytest.raises(btf.BtfError, match="not in the kernel's BTF"):
        btf.offset_of("no_such_struct_xyz", "x")
    with pytest.raises(btf.BtfError, match="not a struct"):
        btf.offset_of("task_struct", "start_time.x")


# ---- a hand-built blob: typedef/const chains, kind_flag bitfields, anonymous unions --


def _blob() -> bytes:
    strings = b"\0int\0inner\0a\0inner_t\0outer\0x\0y\0z\0fp\0"

    def s(name: str) -> int:
        return strings.index(b"\0" + name.encode() + b"\0") + 1

    def t(name_off: int, kind: int, vlen: int, size_or_type: int, kflag: int = 0) -> bytes:
        return struct.pack("<III", name_off, kflag << 31 | kind << 24 | vlen, size_or_type)

    def m(name_off: int, type_id: int, offset: int) -> bytes:
        return struct.pack("<III", name_off, type_id, offset)

    types = b"".join(
        [
            t(s("int"), btf.KIND_INT, 0, 4) + struct.pack("<I", 1 << 24 | 32),  # 1
            t(s("inner"), btf.KIND_STRUCT, 1, 8) + m(s("a"), 1, 32),  # 2
            t(s("inner_t"), btf.KIND_TYPEDEF, 0, 2),  # 3
            t(0, btf.KIND_CONST, 0, 3),  # 4: const inner_t
            t(0, btf.KIND_FUNC_PROTO, 2, 1) + m(0, 1, 0)[:8] + m(0, 1, 0)[:8],  # 5
            t(0, btf.KIND_UNION, 1, 4) + m(s("z"), 1, 0),  # 6: anonymous union
            t(0, btf.KIND_ENUM64, 1, 8) + struct.pack("<III", s("x"), 1, 0),  # 7
            t(s("outer"), btf.KIND_STRUCT, 4, 32, kflag=1)
            + m(s("x"), 1, 3 << 24 | 5)  # x: bitfield of 3 bits at bit 5
            + m(s("y"), 4, 64)  # y: const inner_t at byte 8
            + m(0, 6, 128)  # anonymous union at byte 16
            + m(s("fp"), 1, 192),  # 8
        ]
    )
    header = struct.pack(
        "<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings)
    )
    return header + types + strings


def test_hand_built_blob() -> None:
    b = btf.Btf(_blob())
    assert b.type_count == 8
    assert b.offset_of("outer", "y") == 8
    assert b.offset_of("outer", "y.a") == 12  # through const -> typedef -> struct
    assert b.offset_of("outer", "z") == 16  # inside the anonymous union
    assert b.offset_of("outer", "fp") == 24  # the walk stayed aligned past FUNC_PROTO/ENUM64
    assert b.bit_offset_of("outer", "x") == 5
    (x,) = [mb for mb in b.members(b.find_structs("outer")[0]) if mb.name == "x"]
    assert x.bitfield_size == 3
    with pytest.raises(btf.BtfError, match="bitfield"):
        b.offset_of("outer", "x")
    with pytest.raises(btf.BtfError, match="no member 'q'"):
        b.offset_of("outer", "y.q")


def test_rejects_non_btf() -> None:
    with pytest.raises(btf.BtfError, match="magic"):
        btf.Btf(b"\0" * 64)


@pytest.mark.kernel
def test_functions_by_name_and_id_match_bpftool() -> None:
    """find_func/func_name (the iterator's attach target, programs' full names) against
    bpftool's dump of the same BTF."""
    tid = btf.vmlinux().find_func("bpf_iter_bpf_prog")
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", str(btf.VMLINUX)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert re.search(rf"^\[{tid}\] FUNC 'bpf_iter_bpf_prog' ", out, re.M)
    assert btf.vmlinux().func_name(tid) == "bpf_iter_bpf_prog"
    struct_id = btf.vmlinux().find_structs("bpf_prog")[0]
    assert btf.vmlinux().func_name(struct_id) is None  # a struct, not a function
    assert btf.vmlinux().func_name(10**9) is None
    with pytest.raises(btf.BtfError):
        btf.vmlinux().find_func("no_such_function_in_any_kernel")
