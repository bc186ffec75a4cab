"""The tick with fake sources: collectors fail alone, totals stay exact across a failed
read. When ticks run is tests/test_schedule.py. The sources themselves are tested on
the real kernel (test_probes, test_progstats, test_self_usage)."""

from __future__ import annotations

import pytest

from linnix_exporter.cli import build_parser
from linnix_exporter.config import run_config
from linnix_exporter.figures import Figure, figures
from linnix_exporter.snapshot import StatsState
from linnix_exporter.state import Exporter, Sources
from linnix_exporter.tick import Tick
from tests.support.fake_sources import HooksFake, Owners, Probes, Programs, Self, Stats


def make(interval: str = "10s", *flags: str) -> tuple[Exporter, Programs, Owners, Self, Probes]:
    args = build_parser().parse_args(["run", "--collect.interval", interval, *flags])
    cfg = run_config(args, {})
    progs, owners, me, probes = Programs(), Owners(), Self(), Probes()
    src = Sources(progs, owners, me, Stats(), lambda: 2, probes)
    src.enabled = cfg.collectors
    return Exporter(cfg, src), progs, owners, me, probes


def served(tick: Tick) -> dict[str, float]:
    out = {}
    for f in figures(tick, 0):
        if isinstance(f, Figure):
            out[f.family.prom + "{" + ",".join(f.labels) + "}"] = f.value
    return out


def names(tick: Tick) -> set[str]:
    return {k.split("{")[0] for k in served(tick)}


def test_failing_probe_read_leaves_the_rest_served() -> None:
    ex, _, _, _, probes = make()
    ex.tick()
    probes.fail = True
    t = ex.tick()
    m = served(t)
    assert m["linnix_exporter_collector_success{probes}"] == 0
    for c in ("programs", "owners", "self"):
        assert m[f"linnix_exporter_collector_success{{{c}}}"] == 1
        assert m[f"linnix_exporter_collector_duration_seconds{{{c}}}"] >= 0
    got = names(t)
    assert "linnix_process_forks_total" not in got  # the failed collector's figures
    assert {
        "linnix_bpf_program_run_time_seconds_total",
        "linnix_exporter_cpu_seconds_total",
        "linnix_bpf_program_owner_info",
        "linnix_overhead_ratio",
    } <= got
    probes.fail = False
    probes.forks = 25
    m = served(ex.tick())
    assert m["linnix_exporter_collector_success{probes}"] == 1
    assert m["linnix_process_forks_total{}"] == 25


def test_failed_program_read_keeps_totals_exact_and_skips_its_ratios() -> None:
    ex, progs, _, _, _ = make()
    ex.tick()
    progs.run_time[7] += 300
    t1 = ex.tick()
    assert t1.bpf_run_time_ns_total == 300
    progs.fail = True
    progs.run_time[7] += 4000  # runs while the read fails
    t2 = ex.tick()
    got = names(t2)
    assert served(t2)["linnix_exporter_collector_success{programs}"] == 0
    assert "linnix_bpf_run_time_seconds_total" not in got
    assert "linnix_bpf_program_runs_total" not in got
    assert "linnix_bpf_cpu_ratio" not in got and "linnix_overhead_ratio" not in got
    assert "linnix_exporter_cpu_ratio" in got  # self is fine
    progs.fail = False
    progs.run_time[7] += 20
    t3 = ex.tick()
    # Nothing lost, nothing counted twice: 300 + 4000 + 20.
    assert served(t3)["linnix_bpf_run_time_seconds_total{}"] == pytest.approx(4320e-9)
    # The delta spans two intervals: no ratio from it this tick, the next one is fine.
    assert "linnix_bpf_cpu_ratio" not in names(t3)
    assert "linnix_bpf_cpu_ratio" in names(ex.tick())


def test_failed_owner_scan_drops_only_owner_labels() -> None:
    ex, _, owners, _, _ = make()
    owners.fail = True
    t = ex.tick()
    m = served(t)
    assert m["linnix_exporter_collector_success{owners}"] == 0
    assert "linnix_bpf_program_owner_info" not in names(t)
    assert "linnix_bpf_program_runs_total{7,prog7,tracepoint,0707070707070707,false}" in m


def test_failed_self_read_omits_only_self_figures() -> None:
    ex, _, _, me, _ = make()
    ex.tick()
    me.fail = True
    t = ex.tick()
    got = names(t)
    assert served(t)["linnix_exporter_collector_success{self}"] == 0
    assert "linnix_exporter_cpu_seconds_total" not in got
    assert "linnix_exporter_cpu_ratio" not in got and "linnix_overhead_ratio" not in got
    assert "linnix_bpf_cpu_ratio" in got


def test_switched_off_owners_are_not_read_nor_served() -> None:
    ex, _, owners, _, _ = make("10s", "--no-collector.owners")
    ex.tick()
    t = ex.tick()
    assert owners.reads == 0
    m = served(t)
    assert "linnix_exporter_collector_success{owners}" not in m
    assert m["linnix_exporter_collector_success{programs}"] == 1
    got = names(t)
    assert not {n for n in got if "owner" in n}
    assert {"linnix_bpf_program_runs_total", "linnix_overhead_ratio"} <= got


def test_switched_off_programs_serve_no_program_figures_nor_ratios() -> None:
    ex, progs, owners, _, _ = make("10s", "--no-collector.programs")
    ex.tick()
    t = ex.tick()
    assert (progs.reads, owners.reads) == (0, 0)  # owners need the programs just read
    got = names(t)
    assert not {n for n in got if n.startswith("linnix_bpf_program")}
    assert "linnix_bpf_read_method" not in got
    for ratio in ("linnix_bpf_cpu_ratio", "linnix_overhead_ratio", "linnix_probes_cpu_ratio"):
        assert ratio not in got
    assert "linnix_exporter_cpu_ratio" in got  # self is still on
    assert "linnix_process_forks_total" in got  # and the probes


def test_switched_off_statistics_hide_only_their_figures() -> None:
    ex, _, _, _, _ = make("10s", "--no-collector.statistics")
    ex.tick()
    t = ex.tick()
    got = names(t)
    assert not {
        n for n in got if n.startswith("linnix_bpf_stats_") and n != "linnix_bpf_stats_duty_ratio"
    }
    assert t.snapshot.stats.enabled  # still read: the rates scale by it
    assert "linnix_overhead_ratio" in got


def test_statistics_collector_fails_alone() -> None:
    ex, _, _, _, _ = make()
    ex.tick()

    def broken(now: float | None = None) -> StatsState:
        raise OSError(9, "Bad file descriptor")

    ex.sources.stats.state = broken  # type: ignore[method-assign]
    t = ex.tick()
    m = served(t)
    assert m["linnix_exporter_collector_success{statistics}"] == 0
    assert "linnix_bpf_stats_enabled" not in names(t)
    assert t.snapshot.stats.enabled  # the last good state is carried
    assert m["linnix_exporter_collector_success{programs}"] == 1


def test_hooks_priced_by_the_tick_and_failing_alone() -> None:
    """Program 7 (held by agent) on a 16 us uprobe runs 100 more times: 1.6 ms of hooks
    for it, its owner and the node, in the hooks component of the whole price. A failed
    hooks read hides the hook families and the whole price for that tick (the tick
    after too: its rates span the failure); the rest is served, the counters keep."""
    args = build_parser().parse_args(["run", "--collect.interval", "10s", "--collector.hooks"])
    cfg = run_config(args, {})
    progs, hooks = Programs(), HooksFake()
    src = Sources(progs, Owners(), Self(), Stats(), lambda: 2, Probes(), hooks=hooks)
    src.enabled = cfg.collectors
    ex = Exporter(cfg, src)
    ex.tick()
    progs.run_time[7] += 1000  # +100 runs (the fake's run_cnt is run_time // 10)
    t = ex.tick()
    m = served(t)
    assert m["linnix_bpf_hook_seconds_total{}"] == pytest.approx(1.6e-3)
    prog7 = [v for k, v in m.items() if k.startswith("linnix_bpf_program_hook_seconds_total{7,")]
    assert prog7 == [pytest.approx(1.6e-3)]
    assert m["linnix_bpf_owner_hook_seconds_total{agent,,}"] == pytest.approx(1.6e-3)
    assert t.rates is not None
    hooks_ratio = m["linnix_bpf_cost_component_ratio{hooks}"]
    assert hooks_ratio == pytest.approx(t.rates.node_ratio(1.6e-3))
    assert m["linnix_bpf_cost_ratio{}"] == pytest.approx(
        sum(v for k, v in m.items() if k.startswith("linnix_bpf_cost_component_ratio{"))
    )
    hooks.fail = True
    m = served(ex.tick())
    assert m["linnix_exporter_collector_success{hooks}"] == 0
    assert not [k for k in m if "hook" in k and not k.startswith("linnix_exporter_collector")]
    assert "linnix_bpf_cost_ratio{}" not in m
    assert "linnix_bpf_cpu_ratio{}" in m and "linnix_bpf_program_owner_info" in names(ex.latest)  # type: ignore[arg-type]
    hooks.fail = False
    ex.tick()
    m = served(ex.tick())
    assert m["linnix_bpf_hook_seconds_total{}"] == pytest.approx(1.6e-3)
    assert "linnix_bpf_cost_ratio{}" in m
