"""The Prometheus sink on hand-built ticks: names, values, histogram, promtool lint."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_om
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from linnix_exporter.figures import PushStatus, lifetime_buckets
from linnix_exporter.owners import OwnerView
from linnix_exporter.rates import compute_rates
from linnix_exporter.sinks.prometheus import TickCollector
from linnix_exporter.snapshot import (
    LIFETIME_SLOTS,
    CommCounts,
    Hook,
    HookCost,
    Hooks,
    NodeMemory,
    Owner,
    StatsState,
)
from linnix_exporter.tick import HOOKS as HOOKS_NAME
from linnix_exporter.tick import Tick
from linnix_exporter.topk import TopKView
from tests.fixtures import probes, prog, snap

CILIUM = Owner(600, "cilium-agent", "c" * 64, "kube-system", "cilium-x7k2p")


# Program 2 on a tracepoint and a cgroup, program 3 (unlisted) on a uprobe; the costs
# of a measured, an unsupported and a failed kind.
HOOKS = Hooks(
    (
        Hook(2, "tracepoint", "sys_enter", pid=600),
        Hook(2, "cgroup", "cgroup_inet_ingress cgroup_id=234", link_id=5, cgroup_id=234),
        Hook(3, "uprobe", "/usr/bin/x+0x10", pid=103),
    ),
    (
        HookCost("uprobe", "measured", cost_ns=16_000.0),
        HookCost("kprobe", "unsupported", reason="no kprobe PMU"),
        HookCost("tracepoint", "failed", reason="statistics switched mid-arm"),
    ),
)


def make_tick() -> Tick:
    p_ours = prog(1, 51_000_000, 110, ours=True, name="linnix_fork", jited=292, map_ids=(7, 9))
    p_ours = p_ours._replace(map_memory_bytes=4096 + 1024)
    p_big = prog(
        2,
        150_000_000,
        40,
        name="cilium_big",
        owners=(CILIUM, Owner(700, "bpftool")),
        jited=1000,
        map_ids=(9, 11),
        map_memory=1024 + 65536,
    )
    p_small = prog(3, 1_000, 1, name="small", jited=100, map_ids=(11,), map_memory=65536)
    # Maps 7, 9, 11 are used by programs; 12 by none (a map only a process holds).
    memlock = {7: 4096, 9: 1024, 11: 65536, 12: 8}
    # Sums over programs: 5120 + 66560 + 65536 bytes, 2 + 2 + 1 maps.
    memory = NodeMemory(70664, 4, 292 + 1000 + 100, 264_241_152, memlock, 137216, 5)
    prev = snap(
        100.0,
        [prog(1, 1_000_000, 10, ours=True), prog(2, 0, 0), prog(3, 0, 0)],
        cpu=1.0,
        ours=frozenset({1}),
    )
    comms = {"bash": CommCounts(7, 3, 9, 2_500_000_000), "make": CommCounts(1, 1, 1, 0)}
    cur = snap(
        110.0,
        [p_ours, p_big, p_small],
        cpu=1.03,
        ours=frozenset({1}),
        probe_counts=probes(42, comms, slots={20: 2, 30: 1}, life_ns=3_000_000_000),
        stats=StatsState(True, "enable_stats_fd", 110.0, "always", 100.0, "measured"),
        memory=memory,
    )
    cur = dataclasses.replace(cur, hooks=HOOKS)
    rates = compute_rates(prev, cur)
    listed = {p.identity: (p.run_time_ns, p.run_cnt, p.recursion_misses) for p in (p_ours, p_big)}
    return Tick(
        snapshot=cur,
        rates=rates,
        programs=TopKView(listed=listed, rest=(1_000, 1, 0), rest_keys=1),
        comms=TopKView(listed={"bash": (7, 3, 9, 2_500_000_000)}, rest=(1, 1, 1, 0), rest_keys=1),
        budget_ratio=0.01,
        collect_seconds=0.002,
        seq=2,
        bpf_run_time_ns_total=150_051_000,
        bpf_runs_total=141,
        program_by_key={p.identity: p for p in cur.programs},
        collector_success={"self": True, "probes": True, "programs": True, "owners": True},
        collector_seconds={"self": 1e-5, "probes": 2e-4, "programs": 3e-4, "owners": 0.0},
        # Owners by hand: agent (pid 101) holds program 1, cilium-agent (pid 600, the
        # lowest of 600 and 700) program 2, agent (pid 103) program 3. Listed: agent and
        # cilium; nothing unlisted. Over the interval agent ran 50 ms + 1 us, cilium 150 ms.
        owners=OwnerView(
            run_time_ns={("agent", "", ""): 51_001_000, CILIUM_KEY: 150_000_000},
            rest_run_time_ns=0,
            interval_ns={("agent", "", ""): 50_001_000, CILIUM_KEY: 150_000_000},
            rest_interval_ns=0,
            map_memory_bytes={("agent", "", ""): 4096 + 1024 + 65536, CILIUM_KEY: 1024 + 65536},
            jited_bytes={("agent", "", ""): 392, CILIUM_KEY: 1000},
            rest_map_memory_bytes=0,
            rest_jited_bytes=0,
        ),
        bpf_budget_ratio=0.05,
    )


CILIUM_KEY = ("cilium-agent", "kube-system", "cilium-x7k2p")


def scrape(tick: Tick | None) -> dict[str, float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TickCollector(lambda: tick, lambda: 3))
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_values_match_the_tick() -> None:
    m = scrape(make_tick())
    # (50 ms probes + 30 ms CPU + 141 runs x 100 ns stats) / (10 s x 2 CPUs)
    assert m["linnix_overhead_ratio{}"] == pytest.approx((0.05 + 0.03 + 141e-7) / 20)
    assert m["linnix_overhead_component_ratio{component=stats}"] == pytest.approx(141e-7 / 20)
    assert m["linnix_bpf_stats_run_cost_seconds{source=measured}"] == pytest.approx(100e-9)
    assert m["linnix_bpf_stats_duty_ratio{}"] == 1.0
    assert m["linnix_overhead_core_ratio{}"] == pytest.approx((0.05 + 0.03 + 141e-7) / 10)
    assert m["linnix_overhead_budget_ratio{}"] == 0.01
    assert m["linnix_probes_cpu_ratio{}"] == pytest.approx(0.0025)
    assert m["linnix_bpf_cpu_ratio{}"] == pytest.approx((0.05 + 0.15 + 0.000001) / 20)
    assert m["linnix_exporter_collect_errors_total{}"] == 3
    assert m["linnix_node_cpus{}"] == 2
    assert m["linnix_exporter_collector_success{collector=probes}"] == 1
    assert m["linnix_exporter_collector_duration_seconds{collector=programs}"] == 3e-4
    big = "id=2,name=cilium_big,ours=false,tag=0000000000000002,type=tracepoint"
    assert m[f"linnix_bpf_program_run_time_seconds_total{{{big}}}"] == pytest.approx(0.15)
    assert m[f"linnix_bpf_program_runs_total{{{big}}}"] == 40
    assert m[f"linnix_bpf_program_cpu_ratio{{{big}}}"] == pytest.approx(0.0075)
    other = "id=,name=[other],ours=false,tag=,type="
    assert m[f"linnix_bpf_program_runs_total{{{other}}}"] == 1
    assert m[f"linnix_bpf_program_cpu_ratio{{{other}}}"] == pytest.approx(1e-6 / 20)
    assert m["linnix_probes_run_time_seconds_total{}"] == pytest.approx(0.051)
    owner = "container_id=,id=1,name=linnix_fork,namespace=,owner_comm=agent,owner_pid=101,pod="
    assert m[f"linnix_bpf_program_owner_info{{{owner}}}"] == 1
    assert m["linnix_process_forks_total{}"] == 42
    assert m["linnix_process_comm_exits_total{comm=bash}"] == 9
    assert m["linnix_exited_task_cpu_seconds_total{comm=bash}"] == pytest.approx(2.5)
    assert m["linnix_process_comm_forks_total{comm=[other]}"] == 1
    assert m["linnix_exporter_cpu_seconds_total{mode=user}"] == pytest.approx(1.03 * 0.75)
    assert m["linnix_bpf_stats_enabled{method=enable_stats_fd}"] == 1


def test_pod_owner_memory_and_budget_figures() -> None:
    m = scrape(make_tick())
    cilium = (
        f"container_id={'c' * 64},id=2,name=cilium_big,namespace=kube-system,"
        "owner_comm=cilium-agent,owner_pid=600,pod=cilium-x7k2p"
    )
    assert m[f"linnix_bpf_program_owner_info{{{cilium}}}"] == 1
    both = [k for k in m if k.startswith("linnix_bpf_program_owner_info{") and ",id=2," in k]
    assert len(both) == 2  # bpftool (pid 700) holds it too: every holder is listed
    big = "id=2,name=cilium_big,ours=false,tag=0000000000000002,type=tracepoint"
    assert m[f"linnix_bpf_program_map_memory_bytes{{{big}}}"] == 66560
    assert m[f"linnix_bpf_program_maps{{{big}}}"] == 2
    assert m[f"linnix_bpf_program_jited_bytes{{{big}}}"] == 1000
    other = "id=,name=[other],ours=false,tag=,type="
    # program 3 is not listed: the "[other]" row holds its memory.
    assert m[f"linnix_bpf_program_map_memory_bytes{{{other}}}"] == 65536
    assert m[f"linnix_bpf_program_maps{{{other}}}"] == 1
    assert m[f"linnix_bpf_program_jited_bytes{{{other}}}"] == 100
    assert m["linnix_bpf_map_memory_bytes{}"] == 70664
    assert m["linnix_bpf_maps{}"] == 4
    assert m["linnix_bpf_jited_bytes{}"] == 1392
    assert m["linnix_bpf_jit_limit_bytes{}"] == 264_241_152
    assert m["linnix_bpf_budget_ratio{}"] == 0.05
    ck = "namespace=kube-system,owner_comm=cilium-agent,pod=cilium-x7k2p"
    assert m[f"linnix_bpf_owner_run_time_seconds_total{{{ck}}}"] == pytest.approx(0.15)
    assert m[f"linnix_bpf_owner_cpu_ratio{{{ck}}}"] == pytest.approx(0.15 / 20)
    assert m[f"linnix_bpf_owner_map_memory_bytes{{{ck}}}"] == 66560
    assert m[f"linnix_bpf_owner_jited_bytes{{{ck}}}"] == 1000
    agent = "namespace=,owner_comm=agent,pod="
    assert m[f"linnix_bpf_owner_cpu_ratio{{{agent}}}"] == pytest.approx(0.050001 / 20)
    rest = "namespace=,owner_comm=[other],pod="
    assert m[f"linnix_bpf_owner_run_time_seconds_total{{{rest}}}"] == 0


def test_memory_unknown_is_absent_not_zero() -> None:
    t = make_tick()
    t = dataclasses.replace(t, snapshot=dataclasses.replace(t.snapshot, memory=None))
    names = {k.split("{")[0] for k in scrape(t)}
    for absent in (
        "linnix_bpf_map_memory_bytes",
        "linnix_bpf_program_map_memory_bytes",
        "linnix_bpf_owner_map_memory_bytes",
        "linnix_bpf_jit_limit_bytes",
    ):
        assert absent not in names
    assert "linnix_bpf_owner_cpu_ratio" in names


def test_lifetime_histogram_buckets() -> None:
    m = scrape(make_tick())
    # Slot 20 holds [2^20, 2^21) ns, so it is counted from le=2^21 ns = 0.002097152 s.
    assert m["linnix_process_lifetime_seconds_bucket{le=0.001048576}"] == 0
    assert m["linnix_process_lifetime_seconds_bucket{le=0.002097152}"] == 2
    assert m["linnix_process_lifetime_seconds_bucket{le=+Inf}"] == 3
    assert m["linnix_process_lifetime_seconds_count{}"] == 3
    assert m["linnix_process_lifetime_seconds_sum{}"] == pytest.approx(3.0)


def test_lifetime_buckets_fold_extremes() -> None:
    slots = [0] * LIFETIME_SLOTS
    slots[3] = 5  # 8 ns: below the first bucket, still counted in it
    slots[60] = 1  # beyond the last bucket: only in +Inf
    b = dict(lifetime_buckets(tuple(slots)))
    assert b[2**17 / 1e9] == 5
    assert b[float("inf")] == 6


def test_first_tick_has_no_ratios_and_no_tick_is_safe() -> None:
    t = make_tick()
    first = Tick(**{**{f: getattr(t, f) for f in t.__dataclass_fields__}, "rates": None})
    m = scrape(first)
    assert "linnix_overhead_ratio{}" not in m
    assert "linnix_overhead_budget_ratio{}" in m
    names = {k.split("{")[0] for k in scrape(None)}
    assert names == {"linnix_exporter_build_info", "linnix_exporter_collect_errors_total"}


def test_promtool_check_metrics() -> None:
    assert shutil.which("promtool"), "promtool missing: make setup installs Debian's prometheus"
    reg = CollectorRegistry(auto_describe=False)
    tick = make_tick()
    reg.register(TickCollector(lambda: tick, lambda: 0))
    p = subprocess.run(
        ["promtool", "check", "metrics"],
        input=generate_latest(reg),
        capture_output=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()


def test_openmetrics_encoding() -> None:
    reg = CollectorRegistry(auto_describe=False)
    tick = make_tick()
    reg.register(TickCollector(lambda: tick, lambda: 0))
    text = generate_om(reg).decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE linnix_process_forks counter" in text
    assert "linnix_process_forks_total 42.0" in text


def test_otlp_self_metrics_only_when_pushing() -> None:
    tick = make_tick()
    assert not any("otlp" in k for k in scrape(tick))  # OTLP off: no such series
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TickCollector(lambda: tick, lambda: 0, lambda: PushStatus(7, 2, 1234.5)))
    body = generate_latest(reg).decode()
    assert 'linnix_exporter_otlp_exports_total{result="ok"} 7.0' in body
    assert 'linnix_exporter_otlp_exports_total{result="failed"} 2.0' in body
    assert "linnix_exporter_otlp_last_success_timestamp_seconds 1234.5" in body


def test_version_follows_every_input_of_the_figures() -> None:
    """The HTTP server caches one encoded body per version: the version must change with
    each input collect() reads (the tick, the error count, the push status), and only then."""
    ticks = [make_tick()]
    errors = [0]
    pushes: list[PushStatus | None] = [None]
    c = TickCollector(lambda: ticks[-1], lambda: errors[-1], lambda: pushes[-1])
    seen = {c.version()}
    assert c.version() in seen  # same inputs, same version
    changes = [
        lambda: ticks.append(dataclasses.replace(ticks[-1], seq=ticks[-1].seq + 1)),
        lambda: errors.append(1),
        lambda: pushes.append(PushStatus(1, 0, 1.0)),
        lambda: pushes.append(PushStatus(1, 1, 1.0)),
    ]
    for i, change in enumerate(changes):
        before = scrape_with(c)
        change()
        assert c.version() not in seen, i
        assert scrape_with(c) != before, i  # the figures did change with it
        seen.add(c.version())
    assert TickCollector(lambda: None, lambda: 0).version() == (0, 0, None)


def scrape_with(c: TickCollector) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(c)
    return bytes(generate_latest(reg))


def test_hooks_served_for_listed_programs_and_priced_kinds() -> None:
    """Attachments of listed programs only (program 3 is in "[other]"); a cost for a
    measured kind and 0 for an unsupported one; a failed kind is not priced at all."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(TickCollector(make_tick, lambda: 0))
    body = generate_latest(reg).decode()
    info = sorted(ln for ln in body.splitlines() if ln.startswith("linnix_bpf_program_hook_info"))
    assert info == [
        'linnix_bpf_program_hook_info{hook="cgroup",id="2",name="cilium_big",'
        'namespace="",pod="",target="cgroup_inet_ingress cgroup_id=234"} 1.0',
        'linnix_bpf_program_hook_info{hook="tracepoint",id="2",name="cilium_big",'
        'namespace="",pod="",target="sys_enter"} 1.0',
    ]
    cost = sorted(ln for ln in body.splitlines() if ln.startswith("linnix_bpf_hook_cost"))
    assert cost == [
        'linnix_bpf_hook_cost_seconds{hook="kprobe",source="unsupported"} 0.0',
        'linnix_bpf_hook_cost_seconds{hook="uprobe",source="measured"} 1.6e-05',
    ]


def test_hook_accounting_served_and_absent_with_the_collector_off() -> None:
    """The fixture by hand: program 2 (listed) on a tracepoint whose calibration failed
    and a cgroup hook (no calibrated kind): priced 0, one uncalibrated program; program
    3 (unlisted) on a 16 us uprobe ran once: 16 us of hooks on the node."""
    tick = dataclasses.replace(
        make_tick(), hook_seconds_total=16e-6, program_hook_seconds_total={3: 16e-6}
    )
    m = scrape(tick)
    assert m["linnix_bpf_hook_uncalibrated_programs{}"] == 1
    assert m["linnix_bpf_hook_seconds_total{}"] == pytest.approx(16e-6)
    big = "id=2,name=cilium_big,ours=false,tag=0000000000000002,type=tracepoint"
    assert m[f"linnix_bpf_program_hook_seconds_total{{{big}}}"] == 0.0
    assert not any(k.startswith("linnix_bpf_program_hook_seconds_total{id=3") for k in m)
    # Whole price over 20 CPU-seconds: 200.001 ms run time + 16 us hooks + 141 runs x
    # 100 ns statistics; the body-only ratio stays what the kernel reports.
    comp = {c: m[f"linnix_bpf_cost_component_ratio{{component={c}}}"] for c in COMPONENTS}
    assert comp == pytest.approx(
        {"run_time": 0.200001 / 20, "hooks": 16e-6 / 20, "stats": 141e-7 / 20}
    )
    assert m["linnix_bpf_cost_ratio{}"] == pytest.approx(sum(comp.values()))
    assert m["linnix_bpf_cpu_ratio{}"] == pytest.approx(0.200001 / 20)
    # Off: every hook family absent, and the whole price without a hooks component.
    off = dataclasses.replace(tick, disabled=frozenset({HOOKS_NAME}))
    m = scrape(off)
    assert not [k for k in m if "hook" in k]
    assert "linnix_bpf_cost_component_ratio{component=hooks}" not in m
    assert m["linnix_bpf_cost_ratio{}"] == pytest.approx((0.200001 + 141e-7) / 20)
    # On but its read failed: the whole price is not served for the tick.
    failed = dataclasses.replace(tick, unreliable=frozenset({HOOKS_NAME}))
    assert "linnix_bpf_cost_ratio{}" not in scrape(failed)


COMPONENTS = ("run_time", "hooks", "stats")
