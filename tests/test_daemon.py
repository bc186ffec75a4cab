"""The daemon end to end on the real kernel: served figures against bpftool and /proc,
HTTP behaviour, promtool, memory, signals, capabilities, program churn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from linnix_exporter.kernel.owner_iter import PROG_NAME as OWNERS_PROG_NAME
from linnix_exporter.kernel.prog_iter import PROG_NAME
from tests.kernel_helpers import (
    Daemon,
    bpftool_progs,
    bpftrace_fork_counter,
    daemon,
    forks,
    proc_stat_cpu_seconds,
)
from tests.support import trivial_prog

pytestmark = pytest.mark.kernel

RSS_GOAL = 40 * 1024 * 1024


def our_ids(m: dict[str, float]) -> set[int]:
    return {
        int(k.split("id=")[1].split(",")[0])
        for k in m
        if k.startswith("linnix_bpf_program_runs_total{") and "ours=true" in k
    }


def probe_ids(m: dict[str, float]) -> set[int]:
    """Our probes: the programs of ours named linnix_* but the stats and owners
    iterators."""
    return {
        int(k.split("id=")[1].split(",")[0])
        for k in m
        if k.startswith("linnix_bpf_program_runs_total{")
        and "ours=true" in k
        and "name=linnix_" in k
        and f"name={PROG_NAME}," not in k
        and f"name={OWNERS_PROG_NAME}," not in k
    }


def program_value(m: dict[str, float], family: str, prog_id: int) -> float:
    (v,) = [v for k, v in m.items() if k.startswith(family + "{id=" + str(prog_id) + ",")]
    return v


@pytest.fixture(scope="module")
def foreign():  # type: ignore[no-untyped-def]
    with bpftrace_fork_counter() as agent:
        yield agent


@pytest.fixture(scope="module")
def running(foreign):  # type: ignore[no-untyped-def]
    # always: these tests read run times as the kernel counts them every interval; a
    # busy shared node could otherwise make auto sample (tests/test_stats_cost.py).
    with daemon("--collect.interval", "1s", "--bpf.stats-mode", "always") as d:
        d.wait_ready()
        yield d
        assert d.stop(signal.SIGTERM) == 0


def test_http_endpoints(running: Daemon) -> None:
    assert running.get("/healthz")[0] == 200
    assert running.get("/readyz")[0] == 200
    assert running.get("/nope")[0] == 404
    assert running.get("/metrics/extra")[0] == 404
    status, body, headers = running.get("/")
    assert status == 200 and "/metrics" in body
    req = urllib.request.Request(running.url + "/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    status, body, headers = running.get(
        "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_metrics_pass_promtool(running: Daemon) -> None:
    body = running.get("/metrics")[1]
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=body.encode(), capture_output=True, timeout=30
    )
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_our_probes_match_bpftool_and_are_owned_by_us(running: Daemon) -> None:
    m = running.wait_tick(0)
    ours = our_ids(m)
    ids = probe_ids(m)
    assert len(ids) == 4  # fork, exec, exit, free
    # Our other two programs are the stats and owners iterators ("tracing" programs).
    assert m["linnix_bpf_read_method{method=iterator}"] == 1
    iterators = ours - ids
    assert len(iterators) == 2
    assert {bpftool_progs()[i]["type"] for i in iterators} == {"tracing"}
    assert m["linnix_probes_attached{}"] == 1
    assert m["linnix_bpf_stats_enabled{method=enable_stats_fd}"] == 1
    oracle = bpftool_progs()
    for i in ids:
        assert oracle[i]["type"] in ("tracepoint", "raw_tracepoint")
        owners = [
            k for k in m if k.startswith("linnix_bpf_program_owner_info{") and f",id={i}," in k
        ]
        assert any(f"owner_pid={running.proc.pid}" in k for k in owners), owners
    # A tick read before bpftool <= bpftool <= a tick read after bpftool.
    forks(200)
    first = running.wait_tick(0)
    oracle = bpftool_progs()
    second = running.wait_tick_after(time.time())
    for i in ids:
        for fam, key in (
            ("linnix_bpf_program_runs_total", "run_cnt"),
            ("linnix_bpf_program_run_time_seconds_total", "run_time_ns"),
        ):
            scale = 1e9 if key == "run_time_ns" else 1
            lo = round(program_value(first, fam, i) * scale)
            hi = round(program_value(second, fam, i) * scale)
            assert lo <= oracle[i][key] <= hi, (fam, i, lo, oracle[i][key], hi)
    fork_probe = [
        i
        for i in ids
        if oracle[i]["name"].startswith("sched_process_f") or "fork" in oracle[i]["name"]
    ]
    assert (
        fork_probe and program_value(second, "linnix_bpf_program_runs_total", fork_probe[0]) >= 200
    )


def test_foreign_program_listed_with_owner(running: Daemon, foreign) -> None:  # type: ignore[no-untyped-def]
    proc, prog_id = foreign
    m = running.wait_tick(0)
    runs = [k for k in m if k.startswith(f"linnix_bpf_program_runs_total{{id={prog_id},")]
    assert runs and "ours=false" in runs[0]
    owners = [
        k for k in m if k.startswith("linnix_bpf_program_owner_info{") and f",id={prog_id}," in k
    ]
    assert any(f"owner_pid={proc.pid}" in k and "owner_comm=bpftrace" in k for k in owners)


def test_self_cpu_agrees_with_proc_stat(running: Daemon) -> None:
    m = running.wait_tick(0)
    served = (
        m["linnix_exporter_cpu_seconds_total{mode=user}"]
        + m["linnix_exporter_cpu_seconds_total{mode=system}"]
    )
    now = proc_stat_cpu_seconds(running.proc.pid)
    tick = 1 / os.sysconf("SC_CLK_TCK")
    # Served is from the last tick (<= 1 s ago, idle daemon): at most a few ticks behind.
    assert now - 0.1 <= served <= now + 4 * tick
    # The compile child's CPU (~1 s of clang) is in there: more than the daemon alone.
    assert served >= 0.3


def watch_two_ticks(d: Daemon) -> tuple[dict[str, float], dict[str, float], tuple[float, float]]:
    """Scrape every 20 ms on one connection until two consecutive tick changes are seen:
    (tick a, tick b, bounds on b's monotonic stamp minus a's). A tick's stamp is taken
    after the last scrape that still showed the previous tick started, less the tick's
    own duration (publication follows the stamp by at most that), and before the first
    scrape showing it ended."""
    s = d.session()
    try:
        seen: list[tuple[dict[str, float], float, float]] = []  # (tick, stamp lo, hi)
        prev: tuple[float, float] | None = None  # (seq, start) of the previous scrape
        deadline = time.monotonic() + 30
        while len(seen) < 2:
            assert time.monotonic() < deadline, "did not see two consecutive ticks"
            t0 = time.monotonic()
            m = s.metrics()
            t1 = time.monotonic()
            seq = m["linnix_exporter_collections_total{}"]
            if prev is not None and seq == prev[0] + 1:
                took = m["linnix_exporter_collect_duration_seconds{}"]
                seen.append((m, prev[1] - took, t1))
            elif prev is not None and seq != prev[0]:
                seen = []  # a tick came and went between two scrapes: start over
            prev = (seq, t0)
            time.sleep(0.02)
    finally:
        s.close()
    (a, a_lo, a_hi), (b, b_lo, b_hi) = seen
    return a, b, (b_lo - a_hi, b_hi - a_lo)


def test_ratios_consistent_with_counters(running: Daemon) -> None:
    forks(300)
    a, b, (dt_lo, dt_hi) = watch_two_ticks(running)
    dt = b["linnix_overhead_interval_seconds{}"]
    cpus = b["linnix_node_cpus{}"]
    assert cpus == os.sysconf("SC_NPROCESSORS_ONLN")
    d_probe = (
        b["linnix_probes_run_time_seconds_total{}"] - a["linnix_probes_run_time_seconds_total{}"]
    )
    d_cpu = sum(
        b[f"linnix_exporter_cpu_seconds_total{{mode={m}}}"]
        - a[f"linnix_exporter_cpu_seconds_total{{mode={m}}}"]
        for m in ("user", "system")
    )
    # What statistics cost every program's runs (we hold them on: enable_stats_fd).
    d_stats = (
        b["linnix_bpf_stats_overhead_seconds_total{}"]
        - a["linnix_bpf_stats_overhead_seconds_total{}"]
    )
    assert b["linnix_bpf_stats_enabled{method=enable_stats_fd}"] == 1  # always: not sampled
    assert b["linnix_bpf_stats_duty_ratio{}"] == 1.0
    assert b["linnix_overhead_ratio{}"] == pytest.approx(
        (d_probe + d_cpu + d_stats) / (dt * cpus), rel=1e-6, abs=1e-12
    )
    assert b["linnix_overhead_core_ratio{}"] == pytest.approx(
        (d_probe + d_cpu + d_stats) / dt, rel=1e-6, abs=1e-12
    )
    # The measured interval, bracketed by the scrapes that saw each tick land (a late
    # tick on a busy node makes it longer or shorter than 1 s; it must be the real one).
    assert dt_lo <= dt <= dt_hi, (dt_lo, dt, dt_hi)


def test_rss_within_goal(running: Daemon) -> None:
    with open(f"/proc/{running.proc.pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    assert rss <= RSS_GOAL, f"daemon RSS {rss / 2**20:.1f} MiB > 40 MiB"
    m = running.wait_tick(0)
    # Served RSS is the tick's (statm); ours is read before the scrape that returned it.
    # Between the two the daemon only serves scrapes: over 30 ticks here the served
    # figure was 0-0.5 MiB below VmRSS read after the tick (encoding the body
    # allocates); a figure in other units or of another process is far outside 1 MiB.
    assert abs(m["linnix_exporter_resident_memory_bytes{}"] - rss) < 1 * 1024 * 1024


def test_program_churn_never_breaks_a_scrape(running: Daemon) -> None:
    stop = threading.Event()
    loaded = 0

    def churn() -> None:
        nonlocal loaded
        while not stop.is_set():
            fds = trivial_prog.load_many(20, prefix="lnx_churn")
            loaded += len(fds)
            trivial_prog.close_all(fds)

    t = threading.Thread(target=churn)
    t.start()
    try:
        deadline = time.monotonic() + 6
        scrapes = 0
        last: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = running.metrics()  # asserts 200
            scrapes += 1
            for k, v in m.items():
                family = k.split("{")[0]
                # Every counter that stays listed only grows while programs come and go
                # under it (a program counted from 0 or its first tick, never negative);
                # a node share lies in [0, 1] (the core ratio is up to the CPUs, the
                # budgets are flags).
                if family.endswith("_total") and k in last:
                    assert v >= last[k], (k, last[k], v)
                if family.endswith("_ratio") and "core" not in k and "budget" not in k:
                    assert 0 <= v <= 1, (k, v)
            last = m
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert scrapes > 20 and loaded > 200
    assert running.get("/readyz")[0] == 200


def test_missing_capability_is_named_and_nothing_attached() -> None:
    before = set(bpftool_progs())
    p = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            sys.executable,
            "-m",
            "linnix_exporter",
            "run",
            "--web.listen-address",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_SYS_ADMIN" in lines[0], p.stderr
    assert set(bpftool_progs()) - before == set()


def test_port_in_use_is_one_line(running: Daemon) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "linnix_exporter",
            "run",
            "--no-probes.enabled",
            "--web.listen-address",
            f"127.0.0.1:{running.port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "cannot listen on 127.0.0.1" in p.stderr.strip().splitlines()[-1]


def test_filters_and_top_n_bound_the_series() -> None:
    """Excluded types and programs past the top N go to [other]; totals still count all."""
    fds = trivial_prog.load_many(30, prefix="lnx_filter")
    try:
        with daemon(
            "--collect.interval",
            "1s",
            "--no-probes.enabled",
            "--bpf.exclude-type",
            "socket_filter",
            "--bpf.top-programs",
            "5",
        ) as d:
            d.wait_ready()
            m = d.wait_tick(1)
            listed = [k for k in m if k.startswith("linnix_bpf_program_runs_total{")]
            assert not [k for k in listed if "type=socket_filter" in k]
            # top 5 + [other] + ours (pinned: here only the stats iterator)
            assert len(listed) <= 5 + 1 + len(our_ids(m))
            assert any("name=[other]" in k for k in listed)
            assert m["linnix_bpf_unlisted_programs{}"] >= 30
            assert m["linnix_bpf_programs{}"] >= 30  # totals still count every program
            # Probes off on purpose: no "not attached" series for alerts to fire on.
            assert "linnix_probes_attached{}" not in m
            assert d.get("/readyz")[0] == 200
            assert d.stop() == 0
    finally:
        trivial_prog.close_all(fds)


def test_probes_run_time_excludes_the_iterator(running: Daemon) -> None:
    """The iterator runs inside our read(): its time is in our CPU already."""
    forks(100)
    m = running.wait_tick(0)
    by_probe = sum(
        program_value(m, "linnix_bpf_program_run_time_seconds_total", i) for i in probe_ids(m)
    )
    assert m["linnix_probes_run_time_seconds_total{}"] == pytest.approx(by_probe, rel=1e-9)
    # Both iterators (stats every tick, owners at the first tick at least) have run.
    for iterator in our_ids(m) - probe_ids(m):
        assert program_value(m, "linnix_bpf_program_runs_total", iterator) > 0


def test_syscall_read_method() -> None:
    with daemon("--collect.interval", "1s", "--bpf.read-method", "syscall") as d:
        d.wait_ready()
        m = d.wait_tick(1)
        assert m["linnix_bpf_read_method{method=syscall}"] == 1
        assert our_ids(m) == probe_ids(m) and len(our_ids(m)) == 4
        assert d.stop() == 0


def test_first_ratio_is_not_taken_over_milliseconds() -> None:
    """Start-up ticks once before serving; the next tick must not follow at once, or the
    first ratios cover a few milliseconds in which one 10 ms scheduler tick of the
    exporter's CPU reads as a large share of the node (0.36 was served that way)."""
    with daemon("--collect.interval", "10s", "--no-probes.enabled") as d:
        d.wait_ready()
        first = d.metrics()
        m = (
            d.wait_tick(first["linnix_exporter_collections_total{}"])
            if ("linnix_overhead_interval_seconds{}" not in first)
            else first
        )
        assert m["linnix_exporter_collections_total{}"] == 2
        interval = m["linnix_overhead_interval_seconds{}"]
        assert 0.9 <= interval <= 5.0, interval  # ~1 s: soon, but over a real interval
        # The first interval holds the first tick after its self reading (the first
        # tick builds a row for every program on the node), the end of start-up (the
        # server, ~4 ms), this test's /readyz polls and scrape, and the second tick up to
        # its self reading. Measured 2026-12-07 with 2-9 programs loaded: 6-12 ms of CPU
        # on a quiet machine, 18-34 ms at load 3.4 (a vCPU's stolen time reads as our
        # CPU), 31 ms once in a CI run; with 2,086 programs loaded by another session,
        # 263 ms (126 us a program). Start-up before the first tick is ~250 ms of the
        # exporter's own CPU and ~1 s of its bcc child's, so 60 ms + 150 us a program
        # still fails if that lands in the first interval on a node of a few programs.
        # The bug itself served 0.36 of the node over milliseconds of interval, which
        # the interval check above catches.
        cpu_s = m["linnix_exporter_cpu_ratio{}"] * interval * m["linnix_node_cpus{}"]
        assert 0 < cpu_s <= 0.060 + 150e-6 * m["linnix_bpf_programs{}"], cpu_s
        assert d.stop(signal.SIGTERM) == 0
