"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The probes read task_struct fields with bpf_probe_read_kernel, and the kernel headers bcc
compiles against may belong to another kernel (on these hosts: Debian's 6.1 headers on
a 6.18 kernel), so their struct layouts cannot be trusted. The kernel's own BTF can:
this module parses the raw format (include/uapi/linux/btf.h) with no dependency, and
answers questions such as ``offset_of("task_struct", "se.sum_exec_runtime")``.

Only what offset lookups need is decoded; every kind's trailing data is still skipped
by its exact size so the walk over the type section stays aligned.
"""

from __future__ import annotations

import functools
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F

# enum btf_kind, include/uapi/linux/btf.h (values are ABI).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes following the 12-byte struct btf_type: (fixed, per vlen entry).
_TRAILER: dict[int, tuple[int, int]] = {
    KIND_INT: (4, 0),  # u32 encoding/offset/bits
    KIND_PTR: (0, 0),
    KIND_ARRAY: (12, 0),  # struct btf_array
    KIND_STRUCT: (0, 12),  # struct btf_member
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),  # struct btf_enum
    KIND_FWD: (0, 0),
    KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0),
    KIND_CONST: (0, 0),
    KIND_RESTRICT: (0, 0),
    KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8),  # struct btf_param
    KIND_VAR: (4, 0),  # struct btf_var
    KIND_DATASEC: (0, 12),  # struct btf_var_secinfo
    KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0),  # struct btf_decl_tag
    KIND_TYPE_TAG: (0, 0),
    KIND_ENUM64: (0, 12),  # struct btf_enum64
}

# Qualifiers and aliases that stand between a member and the struct it names.
_TRANSPARENT = frozenset({KIND_TYPEDEF, KIND_CONST, KIND_VOLATILE, KIND_RESTRICT, KIND_TYPE_TAG})
_COMPOSITE = frozenset({KIND_STRUCT, KIND_UNION})

_HEADER_SIZE = 24  # magic, version, flags, hdr_len, type_off/len, str_off/len


class BtfError(RuntimeError):
    """The BTF is unreadable, or lacks the struct or member asked for."""


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a struct or union, as BTF describes it."""

    name: str  # "" for an anonymous struct/union member
    type_id: int
    bit_offset: int  # from the start of the enclosing struct
    bitfield_size: int  # 0 unless the member is a bitfield


class Btf:
    """An index over one raw BTF blob.

    Construction walks the type section once, recording where each type starts (an
    array of offsets, ~4 bytes per type); struct members are decoded only when a
    lookup asks for them.
    """

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER_SIZE:
            raise BtfError("BTF blob is shorter than its header")
        (magic,) = struct.unpack_from("<H", data, 0)
        if magic == BTF_MAGIC:
            self._end = "<"
        elif magic == struct.unpack("<H", struct.pack(">H", BTF_MAGIC))[0]:
            self._end = ">"
        else:
            raise BtfError(f"not BTF: magic {magic:#06x}")
        _, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            self._end + "HBBIIIII", data, 0
        )
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(data) or self._str_end > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._type_fmt = struct.Struct(self._end + "III")
        self._member_fmt = struct.Struct(self._end + "III")
        # _pos[type_id] = byte offset of that btf_type; id 0 is void and has no entry.
        self._pos = array("I", [0])
        self._by_name: dict[str, list[int]] | None = None
        self._index()

    @classmethod
    def from_file(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as e:
            raise BtfError(f"cannot read {path}: {e.strerror}") from e

    # ---- the walk ---------------------------------------------------------------------

    def _index(self) -> None:
        data, unpack, pos, trailer = self._data, self._type_fmt.unpack_from, self._pos, _TRAILER
        off, end = self._types_start, self._types_end
        while off < end:
            info = unpack(data, off)[1]
            kind = (info >> 24) & 0x1F
            try:
                fixed, per = trailer[kind]
            except KeyError:
                raise BtfError(
                    f"unknown BTF kind {kind} at type {len(pos)}: cannot size it"
                ) from None
            pos.append(off)
            off += 12 + fixed + per * (info & 0xFFFF)
        if off != end:
            raise BtfError("BTF type section does not end on a type boundary")

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, name_off, size_or_type) of a type id."""
        if not 0 < type_id < len(self._pos):
            raise BtfError(f"type id {type_id} out of range")
        name_off, info, size_or_type = self._type_fmt.unpack_from(self._data, self._pos[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, name_off, size_or_type

    def _name(self, name_off: int) -> str:
        start = self._str_start + name_off
        stop = self._data.index(b"\0", start, self._str_end)
        return self._data[start:stop].decode("utf-8", "replace")

    @property
    def type_count(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._pos) - 1

    # ---- lookups ----------------------------------------------------------------------

    def find_structs(self, name: str) -> list[int]:
        """Ids of every struct or union called `name` (usually one)."""
        if self._by_name is None:
            self._by_name = {}
            unpack, data = self._type_fmt.unpack_from, self._data
            for tid in range(1, len(self._pos)):
                name_off, info, _ = unpack(data, self._pos[tid])
                if name_off and (info >> 24) & 0x1F in _COMPOSITE:
                    self._by_name.setdefault(self._name(name_off), []).append(tid)
        return self._by_name.get(name, [])

    def func_name(self, type_id: int) -> str | None:
        """The name of a BTF_KIND_FUNC type (a program's function, as bpftool shows it),
        None if `type_id` is of another kind or out of range."""
        if not 0 < type_id < len(self._pos):
            return None
        kind, _, _, name_off, _ = self._type(type_id)
        return self._name(name_off) if kind == KIND_FUNC else None

    def find_func(self, name: str) -> int:
        """The type id of the function `name` (e.g. an iterator target's bpf_iter_*)."""
        unpack, data = self._type_fmt.unpack_from, self._data
        for tid in range(1, len(self._pos)):
            name_off, info, _ = unpack(data, self._pos[tid])
            if name_off and (info >> 24) & 0x1F == KIND_FUNC and self._name(name_off) == name:
                return tid
        raise BtfError(f"function {name} is not in the kernel's BTF")

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        for _ in range(64):  # BTF chains are short; a loop would be corrupt data
            if type_id == 0:
                return 0
            kind, _, _, _, target = self._type(type_id)
            if kind not in _TRANSPARENT:
                return type_id
            type_id = target
        raise BtfError(f"typedef/qualifier chain too long at type {type_id}")

    def members(self, type_id: int) -> list[Member]:
        """The members of a struct or union (after resolving typedefs/qualifiers)."""
        type_id = self.resolve(type_id)
        kind, vlen, kflag, _, _ = self._type(type_id) if type_id else (0, 0, 0, 0, 0)
        if kind not in _COMPOSITE:
            raise BtfError(f"type {type_id} is not a struct or union")
        out = []
        moff = self._pos[type_id] + 12
        for i in range(vlen):
            name_off, mtype, offset = self._member_fmt.unpack_from(self._data, moff + 12 * i)
            if kflag:  # offset packs bitfield_size << 24 | bit_offset
                bits, offset = offset >> 24, offset & 0xFFFFFF
            else:
                bits = 0
            out.append(Member(self._name(name_off) if name_off else "", mtype, offset, bits))
        return out

    def _find_member(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """(bit offset, member) of `name` in a struct, looking into anonymous members."""
        for m in self.members(type_id):
            if m.name == name:
                return m.bit_offset, m
            if not m.name:
                inner = self.resolve(m.type_id)
                if inner and self._type(inner)[0] in _COMPOSITE:
                    found = self._find_member(inner, name)
                    if found is not None:
                        return m.bit_offset + found[0], found[1]
        return None

    def _struct_id(self, struct_name: str) -> int:
        ids = self.find_structs(struct_name)
        if not ids:
            raise BtfError(f"struct {struct_name} is not in the kernel's BTF")
        # A forward-declared or duplicate empty definition can share the name: prefer the
        # one with members.
        return max(ids, key=lambda t: self._type(t)[1])

    def bit_offset_of(self, struct_name: str, path: str) -> int:
        """Bit offset of a dotted member path, e.g. ("task_struct", "se.sum_exec_runtime")."""
        type_id = self._struct_id(struct_name)
        where = struct_name
        total = 0
        parts = path.split(".")
        for i, part in enumerate(parts):
            inner = self.resolve(type_id)
            if not inner or self._type(inner)[0] not in _COMPOSITE:
                raise BtfError(f"{where} is not a struct or union: cannot look up {part!r}")
            found = self._find_member(inner, part)
            if found is None:
                raise BtfError(f"{where} has no member {part!r} (looking up {struct_name}.{path})")
            bits, member = found
            if member.bitfield_size and i < len(parts) - 1:
                raise BtfError(f"{where}.{part} is a bitfield, not a struct")
            total += bits
            type_id = member.type_id
            where = f"{where}.{part}"
        return total

    def offset_of(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path from the start of the struct."""
        bits = self.bit_offset_of(struct_name, path)
        if bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield (bit offset {bits})")
        return bits // 8

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of one direct (or anonymous-nested) member."""
        if "." in member:
            raise BtfError(f"member_offset takes one member name, not a path: {member!r}")
        return self.offset_of(struct_name, member)


@functools.lru_cache(maxsize=1)
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    return Btf.from_file(VMLINUX)


def member_offset(struct_name: str, member: str) -> int:
    """Byte offset of `member` in the running kernel's `struct struct_name`."""
    return vmlinux().member_offset(struct_name, member)


def offset_of(struct_name: str, path: str) -> int:
    """Byte offset of a dotted path such as "se.sum_exec_runtime" in the running kernel."""
    return vmlinux().offset_of(struct_name, path)
