"""What BPF statistics cost every program run, on the real kernel.

- The cost the daemon serves, measured (BPF_PROG_TEST_RUN, statistics off/on, at start)
  and estimated (statistics held on before it starts), against the cost measured from
  outside on a real traced hook: bpftrace on raw_syscalls:sys_enter under dd.
- The daemon's statistics term against runs x the served cost, components adding up.
- auto switching to sampled under that load with a tiny budget share, and back; no
  negative value and no counter going down across the switches.

Statistics are global: another process holding them on (other test sessions on a shared
machine) makes an "off" arm on. A test that needs them to itself waits (bounded) for a
free window; the A/B also checks every "off" arm with the tracer's own run_cnt; a test
that sees runs counted while its daemon's statistics were off checks that someone else
held them then (statsprobe.HolderWatch).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from linnix_exporter.kernel.stats_cost import OwnStatsFd
from tests.kernel_helpers import Daemon, bpftool_progs, daemon
from tests.support.statsprobe import HOLDER_WAIT, HolderWatch, free_window
from tests.support.syscall_ab import syscall_ab, syscall_tracer, tracer_count

pytestmark = pytest.mark.kernel


def served_cost(*, hold_first: bool) -> tuple[float, str, list[str]]:
    """The statistics cost the daemon serves after its start-up calibration: (seconds,
    source, holders seen while it calibrated). With `hold_first` this test holds an
    enable-stats fd of its own before the daemon starts: every "off" arm of the
    daemon's off/on measurement then counts, so it must fall back to the estimate (the
    path it takes in always mode after 5 minutes, or when another agent holds
    statistics at its start)."""
    own = OwnStatsFd()
    if hold_first:
        own.on()
    else:
        # Other sessions' benches here hold statistics for minutes (three daemons at once
        # for over 2 min, seen): this test waits longer than most, within its timeout.
        free_window("the daemon's off/on calibration needs statistics to itself", timeout=300)
    try:
        with daemon("--no-probes.enabled", "--collect.interval", "1s") as d:
            with HolderWatch(exclude=frozenset({d.proc.pid})).running() as watch:
                t0 = time.monotonic()
                d.wait_ready()
                m = d.wait_tick(0)
                t1 = time.monotonic()
            assert d.stop() == 0
    finally:
        own.off()
    (key,) = [k for k in m if k.startswith("linnix_bpf_stats_run_cost_seconds{")]
    return m[key], key.split("source=")[1].rstrip("}"), watch.held_between(t0, t1)


# ~1 min a try on a machine of its own (two daemons, 18 A/B arms of 600,000 syscalls);
# other holders make it wait for free windows (each A/B round whose "off" arm was on is
# measured again, each wait bounded by HOLDER_WAIT): at worst ~16 min a try.
@pytest.mark.timeout(2400)
def test_served_cost_measured_and_estimated_against_the_syscall_tracer_ab(
    record_property: Callable[[str, object], None],
) -> None:
    """What the daemon serves as the cost of statistics, measured (off/on at start) and
    estimated (statistics held on by this test before it starts), each within a factor
    of two of what statistics add to a real tracepoint program's runs: the syscall-tracer
    A/B, taken by this test in the same try."""
    attempts = []
    for _ in range(3):  # a noisy measurement may be repeated; the bound never moves
        measured, source, holders = served_cost(hold_first=False)
        if source != "measured":
            # Someone took statistics between our free window and the calibration: the
            # daemon fell back to the estimate, as it must; that is only fair if a holder
            # was really seen.
            assert source == "estimated" and holders, (source, holders)
            continue
        estimated, e_source, _ = served_cost(hold_first=True)
        assert e_source == "estimated"
        # Each round waits (at most HOLDER_WAIT) for a free window; a round whose "off"
        # arm was on anyway is discarded, and after 4 such the A/B fails naming holders.
        ab = syscall_ab(rounds=9, count=300_000, max_discarded=4, holder_wait=HOLDER_WAIT)
        per_run = ab.per_run_ns * 1e-9
        ratios = [x / per_run if per_run > 0 else 0.0 for x in (measured, estimated)]
        attempts.append((round(measured * 1e9, 1), round(estimated * 1e9, 1), ab.pair_diffs))
        # 9 pairs of 600,000 syscalls each: the median of the paired differences moves
        # by ~10 ns between runs here (bench/results/stats_cost.txt), a few tens of ns in
        # all: a factor of two is the bound the issue sets, and what separates "measured
        # the right thing" from "measured a clock read" (~half) or "two hooks" (~twice).
        # (served measured ns, served estimated ns, A/B paired differences ns) per try:
        # in the JUnit XML (--junitxml) and with -rP.
        record_property("served_cost_tries", attempts)
        print(f"served measured, estimated ns; A/B ns/run; tries: {attempts}")
        if all(0.5 <= r <= 2.0 for r in ratios):
            return
    raise AssertionError(f"served measured, estimated ns vs A/B paired diffs, 3 tries: {attempts}")


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
    seen: list[tuple[float, dict[str, float]]] = []  # (monotonic at the scrape, metrics)

    def watch(d: Daemon, until: str, timeout: float) -> tuple[float, dict[str, float]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = d.wait_tick(seen[-1][1]["linnix_exporter_collections_total{}"] if seen else 0)
            seen.append((time.monotonic(), m))
            method = next(k for k in m if k.startswith("linnix_bpf_stats_enabled{"))
            if until in method and m[method] == 1:
                return seen[-1]
        raise AssertionError(f"no {until} in {timeout} s: {seen[-1]}")

    args = ("--collect.interval", "1s", "--bpf.stats-budget-share", "0.25")
    with daemon(*args, "--overhead.budget", "0.01") as d:
        with HolderWatch(exclude=frozenset({d.proc.pid})).running() as holders:
            d.wait_ready()
            watch(d, "enable_stats_fd", 30)
            with syscall_load():
                watch(d, "method=sampled", 60)  # the switch
                more = [watch(d, "method=sampled", 10) for _ in range(3)]
            back = watch(d, "method=enable_stats_fd", 60)
        d.stop()
        log = d.proc.stderr.read() if d.proc.stderr else ""
    for at, m in more:  # intervals wholly in sampled mode
        duty = m["linnix_bpf_stats_duty_ratio{}"]
        if duty > 0.5 + 0.1:
            # Counted all along: the daemon found the kernel counting at both ends of its
            # off part, so another process held statistics on; then switching ours cost
            # nothing: not our term. Someone must really have held them in that interval
            # (1 s, read 0.1-0.3 s after its tick; the holders are polled every 0.25 s).
            assert holders.held_between(at - 1.5, at), f"duty {duty} and no other holder"
            assert duty == pytest.approx(1.0, abs=0.05)
            assert components(m)["stats"] == 0
        else:
            # The window, 5-50% of the interval, give or take the wake-up latency and the
            # switch itself (kernel text patching): 0.044 seen for 0.05, so 0.02 of 1 s.
            assert duty >= 0.05 - 0.02
            assert components(m)["stats"] > 0
    assert back[1]["linnix_bpf_stats_duty_ratio{}"] == pytest.approx(1.0, abs=0.05)
    for _, m in seen:
        for k, v in m.items():
            # Shares of the node lie in [0, 1] across every switch (a window scaled to the
            # wrong length would push the probes' or programs' share out of it); the core
            # ratio is up to the CPUs, the budgets are flags.
            if k.split("{")[0].endswith("_ratio") and "core" not in k and "budget" not in k:
                assert 0 <= v <= 1, (k, v)
        if "linnix_overhead_ratio{}" in m:  # from the second tick on
            assert m["linnix_overhead_ratio{}"] == pytest.approx(sum(components(m).values()))
    for (_, a), (_, b) in itertools.pairwise(seen):
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
        HolderWatch(exclude=frozenset({d.proc.pid})).running() as holders,
    ):
        d.wait_ready()
        m = d.wait_tick(0)
        m = d.wait_tick(m["linnix_exporter_collections_total{}"])  # sampled from here
        ticks = [(m, tracer_count(tracer_id), time.monotonic())]
        for _ in range(4):
            m = d.wait_tick(m["linnix_exporter_collections_total{}"])
            ticks.append((m, tracer_count(tracer_id), time.monotonic()))
    seq = [t[0]["linnix_exporter_collections_total{}"] for t in ticks]
    assert seq == list(range(int(seq[0]), int(seq[0]) + 5)), "a tick was missed"
    assert all(t[0]["linnix_bpf_stats_enabled{method=sampled}"] == 1 for t in ticks)
    low = high = 0.0
    for (_, true0, _), (m, true1, at) in itertools.pairwise(ticks):
        duty = m["linnix_bpf_stats_duty_ratio{}"]
        held = holders.held_between(at - 4.5, at)
        if duty == pytest.approx(1.0, abs=0.02):
            # Counted all along: someone else held statistics on through the off part of
            # this 4 s interval (read 0.1-0.3 s after its tick), seen from /proc.
            assert held, f"duty {duty} and no other holder"
        else:
            # The window: 5-50% of the interval, ± the wake-up latency of the switch.
            assert 0.05 - 0.02 <= duty <= 0.5 + 0.05, duty
        low += duty * (true1 - true0)
        # Another holder seen during part of a sampled interval (it came or went inside
        # it) counted an unknown part of the off time: the kernel counted between the
        # window's share and every run. Without one, both ends are duty x true.
        high += (true1 - true0) if held and duty < 0.98 else duty * (true1 - true0)
    served = program_runs(ticks[-1][0], tracer_id) - program_runs(ticks[0][0], tracer_id)
    # served ~ Σ duty x true, interval by interval. The true count is read 0.1-0.3 s
    # after each tick (scrape polling, bpftool's start): over 16 s of a steady load that
    # shifts it by ~2%; each duty is one window whose load varies with this shared
    # machine (tracer run rate seen varying ~10% second to second): 25%.
    assert low * 0.75 <= served <= high * 1.25, (served, low, high)


def program_runs(m: dict[str, float], prog_id: int) -> float:
    (v,) = [
        v for k, v in m.items() if k.startswith(f"linnix_bpf_program_runs_total{{id={prog_id},")
    ]
    return v
