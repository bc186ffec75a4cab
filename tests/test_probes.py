"""The Linnix probes on the real kernel: counts against workloads we control.

Node-wide counters see every other process on the host too, so exact assertions use a
comm no one else has; node-wide ones are bounded by an independent source.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from linnix_exporter import wiring
from linnix_exporter.cli import build_parser
from linnix_exporter.config import TIMER, run_config
from linnix_exporter.kernel import bpf_syscall
from linnix_exporter.kernel._loader import PROGRAMS
from linnix_exporter.kernel.probes import ProbeError, Probes, _PerCpuMapReader
from linnix_exporter.kernel.stats_switch import StatsSwitch
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.snapshot import LIFETIME_SLOTS, CommCounts, ProbeCounts
from linnix_exporter.web import Server, serve

pytestmark = pytest.mark.kernel

PY = sys.executable
PROG_NAMES = ("linnix_fork", "linnix_exec", "linnix_exit", "linnix_free")

# Sets its comm, forks N children that exit at once, then renames itself before it exits
# so that the only exits under the comm are the N children's.
FORKER = """
import ctypes, os, sys
prctl = ctypes.CDLL(None).prctl
n, name = int(sys.argv[1]), sys.argv[2].encode()
prctl(15, name, 0, 0, 0)  # PR_SET_NAME
pids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
prctl(15, b"lnx-forker-done", 0, 0, 0)
"""

# Burns CPU under its own comm until its thread CPU clock says `seconds`, then exits.
BURNER = """
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
end = time.thread_time() + float(sys.argv[2])
while time.thread_time() < end:
    pass
os._exit(0)
"""


def unique_comm(prefix: str) -> str:
    name = f"{prefix}{secrets.token_hex(4)}"
    assert len(name) <= 15  # TASK_COMM_LEN - 1: longer names are truncated
    return name


def comm(counts: ProbeCounts, name: str) -> CommCounts:
    return comm_counts(counts.by_comm, name)


def comm_counts(by_comm: Mapping[str, CommCounts], name: str) -> CommCounts:
    return by_comm.get(name, CommCounts())


def delta(after: CommCounts, before: CommCounts) -> CommCounts:
    return CommCounts(
        after.forks - before.forks,
        after.execs - before.execs,
        after.exits - before.exits,
        after.exited_cpu_ns - before.exited_cpu_ns,
    )


def proc_stat_processes() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    raise AssertionError("no 'processes' line in /proc/stat")


def bpftool_progs() -> dict[int, str]:
    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True
    ).stdout
    return {int(p["id"]): p.get("name", "") for p in json.loads(out)}


def wait_gone(ids: set[int], timeout: float = 5.0) -> set[int]:
    """The ids still loaded after waiting up to `timeout` (program release is deferred)."""
    deadline = time.monotonic() + timeout
    while True:
        left = ids & bpftool_progs().keys()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def prog_ids_held_by_processes() -> set[int]:
    """Program ids some process holds an fd for (from /proc/*/fdinfo prog_id lines)."""
    held: set[int] = set()
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        try:
            text = fdinfo.read_text()
        except OSError:
            continue  # process or fd went away
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held.add(int(line.split()[1]))
    return held


def run_forker(n: int, name: str) -> None:
    subprocess.run([PY, "-c", FORKER, str(n), name], check=True)


# The probes count a comm in its per-CPU cache line, or, when another comm holds that
# line, in the LRU hash (bpf/probes.c). "fallback" loads the probes without cache lines:
# every comm then goes through the LRU path (a line is taken over by a comm that keeps
# missing it, so a full cache no longer keeps new comms out of it), and every exact check
# below runs against both paths.
CACHE_PATHS = ("cache", "fallback")


def load_fallback_only() -> Probes:
    return Probes.load(comm_cache_slots=0)


@pytest.fixture(scope="module", params=list(CACHE_PATHS))
def probes(request: pytest.FixtureRequest) -> Iterator[Probes]:
    p = Probes.load() if request.param == "cache" else load_fallback_only()
    try:
        yield p
    finally:
        p.close()


def in_comm_hash(probes: Probes, name: str) -> CommCounts:
    """The comm's counts in the LRU fallback hash alone (bypassing the cache lines)."""
    by_comm: dict[str, CommCounts] = {}
    probes._read_comm_hash(by_comm)
    return comm_counts(by_comm, name)


# ---- (a) exact per-comm counts ------------------------------------------------------


def test_fork_and_exit_counted_under_forking_comm(probes: Probes) -> None:
    n = 25
    name = unique_comm("lnxf-")
    before = probes.read()
    run_forker(n, name)
    after = probes.read()
    d = delta(comm(after, name), comm(before, name))
    assert (d.forks, d.execs, d.exits) == (n, 0, n)


def test_exec_and_exit_counted_under_new_comm(probes: Probes, tmp_path: Path) -> None:
    n = 25
    name = unique_comm("lnxe-")
    binary = tmp_path / name
    true = shutil.which("true")
    assert true
    shutil.copy(true, binary)
    before = probes.read()
    for _ in range(n):
        subprocess.run([str(binary)], check=True)
    after = probes.read()
    d = delta(comm(after, name), comm(before, name))
    # The fork belongs to the test process's comm; exec and exit to the new name.
    assert (d.forks, d.execs, d.exits) == (0, n, n)
    assert d.exited_cpu_ns >= 0


# ---- (b) node-wide forks against /proc/stat -------------------------------------------


def test_node_forks_consistent_with_proc_stat(probes: Probes) -> None:
    n = 50
    stat_before = proc_stat_processes()
    before = probes.read()
    run_forker(n, unique_comm("lnxn-"))
    after = probes.read()
    stat_after = proc_stat_processes()

    probe_forks = after.forks - before.forks
    stat_forks = stat_after - stat_before
    assert probe_forks >= n + 1  # our N, plus the forker itself
    # /proc/stat counts every copy_process(); the tracepoint misses only tasks created
    # without kernel_clone() (io_uring workers, idle threads). The +2 allows for a fork
    # in flight across a pair of reads: counted by /proc/stat before our first read
    # but by the probe after it.
    assert probe_forks <= stat_forks + 2
    assert probe_forks >= stat_forks - max(5, stat_forks // 20)


def test_totals_cover_comm_sums(probes: Probes) -> None:
    c = probes.read()
    # The map can only have evicted comms, never gained counts the totals lack.
    assert c.forks >= sum(v.forks for v in c.by_comm.values())
    assert c.execs >= sum(v.execs for v in c.by_comm.values())
    assert c.exits >= sum(v.exits for v in c.by_comm.values())
    assert c.exited_cpu_ns >= sum(v.exited_cpu_ns for v in c.by_comm.values())
    assert len(c.lifetime_slots) == LIFETIME_SLOTS


def test_fallback_path_counts_in_the_lru_hash() -> None:
    """With one cache line per CPU, taken by whichever comm came first, a new comm's
    events go to the LRU hash, exactly, and the node totals still cover them."""
    with load_fallback_only() as p:
        n = 7
        name = unique_comm("lnxh-")
        before = p.read()
        run_forker(n, name)
        after = p.read()
        assert p._counters.lru_marks()[0] >= 2 * n  # our forks and exits at least
        hashed = in_comm_hash(p, name)
        d = delta(comm(after, name), comm(before, name))
        # exited CPU is left out: it arrives an RCU grace period after the reap, so it
        # can grow between the two reads
        assert (hashed.forks, hashed.execs, hashed.exits) == (n, 0, n)
        assert (d.forks, d.execs, d.exits) == (n, 0, n)
        assert after.forks - before.forks >= n + 1


def test_chunked_batch_reads_match_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One element per batch call: exercises the chunk loop and the ENOSPC regrowth of
    the LRU fallback's reader (cache lines of one slot send new comms there)."""
    with load_fallback_only() as p:
        name = unique_comm("lnxk-")
        before = p.read()
        run_forker(3, name)
        settled_exited_cpu(p, name, before)  # no exited CPU arriving between the reads
        whole = p.read()
        monkeypatch.setattr(_PerCpuMapReader, "_CHUNK_BYTES", 1)
        fd = p._map_fds["comm_counts"]
        p._comm_reader = _PerCpuMapReader(fd, bpf_syscall.map_info(fd), bpf_syscall.possible_cpus())
        assert p._comm_reader.chunk == 1
        chunked = p.read()
    assert comm(chunked, name) == comm(whole, name)
    assert (comm(whole, name).forks, comm(whole, name).exits) == (3, 3)
    assert set(whole.by_comm) <= set(chunked.by_comm)
    assert all(c >= w for c, w in zip(chunked.lifetime_slots, whole.lifetime_slots, strict=True))
    assert chunked.forks >= whole.forks


# ---- (c) exited-task CPU against wait4 rusage -----------------------------------------
#
# linnix_free counts a task's CPU when its task_struct is freed: an RCU grace period
# after the parent reaps it, so a read right after wait4() may not have it yet.


def settled_exited_cpu(
    probes: Probes, name: str, before: ProbeCounts, timeout: float = 3.0
) -> tuple[CommCounts, ProbeCounts]:
    """The comm's counts since `before` once its exited CPU has appeared and stopped
    growing (unchanged over three reads 100 ms apart), or whatever it is after
    `timeout`. Frees come in RCU callback batches: one quiet interval could fall between
    two batches."""
    deadline = time.monotonic() + timeout
    history: list[CommCounts] = []
    while True:
        after = probes.read()
        d = delta(comm(after, name), comm(before, name))
        history = [*history[-2:], d]
        settled = len(history) == 3 and history.count(d) == 3
        if (d.exited_cpu_ns > 0 and settled) or time.monotonic() > deadline:
            return d, after
        time.sleep(0.1)


def rusage_ns(ru: resource.struct_rusage) -> float:
    return (ru.ru_utime + ru.ru_stime) * 1e9


def test_exited_cpu_matches_rusage(probes: Probes) -> None:
    name = unique_comm("lnxc-")
    before = probes.read()
    proc = subprocess.Popen([PY, "-c", BURNER, name, "0.5"])
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen quiet
    assert proc.returncode == 0
    d, after = settled_exited_cpu(probes, name, before)

    expected = rusage_ns(rusage)
    assert d.exits == 1
    assert expected >= 0.45e9
    assert d.exited_cpu_ns == pytest.approx(expected, rel=0.10)
    assert after.exited_cpu_ns - before.exited_cpu_ns >= d.exited_cpu_ns


def test_short_lived_exited_cpu_matches_rusage(probes: Probes, tmp_path: Path) -> None:
    """Short-lived processes are what the metric is for: most of their CPU is spent
    after sched_process_exit (exit_mm...), which only a read at free time sees."""
    n = 50
    name = unique_comm("lnxs-")
    binary = tmp_path / name
    true = shutil.which("true")
    assert true
    shutil.copy(true, binary)
    before = probes.read()
    expected = 0.0
    for _ in range(n):
        pid = os.posix_spawn(binary, [str(binary)], {})
        _, status, rusage = os.wait4(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        expected += rusage_ns(rusage)
    d, _ = settled_exited_cpu(probes, name, before)

    assert (d.execs, d.exits) == (n, n)
    assert expected > 0
    # wait4 can reap a zombie that has not yet switched away for the last time, so its
    # figure may lack a few us per process that the probe (reading after that switch)
    # includes; rusage is also truncated to us. Neither comes near 10% over 50 runs.
    assert d.exited_cpu_ns == pytest.approx(expected, rel=0.10)


# ---- (d) lifetime histogram -----------------------------------------------------------


def test_lifetime_histogram_slot(probes: Probes) -> None:
    """One forked child living ~50 ms: its slot and its exact lifetime in the sum. Other
    processes exit on this host too, so the window (~55 ms) is repeated until ours was
    the only thread-group exit in it; what is asserted never changes."""
    sleep_s = 0.05
    lo_ns = int(sleep_s * 1e9)
    for _attempt in range(40):
        before = probes.read()
        t0 = time.monotonic_ns()
        pid = os.fork()
        if pid == 0:
            time.sleep(sleep_s)
            os._exit(0)
        os.waitpid(pid, 0)
        t1 = time.monotonic_ns()
        after = probes.read()
        hi_ns = t1 - t0  # the child lived inside [t0, t1]
        slots = [a - b for a, b in zip(after.lifetime_slots, before.lifetime_slots, strict=True)]
        if sum(slots) != 1:
            continue  # another process exited in the window: measure again
        (slot,) = [i for i, v in enumerate(slots) if v]
        assert slot in {math.floor(math.log2(lo_ns)), math.floor(math.log2(hi_ns))}
        assert lo_ns <= after.lifetime_sum_ns - before.lifetime_sum_ns <= hi_ns
        return
    raise AssertionError("no window of 40 had our exit alone: the node is too busy to tell")


# ---- (e) detaching --------------------------------------------------------------------


def test_close_unloads_programs() -> None:
    p = Probes.load()
    ids = set(p.program_ids)
    assert len(ids) == len(PROG_NAMES)
    assert ids <= bpftool_progs().keys()
    p.close()
    p.close()  # idempotent
    assert p.closed
    assert wait_gone(ids) == set()
    with pytest.raises(ProbeError):
        p.read()


HOLDER = """
import json, sys, time
from linnix_exporter.kernel.probes import Probes
p = Probes.load()
print(json.dumps(sorted(p.program_ids)), flush=True)
time.sleep(600)
"""


def test_killed_holder_leaves_nothing_attached() -> None:
    proc = subprocess.Popen([PY, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ids = set(json.loads(proc.stdout.readline()))
        assert len(ids) == len(PROG_NAMES)
        assert ids <= bpftool_progs().keys()
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(ids) == set()


@pytest.mark.parametrize("when", ["mid-compile", "after-handover-unreceived"])
def test_killed_loader_leaves_nothing_attached(when: str) -> None:
    """The loader dies before the daemon took the fds: nothing may stay loaded."""
    before = bpftool_progs().keys()
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cmd = [PY, "-m", "linnix_exporter.kernel._loader", "--sock-fd", str(child.fileno())]
    proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),))
    child.close()
    try:
        if when == "mid-compile":
            time.sleep(0.3)
        else:
            ready, _, _ = select.select([parent], [], [], 60)
            assert ready, "loader never sent its message"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        parent.close()  # drops any fds still queued in the socket

    deadline = time.monotonic() + 5
    orphans: set[int] | None = None
    while True:
        new = {i for i, n in bpftool_progs().items() if i not in before and n in PROG_NAMES}
        # Programs another process (a concurrent test run, a daemon) holds are not ours.
        # Other runs on this machine load and free linnix_* programs all the time, and
        # one freed between the listing and the fdinfo scan reads as unheld once: a
        # leak is an orphan in EVERY scan until the deadline.
        now = new - prog_ids_held_by_processes()
        orphans = now if orphans is None else orphans & now
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert orphans == set()


# ---- (f) the daemon side stays free of bcc --------------------------------------------


def test_parent_never_imports_bcc(probes: Probes) -> None:
    assert "bcc" not in sys.modules
    loaded = bpftool_progs()
    assert probes.program_ids <= loaded.keys()
    assert {loaded[i] for i in probes.program_ids} == set(PROG_NAMES)
    assert {bpf_syscall.prog_id_of_fd(fd) for fd in probes._prog_fds.values()} == set(
        probes.program_ids
    )
    assert probes.loader_pid != os.getpid()


def test_loader_error_is_one_line() -> None:
    with pytest.raises(ProbeError, match=r"comm-slots must be positive") as e:
        Probes.load(comm_slots=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ProbeError, match=r"comm-cache-slots must be 0 or a power of two"):
        Probes.load(comm_cache_slots=3)


# ---- (g) probes_attached sees a detached probe ----------------------------------------


def attached_per_bpftool(pid: int) -> set[int]:
    """Program ids the kernel runs through attachment fds of `pid` (bpftool perf list:
    perf events and raw-tracepoint links, by BPF_TASK_FD_QUERY on /proc/PID/fd)."""
    out = subprocess.run(
        ["bpftool", "-j", "perf", "list"], check=True, capture_output=True, text=True
    ).stdout
    return {int(p["prog_id"]) for p in json.loads(out) if p["pid"] == pid}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def served_attached(port: int) -> float:
    status, body = http_get(port, "/metrics")
    assert status == 200
    values = [
        s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == "linnix_probes_attached"
    ]
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize("tp", ["sched:sched_process_exec", "raw:sched_process_free"])
def test_detached_probe_reads_not_attached(tp: str) -> None:
    """A running collector loop and HTTP server with real probes; one probe's attachment
    goes away while the program stays loaded (and listed): the tick, /metrics and
    /readyz must say so, as bpftool does. The attachment fd's number is then reused by
    another file (/dev/null), as after a stray close(): the kernel's answer for that
    number, not our bookkeeping, decides."""
    cfg = run_config(build_parser().parse_args(["run", "--collect.interval", "200ms"]), {})
    stats = StatsSwitch()
    stop = threading.Event()
    with Probes.load() as probes:
        # The daemon's own ticker, on a timer (the schedule under test is not the point).
        ticker = wiring.make_ticker(
            replace(cfg, collect_mode=TIMER), wiring.kernel_sources(cfg, stats, probes), None
        )
        exporter = ticker.exporter
        server = None
        loop = threading.Thread(target=ticker.run, args=(stop,))
        try:
            assert stats.enable("enable_stats_fd").enabled  # so that only probes decide
            exporter.tick()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(TickCollector(lambda: exporter.latest, lambda: 0))
            server = Server(
                ("127.0.0.1", 0), registry, "/metrics", lambda: wiring.ready(ticker, cfg)
            )
            serve(server)
            loop.start()
            port = server.server_address[1]
            ids = set(probes.program_ids)
            assert attached_per_bpftool(os.getpid()) >= ids
            assert exporter.latest is not None and exporter.latest.probes_attached
            assert http_get(port, "/readyz")[0] == 200
            assert served_attached(port) == 1

            name = next(n for n, t in PROGRAMS.items() if t == tp)
            gone = probes.program_names[name]
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, probes._attach_fds[tp])  # drops the attachment's last ref
            os.close(devnull)
            assert attached_per_bpftool(os.getpid()) & ids == ids - {gone}
            assert gone in bpftool_progs()  # still loaded: being listed is not enough

            seq = exporter.latest.seq
            deadline = time.monotonic() + 10
            while exporter.latest.seq < seq + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            tick = exporter.latest
            assert tick.seq >= seq + 2, "the loop did not tick"
            assert tick.snapshot.probes is not None
            assert tick.snapshot.probes.attached_program_ids == frozenset(ids - {gone})
            assert not tick.probes_attached
            assert http_get(port, "/readyz") == (503, "probes not attached\n")
            assert served_attached(port) == 0
        finally:
            stop.set()
            ticker.kick()
            if loop.is_alive():
                loop.join()
            if server is not None:
                server.shutdown()
                server.server_close()
            exporter.close()
            stats.close()


# ---- (h) comm cache lines reused ------------------------------------------------------


def cache_generations(p: Probes) -> int:
    """Takeovers of comm cache lines so far, summed over every line of every CPU."""
    c = p._counters
    w = c._words
    step = c.lines * 8
    return sum(w[o + 7] >> 1 for r in range(0, len(w), step) for o in range(r + 9 * 8, r + step, 8))


def test_comm_cache_full_and_cycling_keeps_counts_exact() -> None:
    """Twelve commands take turns on two cache lines per CPU (bpf/probes.c's second-
    chance rule takes lines over again and again): every command's forks and exits stay
    exact, the node's forks agree with /proc/stat, and the totals still cover the comm
    sums."""
    p = Probes.load(comm_cache_slots=2)
    try:
        names = [unique_comm("lnxc-") for _ in range(12)]
        rounds, n = 3, 4
        stat_before = proc_stat_processes()
        before = p.read()
        gen_before = cache_generations(p)
        for _ in range(rounds):
            for name in names:
                run_forker(n, name)
                p.read()  # reads between runs, as ticks would: takeovers between reads
        after = p.read()
        stat_after = proc_stat_processes()
        assert cache_generations(p) > gen_before  # lines were taken over
        for name in names:
            d = delta(comm(after, name), comm(before, name))
            assert (d.forks, d.execs, d.exits) == (rounds * n, 0, rounds * n), name
        probe_forks = after.forks - before.forks
        stat_forks = stat_after - stat_before
        # As in test_node_forks_consistent_with_proc_stat: a fork in flight across the
        # reads, and tasks created without kernel_clone().
        assert stat_forks - max(5, stat_forks // 20) <= probe_forks <= stat_forks + 2
        assert after.forks >= sum(v.forks for v in after.by_comm.values())
        assert after.exits >= sum(v.exits for v in after.by_comm.values())
    finally:
        p.close()
