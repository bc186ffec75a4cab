"""The standard process_* families (client_python's ProcessCollector names) against /proc.

Unit part: the readers in kernel/self_usage.py on this test process, and the start time
worked by hand. Kernel part: a running daemon (probes and iterators loaded, so its
loader children have been reaped) scraped over one keep-alive connection, each served
figure bracketed by /proc readings taken just before and just after the scrape that
ticked. The tick reads /proc/self between the two, so a figure that does not move in
between must equal the reading; one that moves (RSS grows while the body is encoded)
lies between them. An attempt whose brackets are broken by something else moving is
repeated; the bounds are never widened.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterator

import pytest

from linnix_exporter.kernel.self_usage import (
    SelfUsageReader,
    max_fds,
    open_fds,
    start_time_seconds,
)
from tests.kernel_helpers import Daemon, daemon, proc_status

TICK = 1 / os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
FAMILIES = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the comm: index 0 is field 3 (state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def listed_fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def own(f: list[str]) -> float:
    """utime + stime: the process itself (what client_python serves)."""
    return (int(f[11]) + int(f[12])) * TICK


def kids(f: list[str]) -> float:
    """cutime + cstime: the children it waited for."""
    return (int(f[13]) + int(f[14])) * TICK


def limits_soft_nofile(pid: int | str) -> float:
    with open(f"/proc/{pid}/limits") as f:
        line = next(ln for ln in f if ln.startswith("Max open files"))
    soft = line.split()[3]
    return float("inf") if soft == "unlimited" else float(soft)


# ---- the readers, on this process -------------------------------------------------------


def test_start_time_worked_by_hand() -> None:
    """A comm with spaces and ')' in it; starttime (field 22) = 12345 ticks after boot.
    Read when the boottime clock says 200.0 s and the wall clock 1,700,000,200.0: boot
    was at 1,700,000,000.0, the start 123.45 s (12345 / 100 Hz) later."""
    line = "4242 (a) b) c) S 1 " + " ".join(["0"] * 17) + " 12345 999 " + " ".join(["0"] * 20)
    assert line.rsplit(")", 1)[1].split()[19] == "12345"  # field 22, as proc(5) numbers it
    got = start_time_seconds(line, now_wall=1_700_000_200.0, now_boottime=200.0)
    assert got == pytest.approx(1_700_000_000.0 + 12345 * TICK, abs=1e-6)


def test_start_time_of_this_process_against_btime() -> None:
    """client_python's way: /proc/stat btime (whole seconds, rounded down) + starttime.
    Ours places starttime against the boottime clock instead: later by the fraction of a
    second btime dropped, at most 1 s (and a tick for rounding)."""
    with open("/proc/stat") as f:
        btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime"))
    theirs = btime + int(stat_fields("self")[19]) * TICK
    ours = SelfUsageReader()
    try:
        start = ours.read().start_time_seconds
    finally:
        ours.close()
    assert theirs - TICK <= start <= theirs + 1 + TICK, (start, theirs)
    assert start < time.time()


def test_open_fds_counts_what_a_listing_shows() -> None:
    """st_size of /proc/self/fd (one stat) against a listing, which holds one fd of its
    own while it reads; ten more files opened count ten more."""
    before = open_fds()
    assert before == listed_fds("self") - 1
    with contextlib.ExitStack() as stack:
        for _ in range(10):
            stack.enter_context(open("/dev/null"))
        assert open_fds() == before + 10 == listed_fds("self") - 1


def test_open_fds_without_a_sized_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 6.2 /proc/self/fd has size 0: the listing path gives the same count."""
    truth = open_fds()
    real_stat = os.stat

    def unsized(path: str, *a: object, **kw: object) -> os.stat_result:
        st = real_stat(path, *a, **kw)  # type: ignore[arg-type]
        if path == "/proc/self/fd":
            return os.stat_result((*st[:6], 0, *st[7:]))
        return st

    monkeypatch.setattr(os, "stat", unsized)
    assert open_fds() == truth


def test_max_fds_is_the_soft_limit_read_live() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert max_fds() == limits_soft_nofile("self") == soft
    lower = min(soft, hard) - 7
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        assert max_fds() == limits_soft_nofile("self") == lower
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_virtual_size_is_proc_stat_vsize() -> None:
    """statm's first field (pages) is the same mm->total_vm as stat's vsize (bytes); an
    attempt during which this process mapped memory is repeated."""
    r = SelfUsageReader()
    try:
        for _ in range(5):
            v0 = int(stat_fields("self")[20])
            got = r.read().virtual_bytes
            if v0 == int(stat_fields("self")[20]):
                assert got == v0
                return
        pytest.fail("vsize moved in every attempt")
    finally:
        r.close()


# ---- the daemon, from outside -----------------------------------------------------------


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[Daemon, float, float]]:
    started_after = time.time()
    with daemon("--collect.interval", "500ms") as d:
        started_before = time.time()
        d.wait_ready()
        yield d, started_after, started_before
        d.stop()


@pytest.mark.kernel
def test_served_families_and_types(running: tuple[Daemon, float, float]) -> None:
    """Names and types as client_python's ProcessCollector serves them."""
    from prometheus_client.parser import text_string_to_metric_families

    d = running[0]
    status, body, _ = d.get("/metrics")
    assert status == 200
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert types["process_cpu_seconds"] == "counter"
    for name in FAMILIES[1:]:
        assert types[name] == "gauge", name


@pytest.mark.kernel
def test_served_figures_against_proc(running: tuple[Daemon, float, float]) -> None:
    d, started_after, started_before = running
    pid = d.proc.pid
    session = d.session()
    try:
        session.metrics()  # the connection thread exists before the first bracket
        for _ in range(5):
            time.sleep(0.6)  # older than --collect.interval: the next scrape ticks
            cpu0, fds0 = stat_fields(pid), listed_fds(pid)
            rss0, soft0 = proc_status(pid, "VmRSS") * 1024, limits_soft_nofile(pid)
            m = session.metrics()
            cpu1, fds1 = stat_fields(pid), listed_fds(pid)
            rss1, soft1 = proc_status(pid, "VmRSS") * 1024, limits_soft_nofile(pid)
            vsize0, vsize1 = int(cpu0[20]), int(cpu1[20])
            moved = fds0 != fds1 or soft0 != soft1 or not rss0 <= rss1 or vsize0 != vsize1
            if not moved:
                break
        else:
            pytest.fail("the daemon's fds, limits or memory moved around every scrape")
        served = {k: m[f"{k}{{}}"] for k in FAMILIES}

        # CPU: the exporter and the helpers it reaped (bcc compile children), as
        # linnix_exporter_cpu_seconds_total. /proc gives utime+stime (the process) and
        # cutime+cstime (reaped children) in ticks, each rounded down from the exact
        # time, so the served figure is at least the reading before and at most the
        # reading after plus one tick per field.
        cpu = served["process_cpu_seconds_total"]
        assert own(cpu0) + kids(cpu0) <= cpu <= own(cpu1) + kids(cpu1) + 4 * TICK
        # The loader children compiled the probes and the iterators (about 1 s here):
        # client_python's figure (utime+stime only) would miss that.
        assert kids(cpu0) >= 0.1, kids(cpu0)
        assert cpu > own(cpu1) + 4 * TICK
        modes = sum(v for k, v in m.items() if k.startswith("linnix_exporter_cpu_seconds_total"))
        assert cpu == pytest.approx(modes, abs=1e-9)  # one read, two names

        # RSS grows while the body is encoded after the tick: between the readings.
        assert rss0 <= served["process_resident_memory_bytes"] <= rss1
        assert (
            served["process_resident_memory_bytes"] == m["linnix_exporter_resident_memory_bytes{}"]
        )
        assert served["process_virtual_memory_bytes"] == vsize0
        assert served["process_open_fds"] == fds0
        assert served["process_max_fds"] == soft0

        # Started between the two clock readings around Popen (it forks there), to a
        # clock tick: /proc keeps the start in ticks, rounded down.
        start = served["process_start_time_seconds"]
        assert started_after - TICK - 0.001 <= start <= started_before, (
            started_after,
            start,
            started_before,
        )
    finally:
        session.close()


@pytest.mark.kernel
def test_max_fds_follows_prlimit(running: tuple[Daemon, float, float]) -> None:
    """The limit is read at every tick: prlimit(1) on the running daemon shows at once."""
    d = running[0]
    pid = d.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (4321, hard))
        time.sleep(0.6)
        m = d.metrics()
        assert m["process_max_fds{}"] == 4321 == limits_soft_nofile(pid)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
