"""The Linnix probes, held by the daemon without bcc.

`Probes.load()` runs kernel/_loader.py in a child process, which compiles bpf/probes.c
with bcc, attaches it, and passes the program, map and attachment fds (perf events for
the tracepoints, a raw-tracepoint fd for sched_process_free) back over a unix socket
(SCM_RIGHTS). The daemon then owns the attachment (closing the attachment fds detaches
the programs; so does the daemon dying) and reads the counters through mmap (the LRU
fallback map, when used, with one batched bpf() call), so LLVM's ~130 MB never enter
its address space and bcc is never imported.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import operator
import struct
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from linnix_exporter.kernel import bpf_syscall, handoff
from linnix_exporter.kernel._loader import RAW_PREFIX  # a PROGRAMS value naming a raw tracepoint
from linnix_exporter.kernel.bpf_syscall import BpfError
from linnix_exporter.snapshot import LIFETIME_SLOTS, CommCounts, ProbeCounts

# Layouts shared with bpf/probes.c; the constructor checks the kernel's maps against them.
_COMM_FIELDS = 4  # forks, execs, exits, exited_cpu_ns
_COMM_LEN = 16
_LINE_WORDS = 8  # a line of `counters` is 64 bytes
_LINE_TOTALS, _LINE_HIST, _LINE_CACHE = 0, 1, 9
_F_FORKS, _F_EXECS, _F_EXITS, _F_CPU, _F_LIFE, _F_CLAIMS, _F_LRU_STARTED, _F_LRU_DONE = range(8)
_W_SEEN = 7  # a cache line's seen bit and generation (generation = word >> 1)
_READ_TRIES = 4  # reads of the counters while cache lines are being taken over
_CLAIMED = 1 << 56  # bit set in a claimed cache line's second key word
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
        self.ncpus = ncpus
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


class _Counters:
    """The `counters` array of bpf/probes.c, read through mmap: no bpf() call.

    One region of lines per CPU id: fallback totals (with the count of cache lines
    claimed on that CPU), the lifetime histogram, then the comm cache lines (see
    bpf/probes.c). A read touches the totals and histogram lines and the claimed cache
    lines only: it scans a CPU's cache for new claims when that CPU's claim count moved.
    This runs every tick, after ~10 s asleep, when every line read is a cache miss and
    every Python object built is work; a claimed line's key never changes, so its name
    is decoded once and its counters are turned into CommCounts only when they change.
    """

    def __init__(self, fd: int, info: bpf_syscall.MapInfo, cpu_ids: int, cache_slots: int):
        self.lines = _LINE_CACHE + cache_slots
        self.cpu_ids = cpu_ids
        if info.value_size != 8 * _LINE_WORDS or info.max_entries != cpu_ids * self.lines:
            raise ProbeError(
                f"map counters has value size/entries {info.value_size}/{info.max_entries}, "
                f"expected {8 * _LINE_WORDS}/{cpu_ids * self.lines}: "
                "bpf/probes.c and kernel/probes.py disagree"
            )
        try:
            self._mm = mmap.mmap(
                fd, info.max_entries * info.value_size, mmap.MAP_SHARED, mmap.PROT_READ
            )
        except OSError as e:
            raise ProbeError(f"cannot mmap the probes' counters: {e.strerror}") from e
        self._words = memoryview(self._mm).cast("Q")
        self._claims = [0] * cpu_ids  # claim count last seen per CPU
        self._names: dict[int, str] = {}  # claimed line (word offset) -> comm
        # claimed line -> (key0, key1 | CLAIMED, generation) it was read under: a line
        # taken over by another comm (bpf/probes.c) shows another key or generation.
        self._keys: dict[int, tuple[int, int, int]] = {}
        self._seen: dict[int, list[int]] = {}  # claimed line -> counters last read
        self._acc: dict[str, list[int]] = {}  # comm -> its cache lines' counters, summed
        self._cc: dict[str, CommCounts] = {}  # the same as CommCounts
        self._cache_totals = [0] * 5  # every cache line's counters, summed

    def lru_marks(self) -> tuple[int, int]:
        """(finished, started) LRU hash updates, summed over CPUs; every CPU's finished
        count is read before its started count. Equal sums then mean that every update
        started before this call had finished before it: none is in flight."""
        w, step = self._words, self.lines * _LINE_WORDS
        regions = range(0, len(w), step)
        done = sum(w[r + _F_LRU_DONE] for r in regions)
        return done, sum(w[r + _F_LRU_STARTED] for r in regions)

    def read(self, by_comm: dict[str, CommCounts]) -> tuple[list[int], list[int]]:
        """Adds the cache lines to `by_comm`; returns node totals (forks, execs, exits,
        exited_cpu_ns, lifetime_sum_ns) and the lifetime histogram, over every CPU.
        Totals are read per CPU before its cache lines: the probe adds to one or the
        other, never both, so the sum is exact; a line claimed after its CPU's claim
        count was read is counted from this read or the next, in both figures at once."""
        w = self._words
        step = self.lines * _LINE_WORDS
        hist_at, cache_at = _LINE_HIST * _LINE_WORDS, _LINE_CACHE * _LINE_WORDS
        totals = [0] * 5
        hist = [0] * LIFETIME_SLOTS
        for cpu, r in enumerate(range(0, len(w), step)):
            t = w[r : r + _F_CLAIMS + 1].tolist()
            totals = list(map(operator.add, totals, t[:5]))
            hist = list(map(operator.add, hist, w[r + hist_at : r + hist_at + 64].tolist()))
            if t[_F_CLAIMS] != self._claims[cpu]:
                self._claims[cpu] = t[_F_CLAIMS]
                self._find_claims(r + cache_at, r + step)
        seen, acc, cc, names, keys = self._seen, self._acc, self._cc, self._names, self._keys
        for o in names:
            line = w[o : o + 8].tolist()
            if keys[o] != (line[0], line[1], line[_W_SEEN] >> 1):
                # Taken over since its CPU's claims were read: counted once that shows
                # (Probes.read_maps reads again when a claim count moved meanwhile).
                continue
            v = line[2:7]  # forks, execs, exits, exited_cpu_ns, life
            old = seen.get(o)
            if v == old:
                continue
            seen[o] = v
            d = v if old is None else list(map(operator.sub, v, old))
            name = names[o]
            a = acc.get(name)  # two raw comms (or CPUs) can give the same name
            c = acc[name] = d if a is None else list(map(operator.add, a, d))
            cc[name] = CommCounts(c[0], c[1], c[2], c[3])
            self._cache_totals = list(map(operator.add, self._cache_totals, d))
        totals = list(map(operator.add, totals, self._cache_totals))
        for name, counts in cc.items():
            prev = by_comm.get(name)  # also in the LRU hash
            by_comm[name] = counts if prev is None else prev + counts
        return totals, hist

    def claims(self) -> list[int]:
        """Every CPU's claim count (claims and takeovers of cache lines)."""
        w, step = self._words, self.lines * _LINE_WORDS
        return [w[r + _F_CLAIMS] for r in range(0, len(w), step)]

    def _find_claims(self, first: int, end: int) -> None:
        """Record the lines of one CPU's cache claimed since the last scan, and those
        taken over by another comm. The probe stores key0, key1, then bumps the claim
        count, so once the count is seen (read before this), the key read here is
        complete. A line taken over had its holder's counts moved to the fallback and
        the hash, and restarts from zero under the new key: what was last read of it is
        taken back from the old comm and the cache totals (the hash and the fallback
        totals hold all of it now)."""
        w = self._words
        for o in itertools.compress(
            range(first, end, _LINE_WORDS), w[first + 1 : end : 8].tolist()
        ):
            k1 = w[o + 1]
            key = (w[o], k1, w[o + _W_SEEN] >> 1)
            if self._keys.get(o) == key:
                continue
            if k1 == 0:
                continue  # being taken over right now: its claim count moves after
            if o in self._names:
                self._retire(o)
            raw = struct.pack("<QQ", key[0], k1 ^ _CLAIMED)
            self._names[o] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._keys[o] = key

    def _retire(self, o: int) -> None:
        """The holder of line o lost it: take back what was read of the line."""
        name = self._names[o]
        s = self._seen.pop(o, None)
        if s is None:
            return
        a = self._acc[name] = list(map(operator.sub, self._acc[name], s))
        self._cc[name] = CommCounts(a[0], a[1], a[2], a[3])
        self._cache_totals = list(map(operator.sub, self._cache_totals, s))

    def close(self) -> None:
        self._words.release()
        self._mm.close()


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

        for name in ("counters", "comm_counts"):
            if name not in self._map_fds:
                raise ProbeError(f"probe loader did not send map {name!r}")
        info = bpf_syscall.map_info(self._map_fds["comm_counts"])
        if (info.key_size, info.value_size) != (_COMM_LEN, 8 * _COMM_FIELDS):
            raise ProbeError(
                f"map comm_counts has key/value size {info.key_size}/{info.value_size}, "
                f"expected {_COMM_LEN}/{8 * _COMM_FIELDS}: "
                "bpf/probes.c and kernel/probes.py disagree"
            )
        self._comm_reader = _PerCpuMapReader(
            self._map_fds["comm_counts"], info, bpf_syscall.possible_cpus()
        )
        try:
            self._counters = _Counters(
                self._map_fds["counters"],
                bpf_syscall.map_info(self._map_fds["counters"]),
                int(header["nr_cpu_ids"]),
                int(header["comm_cache_slots"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProbeError(f"probe loader sent a malformed header: {e!r}") from e
        self._lru_done = 0  # LRU updates finished before the hash was last read
        self._lru_counts: dict[str, CommCounts] = {}  # what it held then
        reader = bpf_syscall.ProgReader()
        self.program_ids: frozenset[int] = frozenset(
            reader.info(fd).id for fd in self._prog_fds.values()
        )
        self.program_names: dict[str, int] = {
            n: reader.info(fd).id for n, fd in self._prog_fds.items()
        }
        # What each attachment fd must show the kernel running: (prog_id, fd type, event).
        self._attach_query = bpf_syscall.AttachQuery()
        self._expected: dict[int, tuple[int, int, bytes]] = {}
        try:
            for name, tp in header["program_tracepoints"].items():
                raw = tp.startswith(RAW_PREFIX)
                fd_type = (
                    bpf_syscall.BPF_FD_TYPE_RAW_TRACEPOINT
                    if raw
                    else (bpf_syscall.BPF_FD_TYPE_TRACEPOINT)
                )
                event = tp.removeprefix(RAW_PREFIX).rpartition(":")[2].encode()
                self._expected[self._attach_fds[tp]] = (self.program_names[name], fd_type, event)
        except (KeyError, TypeError, AttributeError) as e:
            raise ProbeError(f"probe loader sent a malformed header: {e!r}") from e

    # ---- loading ----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        comm_slots: int = 1024,
        timeout: float = 60.0,
        comm_cache_slots: int | None = None,
    ) -> Probes:
        """Compile and attach the probes in a child process and take over their fds.
        `comm_cache_slots`: comm cache lines per CPU (bpf/probes.c), None for the
        loader's default; tests shrink it to send comms down the LRU fallback."""
        started = time.monotonic()
        args = ["--comm-slots", str(comm_slots)]
        if comm_cache_slots is not None:
            args += ["--comm-cache-slots", str(comm_cache_slots)]
        return handoff.load_in_child(
            "linnix_exporter.kernel._loader",
            args,
            "probe loader",
            timeout,
            _MAX_FDS,
            ProbeError,
            lambda header, fds, pid: cls(header, fds, pid, time.monotonic() - started),
        )

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
        return self.read_maps(self.attached_program_ids())

    def read_maps(self, attached: frozenset[int] = frozenset()) -> ProbeCounts:
        """The counts alone, without asking the kernel about the attachments (the
        bench times the two parts apart); `attached` is passed through."""
        # A line taken over during a read (bpf/probes.c moves its counts to the fallback
        # totals and the hash) would be read half before, half after: the claim counts
        # tell, and the read is made again (each try adds only what changed).
        for _ in range(_READ_TRIES):
            claims = self._counters.claims()
            counts = self._read_once(attached)
            if self._counters.claims() == claims:
                break
        return counts

    def _read_once(self, attached: frozenset[int]) -> ProbeCounts:
        # The LRU hash holds only comms that missed the cache: empty, and never read,
        # until one does.
        done, started = self._counters.lru_marks()
        if done != started or done != self._lru_done:
            # An update of the hash finished since we last read it, or one is under way.
            # Else the hash holds what it held then (it only changes by updates: LRU
            # eviction happens on insert) and reading it again would cost a bpf() call
            # for nothing (~0.2 ms cold). Read before the counters: an event adds to its
            # fallback totals before its hash entry, so the totals cover the comm sums.
            self._lru_counts = {}
            self._read_comm_hash(self._lru_counts)
            self._lru_done = done
        by_comm = dict(self._lru_counts)
        totals, hist = self._counters.read(by_comm)
        return ProbeCounts(
            attached_program_ids=attached,
            forks=totals[_F_FORKS],
            execs=totals[_F_EXECS],
            exits=totals[_F_EXITS],
            exited_cpu_ns=totals[_F_CPU],
            by_comm=by_comm,
            lifetime_slots=tuple(hist),
            lifetime_sum_ns=totals[_F_LIFE],
        )

    def attached_program_ids(self) -> frozenset[int]:
        """Our programs the kernel reports attached through the fds we hold (one
        BPF_TASK_FD_QUERY per fd, what `bpftool perf list` reads): a program whose fd
        was closed, or whose fd number now names another file, is missing. Holding a
        program's fd, or seeing it listed, says nothing about its attachment."""
        query = self._attach_query.query
        return frozenset(want[0] for fd, want in self._expected.items() if query(fd) == want)

    def _read_comm_hash(self, by_comm: dict[str, CommCounts]) -> None:
        nc = self._comm_reader.ncpus
        w = _COMM_FIELDS
        # Per-CPU value layout: element i, CPU c starts at u64 index (i * nc + c) * w.
        for keys, vals, n in self._comm_reader.chunks():
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

    # ---- lifetime ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Detach (attachment fds first), then release programs and maps. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._counters.close()
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
