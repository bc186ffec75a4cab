"""`linnix-exporter prove` on the real kernel: the figures it reports are checked against
bpftool read during the same run, its verdicts and exit codes, and that it leaves no
program or process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_helpers import REPO, bpftool_progs, proc_stat_cpu_seconds

pytestmark = pytest.mark.kernel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def prove(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "linnix_exporter", "prove", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def stray_processes() -> list[str]:
    """Live processes a prove run could have left: storms and exporters it started."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry.name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        cmd = b" ".join(argv).decode(errors="replace")
        if state == "Z":
            continue
        # prove's own command lines only: other kernel work may share the machine.
        if (
            "linnix_exporter.tools.workload" in cmd
            or (cmd.startswith("stress-ng") and "linnix-prove-" in cmd)
            or cmd.startswith("sh -c n=0; trap")
            or (cmd.startswith(sys.executable) and "linnix_exporter run" in cmd
                and "--log.format json" in cmd)
        ):  # fmt: skip
            found.append(f"{entry.name}: {cmd}")
    return found


def exporter_children(parent: int) -> list[int]:
    """The exporters a prove process started: its children running `linnix_exporter run`."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    found = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if b"linnix_exporter\0run" in f.read():
                    found.append(k)
        except OSError:
            continue
    return found


class BpftoolPoller:
    """bpftool prog show, again and again, each read stamped with the monotonic clock
    before and after (CLOCK_MONOTONIC is system-wide: prove's stamps compare). With
    `parent` (prove's pid), also the CPU of the exporter it runs, read by the test from
    /proc/PID/stat (utime+stime+cutime+cstime in clock ticks), stamped the same way."""

    def __init__(self, parent: int | None = None) -> None:
        self.parent = parent
        self.reads: list[tuple[float, float, dict[int, int]]] = []
        self.exporter_reads: list[tuple[float, float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tck = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            t0 = time.monotonic()
            progs = bpftool_progs()
            t1 = time.monotonic()
            self.reads.append((t0, t1, {i: int(p.get("run_time_ns", 0)) for i, p in progs.items()}))
            if self.parent is not None:
                t0 = time.monotonic()
                ticks = {}
                for pid in exporter_children(self.parent):
                    with contextlib.suppress(OSError):
                        ticks[pid] = round(proc_stat_cpu_seconds(pid) * tck)
                self.exporter_reads.append((t0, time.monotonic(), ticks))
            self._stop.wait(0.05)

    def __enter__(self) -> BpftoolPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# The default budget (1% of the node), not a generous one: the verdict must follow from
# the figures, which the test bounds from its own readings (a 50% budget passed whatever
# the figures were).
BUDGET = "1%"


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, BpftoolPoller, Path, int]:
    png = tmp_path_factory.mktemp("prove") / "overhead.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "linnix_exporter", "prove",
         "--json",
         "--duration", "8s",
         "--rates", "200,max",
         "--rounds", "1",
         "--ab-round-seconds", "2",
         "--budget", BUDGET,
         "--scrape-interval", "2s",
         "--plot", str(png)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        with BpftoolPoller(proc.pid) as poller:
            out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 1), err[-2000:]  # pass or fail: the test judges which
    return json.loads(out), poller, png, proc.returncode


def probe_ids(rep: dict[str, Any]) -> list[int]:
    return [p["id"] for p in rep["exporter"]["probe_programs"]]


Read = tuple[float, float, dict[int, int]]


def around(reads: list[Read], sample: dict[str, Any]) -> tuple[dict[int, int], dict[int, int]]:
    """The test's last read before a prove sample and its first read after it."""
    before = [r for r in reads if r[1] <= sample["monotonic"]]
    after = [r for r in reads if r[0] >= sample["monotonic_end"]]
    assert before and after, "the poller did not read on both sides of the sample"
    return before[-1][2], after[0][2]


def outside_bounds(rep: dict[str, Any], poller: BpftoolPoller) -> dict[str, tuple[float, float]]:
    """What the probes' run time (ns, bpftool) and the exporter's CPU (s, /proc/PID/stat
    read by the test) grew by between prove's first and last samples: read before the
    first and after the last sample, and after the first and before the last. Both are
    cumulative counters, so prove's own figures must lie in between, exactly."""
    first, last = rep["samples"][0], rep["samples"][-1]
    ids = probe_ids(rep)
    (b0, a0), (b1, a1) = around(poller.reads, first), around(poller.reads, last)
    probes = (
        float(sum(b1[i] - a0[i] for i in ids)),
        float(sum(a1[i] - b0[i] for i in ids)),
    )
    (e0, f0), (e1, f1) = around(poller.exporter_reads, first), around(poller.exporter_reads, last)
    (pid,) = set(e0) & set(f1)  # the one exporter, alive from the first sample to the last
    tck = rep["host"]["clk_tck"]
    exporter = ((e1[pid] - f0[pid]) / tck, (f1[pid] - e0[pid]) / tck)
    return {"probes_ns": probes, "exporter_s": exporter}


def test_verdict_against_outside_bounds(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    rep, poller, _, code = proved
    # The mean the verdict judges, recomputed from the test's own readings over the same
    # samples: bpftool for the probes, /proc/PID/stat for the exporter.
    b = outside_bounds(rep, poller)
    denom = rep["summary"]["seconds"] * os.sysconf("SC_NPROCESSORS_ONLN")
    # The statistics term (issue 11) is prove's runs x calibrated cost, added as prove
    # serves it (it is in both bounds, so it cancels here: the cost itself is checked
    # against a syscall-tracer A/B, in the daemon, in test_stats_cost.py).
    stats = rep["summary"]["stats_node_ratio"]
    lo = (b["probes_ns"][0] / 1e9 + b["exporter_s"][0]) / denom + stats
    hi = (b["probes_ns"][1] / 1e9 + b["exporter_s"][1]) / denom + stats
    v = rep["verdict"]
    assert lo <= v["mean_node_ratio"] <= hi, (lo, v, hi)
    assert lo > 0
    # The verdict follows from the outside bounds where they decide it: under the budget
    # on both sides passes, over it on both sides fails; a budget between the bounds is
    # the readings' own uncertainty (either verdict then, as long as it matches the mean).
    assert v["budget_ratio"] == pytest.approx(0.01)
    if hi <= v["budget_ratio"]:
        assert (v["status"], code, rep["exit_code"]) == ("pass", 0, 0), (lo, v, hi)
    elif lo > v["budget_ratio"]:
        assert (v["status"], code, rep["exit_code"]) == ("fail", 1, 1), (lo, v, hi)
    else:
        passed = v["mean_node_ratio"] <= v["budget_ratio"]
        assert (v["status"], code) == (("pass", 0) if passed else ("fail", 1)), v
    assert sorted(p["name"] for p in rep["exporter"]["probe_programs"]) == sorted(
        ["linnix_fork", "linnix_exec", "linnix_exit", "linnix_free"]
    )
    # The stats iterator is held by the exporter too, but left out of the kernel time.
    assert rep["exporter"]["excluded_program_ids"]
    assert not set(rep["exporter"]["excluded_program_ids"]) & set(probe_ids(rep))


def test_samples_bracket_bpftool(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    """Each bpftool read lies between prove's samples taken just before and just after
    it, for every probe program (counters only grow)."""
    rep, poller, _, _ = proved
    samples = rep["samples"]
    ids = probe_ids(rep)
    checked = 0
    for t0, t1, bt in poller.reads:
        before = [s for s in samples if s["monotonic_end"] <= t0]
        after = [s for s in samples if s["monotonic"] >= t1]
        if not before or not after:
            continue
        lo, hi = before[-1], after[0]
        for i in ids:
            assert lo["run_time_ns"][str(i)] <= bt[i] <= hi["run_time_ns"][str(i)], (i, t0)
        checked += 1
    assert checked >= 10, f"only {checked} bpftool reads fell between two samples"


def test_total_run_time_agrees_with_bpftool(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    """Σ Δrun_time of the probes over the run, prove vs bpftool over the same interval
    (the bpftool reads nearest to prove's first and last samples): within 1%."""
    rep, poller, _, _ = proved
    ids = probe_ids(rep)
    first, last = rep["samples"][0], rep["samples"][-1]

    def nearest(t: float) -> dict[int, int]:
        return min(poller.reads, key=lambda r: abs((r[0] + r[1]) / 2 - t))[2]

    b0, b1 = nearest(first["monotonic"]), nearest(last["monotonic"])
    ours = sum(last["run_time_ns"][str(i)] - first["run_time_ns"][str(i)] for i in ids)
    theirs = sum(b1[i] - b0[i] for i in ids)
    assert ours > 0
    assert abs(ours - theirs) <= 0.01 * ours, (ours, theirs)
    # And the intervals add up to the same total, as does the summary.
    assert sum(r["probes_run_time_ns"] for r in rep["intervals"]) == ours
    assert rep["summary"]["probes_run_time_ns"] == ours


def test_exporter_cpu_against_the_tests_own_reading(
    proved: tuple[Any, BpftoolPoller, Path, int],
) -> None:
    """prove's exporter CPU over the run lies between the test's /proc/PID/stat reads of
    the same process around its first and last samples (both in whole clock ticks of
    one cumulative counter: no tolerance), and its intervals add up to it."""
    rep, poller, _, _ = proved
    lo, hi = outside_bounds(rep, poller)["exporter_s"]
    whole = rep["summary"]["exporter_cpu_seconds"]
    assert lo - 1e-9 <= whole <= hi + 1e-9, (lo, whole, hi)
    assert sum(r["exporter_cpu_seconds"] for r in rep["intervals"]) == pytest.approx(whole)


def test_json_fields_consistent(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    rep, _, _, _ = proved
    cpus = rep["host"]["online_cpus"]
    assert cpus == os.sysconf("SC_NPROCESSORS_ONLN")
    for key in ("schema", "settings", "exporter", "samples", "intervals", "phases", "ab"):
        assert key in rep
    for r in rep["intervals"]:
        assert r["total_node_ratio"] == pytest.approx(r["total_core_ratio"] / cpus)
        # The three terms (issue 11): the stats term is the runs of every program x the
        # calibrated cost, while the exporter's own statistics are on.
        assert r["total_node_ratio"] == pytest.approx(
            r["probes_node_ratio"] + r["exporter_node_ratio"] + r["stats_node_ratio"]
        )
        assert r["stats_node_ratio"] == pytest.approx(r["stats_seconds"] / (r["seconds"] * cpus))
        assert r["probes_node_ratio"] == pytest.approx(
            r["probes_run_time_ns"] / 1e9 / (r["seconds"] * cpus)
        )
        assert 1.9 <= r["seconds"] <= 3.0
        assert r["rss_bytes"] > 10 * 2**20
    s = rep["samples"]
    sm = rep["summary"]
    assert sm["seconds"] == pytest.approx(s[-1]["monotonic"] - s[0]["monotonic"])
    assert sm["total_node_ratio"] == pytest.approx(
        (sm["probes_run_time_ns"] / 1e9 + sm["exporter_cpu_seconds"]) / (sm["seconds"] * cpus)
        + sm["stats_node_ratio"]
    )
    assert sm["peak_node_ratio"] == max(r["total_node_ratio"] for r in rep["intervals"])
    # Storms were real: the paced one reached its rate, the fork probe saw every spawn.
    paced, storm = rep["phases"]
    assert paced["achieved_per_second"] == pytest.approx(200, rel=0.1)
    for ph in (paced, storm):
        assert ph["storm_seen"] and ph["fork_runs"] >= ph["spawns"] * 0.9
        assert ph["fork_runs"] == pytest.approx(ph["tasks_created"], rel=0.05, abs=200)
    assert storm["achieved_per_second"] > 1000
    # A/B: one pair, in order B then A; throughput figures present.
    rounds = rep["ab"]["rounds"]
    assert [r["exporter"] for r in rounds] == [True, False]
    assert all(r["throughput_per_second"] > 500 for r in rounds)
    assert rep["ab"]["slowdown"] == pytest.approx(
        1 - rounds[0]["throughput_per_second"] / rounds[1]["throughput_per_second"]
    )
    assert rep["exporter"]["exit_codes"] == [0]
    # /metrics was served all along (every 2 s over ~8 s of storm + the A/B round).
    assert rep["exporter"]["scrapes"] >= 4
    assert rep["exporter"]["scrape_errors"] == []


def test_nothing_left_behind(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    rep, _, _, _ = proved
    left = set(bpftool_progs()) & {*probe_ids(rep), *rep["exporter"]["excluded_program_ids"]}
    assert not left
    assert stray_processes() == []


def test_plot_is_png(proved: tuple[Any, BpftoolPoller, Path, int]) -> None:
    _, _, png, _ = proved
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 300 and img.shape[1] > 600


def test_fails_a_tiny_budget() -> None:
    r = prove("--duration", "4s", "--rates", "max", "--rounds", "0", "--budget", "0.0001%")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "VERDICT: FAIL" in r.stdout
    assert "Time(s) |" in r.stdout
    assert stray_processes() == []


def test_stats_off_cannot_measure() -> None:
    r = prove("--duration", "2s", "--rounds", "0", "--exporter-arg=--bpf.stats-method=off")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "cannot measure" in r.stderr and "statistics are off" in r.stderr
    assert stray_processes() == []


def test_sigint_reports_partial_and_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "linnix_exporter", "prove", "--json", "--duration", "60s",
         "--rates", "max", "--rounds", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    try:
        # Wait for a few samples of the storm (progress lines on stderr, not a TTY).
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "rate max" in line:
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    rep = json.loads(out)
    assert rep["verdict"]["status"] == "interrupted"
    assert rep["verdict"]["reason"] == "SIGINT"
    assert len(rep["intervals"]) >= 1
    assert not set(bpftool_progs()) & set(probe_ids(rep))
    assert stray_processes() == []
