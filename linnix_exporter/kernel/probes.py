"""The Linnix probes, held by the daemon without bcc.

`Probes.load()` runs kernel/_loader.py in a child process, which compiles bpf/probes.c
with bcc, attaches it, and passes the program, map and attachment fds (perf events for
the tracepoints, a raw-tracepoint fd for sched_process_free) back over a unix socket
(SCM_RIGHTS). The daemon then owns the attachment (closing the attachment fds detaches
the programs; so does the daemon dying) and reads the maps with plain bpf() syscalls, so
LLVM's ~130 MB never enter its address space and bcc is never imported.
"""

from __future__ import annotations

import ctypes
import errno
import struct
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from linnix_exporter.kernel import bpf_syscall, handoff
from linnix_exporter.kernel.bpf_syscall import BpfError
from linnix_exporter.snapshot import LIFETIME_SLOTS, CommCounts, ProbeCounts

# Layouts shared with bpf/probes.c; load() checks the kernel's map sizes against them.
_TOTALS_FIELDS = 5  # forks, execs, exits, exited_cpu_ns, lifetime_sum_ns
_COMM_FIELDS = 4  # forks, execs, exits, exited_cpu_ns
_COMM_LEN = 16
_MAPS = {
    # name: (key_size, value_size, max_entries or None for "any")
    "totals": (4, 8 * _TOTALS_FIELDS, 1),
    "lifetime_hist": (4, 8, LIFETIME_SLOTS),
    "comm_counts": (_COMM_LEN, 8 * _COMM_FIELDS, None),
}
_MAX_FDS = 64


class ProbeError(RuntimeError):
    """The probes could not be loaded or read; the message is one line."""


class _PerCpuMapReader:
    """Reads a whole per-CPU map with BPF_MAP_LOOKUP_BATCH into buffers made once.

    One syscall per chunk of elements (a per-key loop would be two syscalls per comm per
    tick). Chunks bound the buffer: a per-CPU value is value_size * CPUs, which on a big
    host with many comm slots would otherwise be a buffer of hundreds of MB.
    """

    _CHUNK_BYTES = 1 << 20

    def __init__(self, fd: int, info: bpf_syscall.MapInfo, ncpus: int) -> None:
        self.fd = fd
        self.key_size = info.key_size
        self.max_entries = info.max_entries
        self.stride = (info.value_size + 7) // 8 * 8 * ncpus  # bytes per element
        token_size = max(self.key_size, 8)  # htab tokens are u32, array tokens are keys
        self._tok_in = ctypes.create_string_buffer(token_size)
        self._tok_out = ctypes.create_string_buffer(token_size)
        self._resize(max(1, min(self.max_entries, self._CHUNK_BYTES // self.stride)))

    def _resize(self, chunk: int) -> None:
        self.chunk = chunk
        self._keys = ctypes.create_string_buffer(self.key_size * chunk)
        self._values = ctypes.create_string_buffer(self.stride * chunk)

    def chunks(self) -> Iterator[tuple[bytes, memoryview, int]]:
        """(keys, values as u64s, element count) per chunk, until the map is read.

        The buffers are reused: consume each chunk before asking for the next.
        """
        tok_in, tok_out = ctypes.addressof(self._tok_in), ctypes.addressof(self._tok_out)
        first = True
        seen = 0
        while True:
            try:
                n, done = bpf_syscall.map_lookup_batch(
                    self.fd,
                    None if first else tok_in,
                    tok_out,
                    ctypes.addressof(self._keys),
                    ctypes.addressof(self._values),
                    self.chunk,
                )
            except BpfError as e:
                if e.errno == errno.ENOSPC and self.chunk < self.max_entries:
                    # A hash bucket holds more elements than a chunk: the kernel returns
                    # buckets whole, so grow and ask for the same position again.
                    self._resize(min(self.max_entries, self.chunk * 2))
                    continue
                raise
            if n:
                values = memoryview(self._values).cast("B")[: n * self.stride].cast("Q")
                yield self._keys.raw[: n * self.key_size], values, n
                values.release()
            seen += n
            # A map never holds more than max_entries: a full array is read without the
            # extra call that would only answer ENOENT.
            if done or seen >= self.max_entries:
                return
            ctypes.memmove(self._tok_in, self._tok_out, len(self._tok_out))
            first = False


class Probes:
    """The attached probes. Close them (or use as a context manager) to detach."""

    def __init__(
        self,
        header: dict[str, Any],
        fds: list[int],
        loader_pid: int,
        load_seconds: float,
    ) -> None:
        self.loader_pid = loader_pid
        self.load_seconds = load_seconds
        self.compile_seconds = float(header.get("compile_seconds", 0.0))
        self._closed = False
        try:
            self._prog_fds = {n: fds[i] for n, i in header["programs"].items()}
            self._map_fds = {n: fds[i] for n, i in header["maps"].items()}
            # Attachment fds: perf events (tracepoints) and raw-tracepoint fds.
            self._attach_fds = {tp: fds[i] for tp, i in header["tracepoints"].items()}
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise ProbeError(f"probe loader sent a malformed header: {e!r}") from e
        # fds the header does not name are still ours to close (load() closes them all
        # if construction fails).
        named = {*self._prog_fds.values(), *self._map_fds.values(), *self._attach_fds.values()}
        self._stray_fds = [fd for fd in fds if fd not in named]

        self._ncpus = bpf_syscall.possible_cpus()
        self._readers: dict[str, _PerCpuMapReader] = {}
        for name, (ks, vs, mx) in _MAPS.items():
            if name not in self._map_fds:
                raise ProbeError(f"probe loader did not send map {name!r}")
            info = bpf_syscall.map_info(self._map_fds[name])
            if info.key_size != ks or info.value_size != vs or (mx and info.max_entries != mx):
                raise ProbeError(
                    f"map {name} has key/value/entries {info.key_size}/{info.value_size}/"
                    f"{info.max_entries}, expected {ks}/{vs}/{mx or 'any'}: "
                    "bpf/probes.c and kernel/probes.py disagree"
                )
            self._readers[name] = _PerCpuMapReader(self._map_fds[name], info, self._ncpus)
        reader = bpf_syscall.ProgReader()
        self.program_ids: frozenset[int] = frozenset(
            reader.info(fd).id for fd in self._prog_fds.values()
        )
        self.program_names: dict[str, int] = {
            n: reader.info(fd).id for n, fd in self._prog_fds.items()
        }

    # ---- loading ----------------------------------------------------------------------

    @classmethod
    def load(cls, comm_slots: int = 1024, timeout: float = 60.0) -> Probes:
        """Compile and attach the probes in a child process and take over their fds."""
        started = time.monotonic()
        try:
            header, fds, pid = handoff.run_child(
                "linnix_exporter.kernel._loader",
                ["--comm-slots", str(comm_slots)],
                "probe loader",
                timeout,
                _MAX_FDS,
            )
        except handoff.HandoffError as e:
            raise ProbeError(str(e)) from None
        try:
            return cls(header, fds, pid, time.monotonic() - started)
        except BaseException:
            handoff.close_fds(fds)
            raise

    # ---- reading ----------------------------------------------------------------------

    def read(self) -> ProbeCounts:
        """Everything the probes counted since they loaded, summed over CPUs."""
        if self._closed:
            raise ProbeError("probes are closed")
        try:
            return self._read()
        except BpfError as e:
            raise ProbeError(f"reading the probe maps: {e.strerror}") from e

    def _read(self) -> ProbeCounts:
        nc = self._ncpus
        # Per-CPU value layout: element i, CPU c starts at u64 index (i * nc + c) * width.
        slots = [0] * LIFETIME_SLOTS
        for keys, vals, n in self._readers["lifetime_hist"].chunks():
            for i in range(n):
                (slot,) = struct.unpack_from("I", keys, 4 * i)
                if slot < LIFETIME_SLOTS:
                    slots[slot] = sum(vals[i * nc : (i + 1) * nc])

        by_comm: dict[str, CommCounts] = {}
        w = _COMM_FIELDS
        for keys, vals, n in self._readers["comm_counts"].chunks():
            cols = [vals[f::w].tolist() for f in range(w)]  # cols[f][i * nc + c]
            for i in range(n):
                lo, hi = i * nc, (i + 1) * nc
                cc = CommCounts(
                    sum(cols[0][lo:hi]),
                    sum(cols[1][lo:hi]),
                    sum(cols[2][lo:hi]),
                    sum(cols[3][lo:hi]),
                )
                raw = keys[i * _COMM_LEN : (i + 1) * _COMM_LEN]
                comm = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
                prev = by_comm.get(comm)  # two raw comms can decode alike
                by_comm[comm] = cc if prev is None else prev + cc

        # Totals last: every program adds to its totals before its comm entry, so read
        # in this order the totals always cover the per-comm sums.
        t = [0] * _TOTALS_FIELDS
        for _, vals, _ in self._readers["totals"].chunks():
            t = [sum(vals[f::_TOTALS_FIELDS]) for f in range(_TOTALS_FIELDS)]

        return ProbeCounts(
            forks=t[0],
            execs=t[1],
            exits=t[2],
            exited_cpu_ns=t[3],
            by_comm=by_comm,
            lifetime_slots=tuple(slots),
            lifetime_sum_ns=t[4],
        )

    # ---- lifetime ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Detach (attachment fds first), then release programs and maps. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._readers.clear()
        handoff.close_fds(list(self._attach_fds.values()))
        handoff.close_fds(list(self._prog_fds.values()))
        handoff.close_fds(list(self._map_fds.values()))
        handoff.close_fds(self._stray_fds)

    def __enter__(self) -> Probes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
