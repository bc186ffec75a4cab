"""`prove` without the kernel: /proc parsing (checked against the kernel's other views of
the same figures), the math, the A/B order, the report text and usage errors."""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from linnix_exporter.tools import workload
from linnix_exporter.tools.prove_report import (
    Run,
    Settings,
    ab_reading,
    build_report,
    format_report,
    json_safe,
)
from linnix_exporter.tools.prove_sample import (
    PROBE_NAMES,
    NodeStat,
    ProbeProgram,
    Sample,
    ab_order,
    interval_row,
    median,
    parse_pid_stat,
    parse_proc_stat,
    parse_stats_enabled,
    parse_vmrss,
    percentile,
    phase_seconds,
    slowdown,
    storm_check,
    summarize,
)
from tests.kernel_helpers import REPO


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


# ---- /proc parsing, against independent views ------------------------------------------


def test_pid_stat_matches_os_times() -> None:
    end = time.process_time() + 0.3
    while time.process_time() < end:  # burn some CPU so the figures are not all zero
        pass
    subprocess.run(["true"], check=True)  # a reaped child: cutime/cstime
    user, system = parse_pid_stat(read("/proc/self/stat"))
    t = os.times()
    tck = os.sysconf("SC_CLK_TCK")
    assert user / tck == pytest.approx(t.user + t.children_user, abs=2 / tck)
    assert system / tck == pytest.approx(t.system + t.children_system, abs=2 / tck)


def test_pid_stat_comm_with_spaces_and_parens() -> None:
    # comm may hold ") (" and spaces: fields are counted from the last ')'.
    line = "42 (a) (b c) S 1 42 42 0 -1 4194560 10 0 0 0 7 3 5 2 20 0 1 0 100 0 0"
    assert parse_pid_stat(line) == (7 + 5, 3 + 2)


def test_vmrss_matches_statm() -> None:
    rss = parse_vmrss(read("/proc/self/status"))
    pages = int(read("/proc/self/statm").split()[1])
    assert rss == pytest.approx(pages * os.sysconf("SC_PAGE_SIZE"), rel=0.05)
    with pytest.raises(ValueError):
        parse_vmrss("Name:\tx\n")


def test_proc_stat_counts_our_forks() -> None:
    before = parse_proc_stat(read("/proc/stat"))
    for _ in range(20):
        subprocess.run(["true"], check=True)
    after = parse_proc_stat(read("/proc/stat"))
    assert after.processes - before.processes >= 20
    assert after.total_ticks >= after.busy_ticks > 0


def test_proc_stat_busy_excludes_idle_and_iowait() -> None:
    text = "cpu  10 1 5 100 7 2 3 4 9 0\ncpu0 1 1 1 1 1 1 1 1 0 0\nprocesses 1234\n"
    assert parse_proc_stat(text) == NodeStat(1234, 10 + 1 + 5 + 2 + 3 + 4, 132)
    with pytest.raises(ValueError):
        parse_proc_stat("cpu  1 2 3 4 5 6 7 8\n")


def test_stats_enabled_from_metrics_text() -> None:
    text = (
        "# TYPE linnix_bpf_stats_enabled gauge\n"
        'linnix_bpf_stats_enabled{method="enable_stats_fd"} 1.0\n'
    )
    assert parse_stats_enabled(text) == (True, "enable_stats_fd")
    assert parse_stats_enabled(text.replace("1.0", "0.0")) == (False, "enable_stats_fd")
    assert parse_stats_enabled("") == (False, "absent")


def test_probe_names_are_the_loaders() -> None:
    from linnix_exporter.kernel._loader import PROGRAMS

    assert set(PROBE_NAMES) == set(PROGRAMS)
    assert all(len(n) <= 15 for n in PROBE_NAMES)  # the kernel keeps 15 chars


# ---- math -------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    v = [float(x) for x in range(1, 21)]  # 1..20
    assert percentile(v, 95) == 19.0
    assert percentile(v, 100) == 20.0
    assert percentile([3.0], 95) == 3.0
    assert math.isnan(percentile([], 95))
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_phase_seconds_whole_intervals() -> None:
    assert phase_seconds(60, 3, 2) == 20
    assert phase_seconds(8, 3, 2) == 2  # 2.67 s -> one 2 s interval
    assert phase_seconds(1, 3, 2) == 2  # at least one interval
    assert phase_seconds(10, 2, 2) == 4  # 5 s: down to 2 intervals, never over
    assert phase_seconds(12, 2, 2) == 6


def test_ab_order_alternates() -> None:
    assert ab_order(0) == []
    assert ab_order(3) == [True, False, False, True, True, False]
    order = ab_order(4)
    assert order.count(True) == order.count(False) == 4


def test_slowdown() -> None:
    assert slowdown([1000.0, 1010.0, 990.0], [900.0, 950.0, 800.0]) == pytest.approx(0.1)
    assert slowdown([1000.0], [1000.0]) == 0.0
    assert math.isnan(slowdown([], [1.0]))


def ab_of(a: list[float], b: list[float]) -> dict[str, object]:
    rounds = [{"exporter": False, "throughput_per_second": x} for x in a]
    rounds += [{"exporter": True, "throughput_per_second": x} for x in b]
    return {
        "rounds": rounds,
        "range_a": [min(a), max(a)] if a else None,
        "range_b": [min(b), max(b)] if b else None,
    }


def test_ab_reading_from_the_rounds() -> None:
    assert ab_reading(ab_of([], [])) == "no A/B rounds"
    assert "indicative only" in ab_reading(ab_of([1000.0], [900.0]))
    assert "overlap" in ab_reading(ab_of([1000.0, 1100.0], [1050.0, 900.0]))
    assert "every B round was slower" in ab_reading(ab_of([1000.0, 1100.0], [950.0, 800.0]))
    assert "faster" in ab_reading(ab_of([800.0, 900.0], [950.0, 1000.0]))
    paced = {**ab_of([100.0, 100.0], [99.0, 99.0]), "rate": 100.0}
    assert "paced storm" in ab_reading(paced)


def row(seconds: float, rt_ns: int, cpu: float, cpus: int = 2) -> dict[str, float]:
    node = (rt_ns / 1e9 + cpu) / (seconds * cpus)
    return {
        "seconds": seconds,
        "probes_run_time_ns": rt_ns,
        "exporter_cpu_seconds": cpu,
        "total_node_ratio": node,
        "rss_bytes": 30 << 20,
    }


def test_summary_is_time_weighted() -> None:
    # A 1 s interval at 10% and a 3 s interval at 0%: the node paid 0.2 s of 8 CPU-s.
    rows = [row(1, 200_000_000, 0.0), row(3, 0, 0.0)]
    sm = summarize(rows, 2)
    assert sm.total_node == pytest.approx(0.2 / 8)  # not the plain mean 5%
    assert sm.total_core == pytest.approx(0.2 / 4)
    assert sm.peak_node == pytest.approx(0.1)
    assert sm.probes_node == pytest.approx(0.2 / 8) and sm.exporter_node == 0


def test_storm_check() -> None:
    assert storm_check(10_000, 9_500, 10_050)[0]
    assert not storm_check(5_000, 9_500, 5_010)[0]  # the probe missed spawns
    assert not storm_check(10_000, None, 20_000)[0]  # disagrees with /proc/stat
    assert storm_check(10_000, None, 10_150)[0]


def sample(i: int, t: float, rt: int, cnt: int, ticks: int, procs: int) -> Sample:
    return Sample(i, "max", t, t + 0.001, 0.0, 5_000, {7: rt, 8: 0}, {7: cnt, 8: 0},
                  {7: 1_000, 8: 1_000}, ticks, 0, 40 << 20, NodeStat(procs, 0, 0))  # fmt: skip


def test_interval_row_by_hand() -> None:
    probes = [ProbeProgram(7, "linnix_fork", "tracepoint"), ProbeProgram(8, "linnix_exec", "x")]
    a = sample(0, 100.0, 1_000_000, 10, 50, 1000)
    b = sample(1, 102.0, 41_000_000, 4010, 53, 5000)
    r = interval_row(a, b, probes, cpus=2, clk_tck=100)
    assert r["seconds"] == pytest.approx(2.0)
    assert r["probes_run_time_ns"] == 40_000_000
    assert r["fork_runs"] == 4000 and r["tasks_created"] == 4000
    assert r["exporter_cpu_seconds"] == pytest.approx(0.03)
    assert r["probes_node_ratio"] == pytest.approx(0.04 / 4)
    assert r["exporter_node_ratio"] == pytest.approx(0.03 / 4)
    assert r["total_node_ratio"] == pytest.approx(0.07 / 4)
    assert r["total_core_ratio"] == pytest.approx(0.07 / 2)


def test_json_safe() -> None:
    assert json_safe({"a": [math.nan, 1.0, (math.inf,)], "b": "x"}) == {
        "a": [None, 1.0, [None]],
        "b": "x",
    }


# ---- workload helpers ---------------------------------------------------------------


def test_parse_rate_and_workers() -> None:
    assert workload.parse_rate("1000") == 1000.0
    assert workload.parse_rate(" MAX ") is None
    for bad in ("0", "-5", "fast", "nan"):
        with pytest.raises(ValueError):
            workload.parse_rate(bad)
    assert workload.workers_for(100) == 1
    assert workload.workers_for(1000) == 2
    assert workload.workers_for(1e6) == workload.MAX_WORKERS


def test_stress_ng_yaml_ops() -> None:
    text = "metrics:\n    - stressor: fork\n      bogo-ops: 9105\n      wall-clock-time: 3.0\n"
    assert workload.parse_stress_ng_ops(text) == 9105
    assert workload.parse_stress_ng_ops("metrics:\n") is None


def test_paced_spawner_keeps_its_rate() -> None:
    """200 spawns/s for 1 s, counted by the kernel's task counter, not by the spawner."""
    stop = threading.Event()
    before = parse_proc_stat(read("/proc/stat")).processes
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    spawns, errors = workload.spawn_loop(200.0, 1, stop)
    after = parse_proc_stat(read("/proc/stat")).processes
    assert errors == 0
    assert 180 <= spawns <= 205
    assert after - before >= spawns


def test_spawner_stops_on_a_sigterm_any_thread_receives() -> None:
    """The kernel may deliver a process's SIGTERM to any of its threads. Sent to a worker
    thread (tgkill), the spawner must still stop and print its count: its main thread
    used to sit in a plain join() where the Python handler never ran."""
    p = subprocess.Popen(
        [sys.executable, "-m", "linnix_exporter.tools.workload", "--rate", "100", "--workers", "2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        while (
            len(workers := [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid])
            < 2
        ):
            assert time.monotonic() < deadline, "the spawner did not start its workers"
            time.sleep(0.05)
        time.sleep(0.3)
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.tgkill(p.pid, workers[0], signal.SIGTERM) == 0, ctypes.get_errno()
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert json.loads(out)["spawns"] > 0


def test_sh_loop_counts_and_stops() -> None:
    p = subprocess.Popen(["sh", "-c", workload.SH_LOOP], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    p.terminate()
    out, _ = p.communicate(timeout=10)
    assert int(out.strip()) > 10


# ---- report text and usage -------------------------------------------------------------


def test_verdict_text() -> None:
    run = Run(Settings(8, 2, (None,), 0.01, 0, 2, None))
    run.cpus = 2
    rep = build_report(run)
    assert rep["verdict"]["status"] == "cannot_measure"  # nothing measured
    run.interrupted = "SIGTERM"
    rep = build_report(run)
    assert rep["exit_code"] == 143
    assert "INTERRUPTED (SIGTERM)" in format_report(rep)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "2"], "--budget"),
        (["--budget", "abc"], "--budget"),
        (["--duration", "soon"], "--duration"),
        (["--rates", "100,fast"], "--rates"),
        (["--rates", ","], "--rates"),
        (["--interval", "100ms"], "--interval"),
        (["--rounds", "-1"], "--rounds"),
        (["--scrape-interval", "often"], "--scrape-interval"),
        (["--budget", "lots"], "--budget"),
    ],
)
def test_usage_errors_one_line_exit_2(args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "prove", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_no_heavy_imports_at_parser_build() -> None:
    code = (
        "import sys; from linnix_exporter.cli import build_parser; build_parser(); "
        "print(any(m.startswith(('matplotlib', 'bcc')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def rusage_seconds() -> float:
    """This process and its reaped children, as the daemon's self_usage reads itself."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def test_pid_stat_total_within_getrusage() -> None:
    """prove reads the exporter from outside (/proc/PID/stat, ticks) where the daemon
    reads itself (getrusage, µs): the same kernel accounting, so the tick figure lies
    between getrusage read before and after it, less the truncation of its four
    fields to whole ticks (under one tick each)."""
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    subprocess.run(["true"], check=True)  # a reaped child: cutime/cstime
    before = rusage_seconds()
    user, system = parse_pid_stat(read("/proc/self/stat"))
    after = rusage_seconds()
    tck = os.sysconf("SC_CLK_TCK")
    assert before - 4 / tck < (user + system) / tck <= after
    assert before > 0.3
