"""What BPF statistics cost every program run, on the real kernel.

- The calibrated cost (BPF_PROG_TEST_RUN, statistics off/on) against the cost measured
  from outside on a real traced hook: bpftrace on raw_syscalls:sys_enter under dd.
- The daemon's statistics term against runs x the served cost, components adding up.
- auto switching to sampled under that load with a tiny budget share, and back; no
  negative value and no counter going down across the switches.

Statistics are global: another process holding them on (other test sessions on a shared
machine) makes an "off" arm on. Each test first waits for the kernel to be free of other
holders; the A/B also checks every "off" arm with the tracer's own run_cnt.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest

from linnix_exporter.kernel.stats_cost import OwnStatsFd, StatsCalibrator
from tests.kernel_helpers import Daemon, bpftool_progs, daemon
from tests.support.syscall_ab import syscall_ab, syscall_tracer, tracer_count, wait_stats_free

pytestmark = pytest.mark.kernel

# Other sessions' exporters hold statistics for minutes at a time; the test's own
# timeout (pytest-timeout, 300 s) bounds the wait.
HOLDER_WAIT = 150.0


def free_of_other_holders(wait: float = HOLDER_WAIT) -> None:
    holders = wait_stats_free(wait)
    assert not holders, f"statistics held on by others for {wait:.0f} s: {holders}"


# ~30 s on a machine of its own; here other sessions' holders make it wait for free
# windows (each round whose "off" arm was on is measured again).
@pytest.mark.timeout(900)
def test_calibrated_cost_matches_the_syscall_tracer_ab() -> None:
    """The calibrated cost lies within a factor of two of what statistics add to a real
    tracepoint program's runs, measured in the same run."""
    attempts = []
    for _ in range(5):  # a noisy measurement may be repeated; the bound never moves
        free_of_other_holders(wait=500)
        cal = StatsCalibrator()
        sw = OwnStatsFd()
        before = cal.measure(sw.on, sw.off)
        # 9 pairs of 600,000 syscalls each: on this machine the median of the paired
        # differences then moves by ~10 ns between runs (bench/results/stats_cost.txt).
        ab = syscall_ab(rounds=9, count=300_000)
        after = cal.measure(sw.on, sw.off)
        assert before is not None and after is not None, "statistics held on by others"
        calibrated = statistics.median([before.cost_ns, after.cost_ns])
        ratio = calibrated / ab.per_run_ns if ab.per_run_ns > 0 else float("inf")
        attempts.append((round(calibrated, 1), round(ab.per_run_ns, 1), ab.pair_diffs))
        if 0.5 <= ratio <= 2.0:
            break
    else:
        raise AssertionError(f"calibrated vs A/B ns/run, 5 tries: {attempts}")
    assert calibrated > 0


@contextlib.contextmanager
def syscall_load() -> Iterator[int]:
    """bpftrace on every syscall plus a dd bs=1 loop: ~10^6 tracer runs a second."""
    with syscall_tracer() as prog_id:
        dd = subprocess.Popen(
            ["dd", "if=/dev/zero", "of=/dev/null", "bs=1"], stderr=subprocess.DEVNULL
        )
        try:
            yield prog_id
        finally:
            dd.kill()
            dd.wait()


def components(m: dict[str, float]) -> dict[str, float]:
    return {
        c: m[f"linnix_overhead_component_ratio{{component={c}}}"]
        for c in ("probes", "exporter", "stats")
    }


def test_stats_term_is_runs_times_the_served_cost() -> None:
    # No wait for other holders: with them the cost is estimated (source="estimated"),
    # and the term is still runs x the served cost.
    seq = "linnix_exporter_collections_total{}"
    with (
        syscall_load() as tracer_id,
        daemon("--collect.interval", "2s", "--bpf.stats-mode", "always") as d,
    ):
        d.wait_ready()
        ticks = [d.wait_tick(d.wait_tick(0)[seq])]  # past start-up's first short interval
        p0 = bpftool_progs()
        for _ in range(5):
            ticks.append(d.wait_tick(ticks[-1][seq]))
        p1 = bpftool_progs()
    assert p1[tracer_id].get("run_cnt", 0) > p0[tracer_id].get("run_cnt", 0)
    for a, b in itertools.pairwise(ticks):
        assert b[seq] == a[seq] + 1, "a tick was missed between two scrapes"
        (cost,) = [v for k, v in b.items() if k.startswith("linnix_bpf_stats_run_cost_seconds{")]
        runs = b["linnix_bpf_runs_total{}"] - a["linnix_bpf_runs_total{}"]
        c = components(b)
        interval, cpus = b["linnix_overhead_interval_seconds{}"], b["linnix_node_cpus{}"]
        assert c["stats"] == pytest.approx(runs * cost / (interval * cpus), rel=1e-9)
        overhead = (
            b["linnix_bpf_stats_overhead_seconds_total{}"]
            - a["linnix_bpf_stats_overhead_seconds_total{}"]
        )
        assert overhead == pytest.approx(runs * cost, rel=1e-9)
        assert b["linnix_overhead_ratio{}"] == pytest.approx(sum(c.values()), rel=1e-9)
        # The calibrated cost: a few tens of ns here, never 0.
        assert 5e-9 < cost < 1e-6
    # The runs are the kernel's, not ours to invent: bpftool read every program's run_cnt
    # (programs present in both reads) just after the first and the last of five 2 s
    # ticks were served. Its window is shifted from the ticks' by the scrape polling
    # and bpftool's start (0.1-0.4 s at each end of 10 s, seen), while other sessions'
    # load moves the syscall rate: they agree within 15%. One 2 s interval alone missed
    # by 31% here: too short for the shift.
    runs = ticks[-1]["linnix_bpf_runs_total{}"] - ticks[0]["linnix_bpf_runs_total{}"]
    both = p0.keys() & p1.keys()
    bpftool_runs = sum(p1[i].get("run_cnt", 0) - p0[i].get("run_cnt", 0) for i in both)
    assert runs == pytest.approx(bpftool_runs, rel=0.15)


def counters(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k.split("{")[0].endswith("_total")}


def test_auto_samples_under_load_and_comes_back() -> None:
    """Budget 1%, share 0.25: statistics may cost 0.25% of the node. ~10^6 tracer runs/s
    x ~70 ns is ~3.5% of this 2-core node: auto must sample. Without the load it must come
    back under 0.2%: the node's other programs stay under that even when other sessions'
    exporters count fork storms here (~5x10^4 runs/s x 70 ns, 0.17%), which a smaller
    share would not leave room for. Other holders need not be gone: sampled mode then
    sees statistics counted while ours are off and counts the whole interval."""
    seen: list[dict[str, float]] = []

    def watch(d: Daemon, until: str, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = d.wait_tick(seen[-1]["linnix_exporter_collections_total{}"] if seen else 0)
            seen.append(m)
            method = next(k for k in m if k.startswith("linnix_bpf_stats_enabled{"))
            if until in method and m[method] == 1:
                return m
        raise AssertionError(f"no {until} in {timeout} s: {seen[-1]}")

    args = ("--collect.interval", "1s", "--bpf.stats-budget-share", "0.25")
    with daemon(*args, "--overhead.budget", "0.01") as d:
        d.wait_ready()
        watch(d, "enable_stats_fd", 30)
        with syscall_load():
            watch(d, "method=sampled", 60)  # the switch
            more = [watch(d, "method=sampled", 10) for _ in range(3)]
        back = watch(d, "method=enable_stats_fd", 60)
        d.stop()
        log = d.proc.stderr.read() if d.proc.stderr else ""
    for m in more:  # intervals wholly in sampled mode
        duty = m["linnix_bpf_stats_duty_ratio{}"]
        if duty > 0.5 + 0.1:
            # Counted all along: another process held statistics on while ours were off
            # (other sessions here). Then switching ours cost nothing: not our term.
            assert duty == pytest.approx(1.0, abs=0.05)
            assert components(m)["stats"] == 0
        else:
            # The window, 5-50% of the interval, give or take the wake-up latency and the
            # switch itself (kernel text patching): 0.044 seen for 0.05, so 0.02 of 1 s.
            assert duty >= 0.05 - 0.02
            assert components(m)["stats"] > 0
    assert back["linnix_bpf_stats_duty_ratio{}"] == pytest.approx(1.0, abs=0.05)
    for m in seen:
        assert all(v >= 0 for v in m.values()), "a negative value"
        if "linnix_overhead_ratio{}" in m:  # from the second tick on
            assert m["linnix_overhead_ratio{}"] == pytest.approx(sum(components(m).values()))
    for a, b in itertools.pairwise(seen):
        down = {k: (a[k], v) for k, v in counters(b).items() if k in a and v < a[k]}
        assert not down, f"counters went down: {down}"
    modes = [
        json.loads(line).get("mode") for line in log.splitlines() if '"bpf stats mode"' in line
    ]
    assert modes[:2] == ["sampled", "always"], log[-2000:]


def test_sampled_counters_against_the_true_count() -> None:
    """In sampled mode the kernel counts runs only in the windows: a user's rate() of a
    program's runs is the true rate x the duty. The true count is the tracer's own map
    (it counts every syscall, statistics on or off). 4 s intervals, duty at its floor
    under this load (0.25% share against ~3.5%): windows of ~0.2-0.3 s. With another
    holder keeping statistics on, every run is counted and the duty reads 1: the same
    relation holds, with d = 1."""
    args = ("--collect.interval", "4s", "--bpf.stats-mode", "sampled")
    with (
        syscall_load() as tracer_id,
        daemon(*args, "--bpf.stats-budget-share", "0.25") as d,
    ):
        d.wait_ready()
        m = d.wait_tick(0)
        m = d.wait_tick(m["linnix_exporter_collections_total{}"])  # sampled from here
        ticks = [(m, tracer_count(tracer_id))]
        for _ in range(4):
            m = d.wait_tick(m["linnix_exporter_collections_total{}"])
            ticks.append((m, tracer_count(tracer_id)))
    (first, true0), (last, true1) = ticks[0], ticks[-1]
    seq = [t[0]["linnix_exporter_collections_total{}"] for t in ticks]
    assert seq == list(range(int(seq[0]), int(seq[0]) + 5)), "a tick was missed"

    def served_runs(m: dict[str, float]) -> float:
        return program_runs(m, tracer_id)

    served = served_runs(last) - served_runs(first)
    duty = statistics.fmean(t[0]["linnix_bpf_stats_duty_ratio{}"] for t in ticks[1:])
    assert 0.05 - 0.02 <= duty <= 0.5 + 0.05 or duty == pytest.approx(1.0, abs=0.02)
    assert all(t[0]["linnix_bpf_stats_enabled{method=sampled}"] == 1 for t in ticks)
    # served ~ duty x true. The true count is read 0.1-0.3 s after each tick (scrape
    # polling, bpftool's start): over 16 s of a steady load that shifts it by ~2%; the
    # duty is the mean of four windows whose load varies with this shared machine
    # (tracer run rate seen varying ~10% second to second): 25%.
    assert served == pytest.approx(duty * (true1 - true0), rel=0.25)


def program_runs(m: dict[str, float], prog_id: int) -> float:
    (v,) = [
        v for k, v in m.items() if k.startswith(f"linnix_bpf_program_runs_total{{id={prog_id},")
    ]
    return v
