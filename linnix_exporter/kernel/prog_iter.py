"""Every program's bpf_prog_info stats from one BPF iterator (iter/bpf_prog, 5.9+).

`ProgReader.all()` (kernel/bpf_syscall.py) costs GET_FD_BY_ID + OBJ_GET_INFO_BY_FD +
close per program. bpf/prog_stats_iter.c instead runs inside the kernel once per
program when an iterator fd is read, and appends one 64-byte record per program; a tick
is then BPF_ITER_CREATE + a few read()s of up to 32 KiB + close, whatever the number of
programs. `IterProgReader.all()` returns the same `RawProg` list as `ProgReader.all()`
(ids ascending, the same values BPF_OBJ_GET_INFO_BY_FD reports), so it can stand in for
it.

Two halves, as with the probes (kernel/_loader.py, kernel/probes.py):

- child side (imports bcc): `compile_and_link()` compiles bpf/prog_stats_iter.c with
  the running kernel's BTF offsets, loads it and creates its BPF_TRACE_ITER link.
  ``python -m linnix_exporter.kernel.iter_loader --sock-fd N`` does that and sends the
  link and program fds over the inherited SOCK_SEQPACKET socket (one message: JSON
  header + SCM_RIGHTS), then leaves with os._exit(0). Header on success::

      {"ok": true, "link": 0, "prog": 1, "defines": {...}, "compile_seconds": s}

  and on failure (no fds, exit status 1)::

      {"ok": false, "error": "one line"}

- daemon side (no bcc): `iter_loader.load_iterators()` runs that child and holds the fds;
  `IterProgReader(link_fd, prog_fd)` takes fds obtained another way (e.g. from
  kernel/_loader.py). Holding the link keeps the iterator program loaded; `close()`
  unloads it.

Any failure (kernel without iter/bpf_prog or without bpf_map_lookup_percpu_elem
(5.19), verifier refusal, missing BTF, sparse possible-CPU mask, a record that does not
match BPF_OBJ_GET_INFO_BY_FD) raises IterError: the caller should fall back to
ProgReader.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys
import tempfile
from types import TracebackType
from typing import Any, Self

from linnix_exporter import prog_table
from linnix_exporter.kernel import btf, handoff
from linnix_exporter.kernel.bpf_syscall import (
    _ATTR_SIZE,
    _SYS_BPF,
    BpfError,
    ProgReader,
    RawProg,
    _bpf,
    _pinned,
    _syscall,
    prog_load_attr,
)

BPF_MAP_CREATE = 0
BPF_LINK_CREATE = 28
BPF_ITER_CREATE = 33
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_TRACE_ITER = 28  # enum bpf_attach_type

FUNC_NAME = "bpf_iter__bpf_prog"  # BPF_ITER(bpf_prog) in prog_stats_iter.c
# The name the kernel (and bpftool, and our own metrics) shows for the iterator. bcc
# would name it after the iterator target ("bpf_prog", which says nothing), so the
# loader child loads bcc's compiled instructions itself (prog_load_iter).
PROG_NAME = "linnix_progstat"
ITER_TARGET_FUNC = "bpf_iter_bpf_prog"  # the kernel function an iter/bpf_prog attaches to
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_TRACING = 26

# struct rec in bpf/prog_stats_iter.c, fields in RawProg order (prog_table.py).
RECORD, RECORD_SIZE = prog_table.RECORD, prog_table.RECORD_SIZE  # 64 bytes
# RawProg from a tuple without _make's checks: ~20% cheaper per record.
_raw_prog = functools.partial(tuple.__new__, RawProg)

_MAX_FDS = 8


class IterError(RuntimeError):
    """The iterator cannot be loaded or read; fall back to ProgReader. One line."""


# ---- child side -----------------------------------------------------------------------


def contiguous_possible_cpus(text: str | None = None) -> int:
    """Number of possible CPUs, which must be 0..N-1 (the program loops over ids)."""
    if text is None:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    lo, _, hi = text.partition("-")
    if "," in text or lo != "0" or not (hi or lo).isdigit():
        raise IterError(f"possible CPUs {text!r} are not 0..N-1")
    return int(hi or lo) + 1


def btf_defines() -> dict[str, int]:
    """-D values for prog_stats_iter.c from the running kernel's BTF."""
    try:
        d = {
            "PROG_TYPE_OFF": btf.offset_of("bpf_prog", "type"),
            "PROG_TAG_OFF": btf.offset_of("bpf_prog", "tag"),
            "PROG_STATS_OFF": btf.offset_of("bpf_prog", "stats"),
            "PROG_AUX_OFF": btf.offset_of("bpf_prog", "aux"),
            "AUX_ID_OFF": btf.offset_of("bpf_prog_aux", "id"),
            "AUX_LOAD_TIME_OFF": btf.offset_of("bpf_prog_aux", "load_time"),
            "AUX_NAME_OFF": btf.offset_of("bpf_prog_aux", "name"),
            "STATS_CNT_OFF": btf.offset_of("bpf_prog_stats", "cnt"),
            "STATS_NSECS_OFF": btf.offset_of("bpf_prog_stats", "nsecs"),
            "STATS_MISSES_OFF": btf.offset_of("bpf_prog_stats", "misses"),
            "ARRAY_PPTRS_OFF": btf.offset_of("bpf_array", "pptrs"),
        }
    except btf.BtfError as e:
        raise IterError(f"kernel BTF: {e}") from e
    # The program reads the three counters as one u64[3] per CPU.
    stats = sorted((d["STATS_CNT_OFF"], d["STATS_NSECS_OFF"], d["STATS_MISSES_OFF"]))
    if stats != [0, 8, 16]:
        raise IterError(f"struct bpf_prog_stats counters at {stats}, expected 0/8/16")
    return d


def _create_percpu_array() -> int:
    """A 1-element BPF_MAP_TYPE_PERCPU_ARRAY of u64: the program's per-CPU yardstick."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("IIII", a, 0, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1)
    ctypes.memmove(ctypes.addressof(a) + 28, b"linnix_pcpu", 11)  # map_name
    return _bpf(BPF_MAP_CREATE, a)


def prog_load_iter(insns: bytes, name: str = PROG_NAME, target: str = ITER_TARGET_FUNC) -> int:
    """BPF_PROG_LOAD of an iterator program (on kernel function `target`, e.g.
    bpf_iter_bpf_prog) under `name`; returns its fd. The verifier's log is fetched
    (second attempt) only when the load fails."""
    try:
        target_id = btf.vmlinux().find_func(target)
    except btf.BtfError as e:
        raise IterError(f"kernel BTF: {e}") from e
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    for level in (0, 1):
        a = prog_load_attr(BPF_PROG_TYPE_TRACING, code, lic, name)
        if level:
            struct.pack_into("<IIQ", a, 24, level, len(log), ctypes.addressof(log))
        struct.pack_into("<I", a, 68, BPF_TRACE_ITER)  # expected_attach_type
        struct.pack_into("<I", a, 108, target_id)  # attach_btf_id
        try:
            return _bpf(BPF_PROG_LOAD, a)
        except BpfError as e:
            if level:
                text = log.value.decode("utf-8", "replace")
                raise IterError(f"BPF_PROG_LOAD: {e.strerror}: {_log_summary(text)}") from e
    raise AssertionError("unreachable")


def link_create(prog_fd: int) -> int:
    """BPF_LINK_CREATE(prog, BPF_TRACE_ITER): the link that iterator fds are made from."""
    a = ctypes.create_string_buffer(_ATTR_SIZE)
    # prog_fd, target_fd, attach_type, flags; no iter_info for the bpf_prog target.
    struct.pack_into("IIII", a, 0, prog_fd, 0, BPF_TRACE_ITER, 0)
    return _bpf(BPF_LINK_CREATE, a)


# bcc objects must outlive compile_iter: their cleanup would close the prog fd.
_keep: list[Any] = []


def compile_iter(
    src_name: str, func_name: str, defines: dict[str, int], prog_name: str, target: str
) -> tuple[int, int]:
    """Compile bpf/<src_name> with -D `defines` (imports bcc), load `func_name`'s
    instructions ourselves as the iterator program `prog_name` on the kernel function
    `target` (prog_load_iter) and create its BPF_TRACE_ITER link. Returns (link fd,
    prog fd). Raises IterError with a one-line reason."""
    src = handoff.bpf_source(src_name)
    if not src.is_file():
        raise IterError(f"BPF source not found at {src}")
    # -I: bcc compiles the source as /virtual/main.c; its includes (iter_common.h) sit
    # next to it.
    cflags = [f"-I{src.parent}", *(f"-D{k}={v}" for k, v in defines.items())]
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            from bcc import BPF  # only ever imported in a loader child

            b = BPF(src_file=str(src).encode(), cflags=cflags)
            prog_fd = prog_load_iter(b.dump_func(func_name.encode()), prog_name, target)
        except Exception as e:
            os.dup2(saved, 2)
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            sys.stderr.write(text)
            raise IterError(f"{e}: {_log_summary(text)}") from e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    _keep.append(b)
    try:
        link_fd = link_create(prog_fd)
    except BpfError as e:
        os.close(prog_fd)
        raise IterError(f"BPF_LINK_CREATE(BPF_TRACE_ITER): {e.strerror}") from e
    return link_fd, prog_fd


def compile_and_link() -> tuple[int, int, dict[str, int]]:
    """Compile, load and link the stats iterator (imports bcc). Returns (link fd, prog
    fd, the -D values used). Raises IterError with a one-line reason."""
    defines = btf_defines()
    defines["NCPUS"] = contiguous_possible_cpus()
    try:
        map_fd = _create_percpu_array()
    except BpfError as e:
        raise IterError(f"creating the per-CPU array: {e.strerror}") from e
    try:
        defines["PCPU_MAP_FD"] = map_fd
        link_fd, prog_fd = compile_iter(
            "prog_stats_iter.c", FUNC_NAME, defines, PROG_NAME, ITER_TARGET_FUNC
        )
    finally:
        os.close(map_fd)  # the program holds its own reference now
    del defines["PCPU_MAP_FD"]  # an fd number of this process: meaningless elsewhere
    return link_fd, prog_fd, defines


def _log_summary(log: str) -> str:
    """The error lines of a clang/verifier log, joined into one line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln] or lines[-3:]
    return "; ".join(errors[:3])


# ---- daemon side ----------------------------------------------------------------------


class IterLink:
    """An iterator link and its program that we hold (closing both unloads it), read
    whole with BPF_ITER_CREATE + read()s into a buffer kept between reads."""

    def __init__(self, link_fd: int, prog_fd: int, record_size: int, initial_buffer: int) -> None:
        self.link_fd = link_fd
        self.prog_fd = prog_fd
        self._record_size = record_size
        self._closed = False
        self._attr, self._attr_addr, self._attr_view = _pinned(_ATTR_SIZE)
        struct.pack_into("I", self._attr, 0, link_fd)
        self._buf = bytearray(max(initial_buffer, 1 << 12))
        self.prog_id: int = ProgReader().info(prog_fd).id

    def _read_all(self) -> memoryview:
        """Every record of one iteration, as a view of the buffer (valid until the next
        read)."""
        if self._closed:
            raise IterError("iterator reader is closed")
        fd = int(_syscall(_SYS_BPF, BPF_ITER_CREATE, self._attr_addr, _ATTR_SIZE))
        if fd < 0:
            err = ctypes.get_errno()
            raise IterError(f"BPF_ITER_CREATE: {os.strerror(err)}")
        try:
            n = 0
            buf = self._buf
            while True:
                if n == len(buf):  # more records than room: grow
                    buf.extend(bytes(len(buf)))
                with memoryview(buf) as view:
                    try:
                        got = os.readv(fd, [view[n:]])
                    except OSError as e:
                        # EAGAIN: the program returned 1 (e.g. per-CPU offsets unmeasurable).
                        raise IterError(f"reading the iterator: {e.strerror}") from e
                if got == 0:
                    break
                n += got
        finally:
            os.close(fd)
        if n % self._record_size:
            raise IterError(
                f"iterator returned {n} bytes, not whole {self._record_size}-byte records"
            )
        return memoryview(self._buf)[:n]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        handoff.close_fds([self.link_fd, self.prog_fd])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class IterProgReader(IterLink):
    """Reads every loaded program's info through the iterator link it holds.

    The constructor checks the iterator against BPF_OBJ_GET_INFO_BY_FD on its own
    program, so wrong offsets fail here (IterError, both fds closed) rather than as
    wrong figures later.
    """

    def __init__(self, link_fd: int, prog_fd: int, initial_buffer: int = 1 << 16) -> None:
        super().__init__(link_fd, prog_fd, RECORD_SIZE, max(initial_buffer, 1 << 15))
        self._verify(ProgReader().info(prog_fd))

    def _verify(self, own: RawProg) -> None:
        try:
            got = {r.id: r for r in self.all()}
        except IterError:
            self.close()
            raise
        mine = got.get(own.id)
        # Stats move while we compare (the iterator is running): compare the rest.
        if mine is None or mine[:5] != own[:5]:
            self.close()
            raise IterError(
                f"iterator record {mine!r} disagrees with BPF_OBJ_GET_INFO_BY_FD {own!r}: "
                "wrong BTF offsets?"
            )

    def all(self) -> list[RawProg]:
        """Every program loaded now, in id order (the same list as ProgReader.all())."""
        with self._read_all() as view:
            return list(map(_raw_prog, RECORD.iter_unpack(view)))

    def table(self) -> prog_table.RawTable:
        """The same as all(), records left as read (one copy of the buffer): what the
        daemon's tick takes, with no per-program object."""
        with self._read_all() as view:
            return prog_table.RawTable(view.tobytes())
