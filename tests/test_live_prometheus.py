"""The shipped dashboards and rules against a real Prometheus scraping the real exporter,
with alerts delivered through a real Alertmanager to a webhook."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts import rules as shipped_rules
from dashboards import generate as dashboards
from tests.kernel_helpers import REPO, Daemon, daemon, forks, free_port
from tests.support.promstack import Alertmanager, Prometheus, Webhook

pytestmark = pytest.mark.kernel

JOB = "linnix-exporter"
TINY_BUDGET = "0.0000001"  # any real overhead is over it


class Stack:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.instance = f"127.0.0.1:{self.port}"
        # A second exporter, with the hooks collector: the dashboards' whole-price panels
        # query its figures (see hooks_exporter).
        self.hooks_port = free_port()
        self.hooks_instance = f"127.0.0.1:{self.hooks_port}"
        self.rules = work / "rules.yaml"
        # The shipped rules, with every `for:` shortened so alerts fire in seconds.
        self.rules.write_text(shipped_rules.render_rules(for_override="2s"))
        self.hook = Webhook()
        self.am = Alertmanager(work, self.hook.url)
        self.prom = Prometheus(
            work, [self.instance, self.hooks_instance], [self.rules], self.am.url, job=JOB
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("promstack"))
    try:
        yield s
    finally:
        s.prom.stop()
        s.am.stop()
        s.hook.stop()


@pytest.fixture(scope="module")
def exporter(stack: Stack) -> Iterator[Daemon]:
    """The exporter with its default budget, scraped by the stack's Prometheus."""
    with daemon("--collect.interval", "1s", port=stack.port) as d:
        d.wait_ready()
        forks(200)
        # Ratios need two collections, rate() windows a few scrapes.
        stack.prom.wait_query(f'linnix_overhead_ratio{{job="{JOB}"}}')
        time.sleep(5)
        yield d
        assert d.stop() == 0


@pytest.fixture(scope="module")
def hooks_exporter(stack: Stack) -> Iterator[Daemon]:
    """The exporter with --collector.hooks, whose figures the dashboards' whole-price
    panels need. Its budget is out of reach: its overhead (the hooks collector's
    re-reads on a node where programs come and go every tick, at a 1 s interval) must
    not fire the alerts the other exporter's tests watch."""
    with daemon(
        "--collect.interval", "1s", "--collector.hooks", "--overhead.budget", "0.5",
        port=stack.hooks_port,
    ) as d:  # fmt: skip
        d.wait_ready()
        forks(200)
        stack.prom.wait_query('linnix_bpf_cost_component_ratio{component="hooks"}')
        time.sleep(5)
        yield d
        assert d.stop() == 0


def dashboard_files() -> list[Path]:
    return sorted((REPO / "dashboards").glob("*.json"))


def test_every_dashboard_query_returns_data(
    stack: Stack, exporter: Daemon, hooks_exporter: Daemon
) -> None:
    variables = {"job": JOB, "instance": stack.hooks_instance}
    empty = []
    checked = 0
    for path in dashboard_files():
        for title, expr in dashboards.queries(json.loads(path.read_text()), variables):
            checked += 1
            if not stack.prom.wait_query(expr, timeout=20):
                empty.append(f"{path.name}: {title}: {expr}")
    assert checked > 20
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_every_recording_rule_produces_series(stack: Stack, exporter: Daemon) -> None:
    for name in shipped_rules.recording_names():
        assert stack.prom.wait_query(name, timeout=30), f"recording rule {name} has no series"
    bad = [r for r in stack.prom.rules_health() if r[1] != "ok"]
    assert not bad, bad


def test_metric_names_in_dashboards_and_rules_are_served(
    stack: Stack, exporter: Daemon, hooks_exporter: Daemon
) -> None:
    """Read from the live exporter through Prometheus, not from the catalogue."""
    text = "\n".join(p.read_text() for p in dashboard_files()) + stack.rules.read_text()
    # Metric names only: not the middle of a recording rule name (level:metric:ops).
    names = set(re.findall(r"(?<![\w:])linnix_\w+\b(?!:)", text))
    assert len(names) > 10
    missing = [n for n in sorted(names) if not stack.prom.query(f'count({{__name__="{n}"}})')]
    assert not missing, missing


def test_owners_add_up_and_mean_run_time_is_recorded(stack: Stack, exporter: Daemon) -> None:
    """Through Prometheus: the owners' CPU shares of one scrape add up to the node's BPF
    share, our probes are attributed to the exporter's own process (no pod here), and the
    mean run time rule gives our fork probe a per-run cost in the range the field notes
    measured for such programs (100 ns to 10 us), by name."""
    job = f'job="{JOB}"'
    # One query, one instant: both sides are the latest samples, from the same scrape.
    diff = stack.prom.query(
        f"sum by (instance) (linnix_bpf_owner_cpu_ratio{{{job}}})"
        f" - on(instance) linnix_bpf_cpu_ratio{{{job}}}"
    )
    node = stack.prom.query(f"linnix_bpf_cpu_ratio{{{job}}}")
    assert float(node[0]["value"][1]) > 0  # a real sum, not 0 = 0
    assert abs(float(diff[0]["value"][1])) < 1e-12, diff  # float rounding of the sum only
    ours = stack.prom.query(
        f'linnix_bpf_program_owner_info{{{job},name="linnix_fork",owner_pid="{exporter.proc.pid}"}}'
    )
    # Prometheus drops empty labels: outside a pod, none is stored.
    assert ours and not {"pod", "namespace", "container_id"} & set(ours[0]["metric"]), ours
    forks(500)
    mean = stack.prom.wait_query(
        "instance_program:linnix_bpf_program_run_time_seconds:mean5m"
        f'{{{job},name="linnix_fork",type="tracepoint"}}',
        timeout=30,
    )
    assert mean and 1e-7 <= float(mean[0]["value"][1]) <= 1e-5, mean


def test_overhead_alert_pending_firing_delivered_resolved(stack: Stack, exporter: Daemon) -> None:
    assert "LinnixOverheadOverBudget" not in stack.prom.alert_states()  # default budget
    exporter.stop()
    # The same node (same address, so the same instance) with a budget its real
    # overhead breaks: the alert must go pending, then firing, then reach the webhook.
    with daemon("--collect.interval", "1s", "--overhead.budget", TINY_BUDGET, port=stack.port) as d:
        d.wait_ready()
        seen: list[str] = []
        deadline = time.monotonic() + 90
        while "firing" not in seen and time.monotonic() < deadline:
            for state in stack.prom.alert_states().get("LinnixOverheadOverBudget", set()):
                if not seen or seen[-1] != state:
                    seen.append(state)
            time.sleep(0.1)
        assert seen[:2] == ["pending", "firing"], seen
        fired = stack.hook.wait_for("LinnixOverheadOverBudget", "firing", timeout=60)
        assert fired["labels"]["instance"] == stack.instance
        assert fired["labels"]["severity"] == "warning"
        assert fired["annotations"]["runbook_url"].endswith("#linnixoverheadoverbudget")
        assert d.stop() == 0
    # Back under budget: the default 1% again.
    with daemon("--collect.interval", "1s", port=stack.port) as d:
        d.wait_ready()
        stack.hook.wait_for("LinnixOverheadOverBudget", "resolved", timeout=120)
        assert "LinnixOverheadOverBudget" not in stack.prom.alert_states()
        assert d.stop() == 0
