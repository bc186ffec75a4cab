"""A fleet behind remote write, with the engine users scale to: three exporters with
different --node.name, each scraped by its own Prometheus in agent mode configured from
deploy/prometheus-agent.yml, all remote-writing to one central Prometheus that holds the
data and evaluates the shipped rules. At the center, every query of the fleet dashboard,
every recording rule and the overhead alert must give data for each of the three nodes.

One machine stands in for three nodes: the exporters listen on their own ports and
each agent scrapes its own (on real nodes every agent scrapes localhost:10924). All
three load their probes, so each node serves every family a node serves (the fleet
dashboard reads probe figures too). Every exporter runs with a budget its real overhead
breaks, so LinnixOverheadOverBudget fires for each node.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alerts import rules as shipped_rules
from dashboards import generate as dashboards
from tests.kernel_helpers import REPO, background_forks, daemon
from tests.support.promstack import Agent, Prometheus

pytestmark = pytest.mark.kernel

JOB = "linnix-exporter"
NODES = ("node-a", "node-b", "node-c")
ALL = "|".join(NODES)
TINY_BUDGET = "0.0000001"  # any real overhead is over it
AGENT_CONFIG = REPO / "deploy" / "prometheus-agent.yml"


def agent_config(node: str, exporter: str, central: str) -> str:
    """deploy/prometheus-agent.yml with its placeholders filled in as its header says;
    only the timing is shortened (scrape every 1 s, send within 1 s) so the test
    takes seconds."""
    text = AGENT_CONFIG.read_text()
    for placeholder, value in (("NODE_NAME", node), ("EXPORTER", exporter), ("CENTRAL", central)):
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value)
    config = yaml.safe_load(text)
    config["global"]["scrape_interval"] = "1s"
    for rw in config["remote_write"]:
        rw["queue_config"] = {"batch_send_deadline": "1s"}
    return yaml.safe_dump(config)


class Fleet:
    def __init__(self, central: Prometheus, rules: Path) -> None:
        self.central = central
        self.rules = rules

    def instances(self, expr: str) -> set[str]:
        return {r["metric"].get("instance", "") for r in self.central.query(expr)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    rules = work / "rules.yaml"
    rules.write_text(shipped_rules.render_rules(for_override="2s"))
    with contextlib.ExitStack() as stack:
        (work / "central").mkdir()
        central = Prometheus(
            work / "central", [], [rules], None, extra_args=["--web.enable-remote-write-receiver"]
        )
        stack.callback(central.stop)
        exporters = [
            stack.enter_context(
                daemon(
                    "--collect.interval",
                    "1s",
                    "--node.name",
                    node,
                    "--overhead.budget",
                    TINY_BUDGET,
                    # The dashboards' whole-price panels need the hook figures (off by
                    # default): every panel is checked per node at the center.
                    "--collector.hooks",
                )
            )
            for node in NODES
        ]
        for node, d in zip(NODES, exporters, strict=True):
            d.wait_ready()
            config = agent_config(node, f"127.0.0.1:{d.port}", f"127.0.0.1:{central.port}")
            agent = Agent(work / node, config)
            stack.callback(agent.stop)
        # The probes must run in every 1m window the queries rate() over, however long
        # the tests take (a per-program ratio divides by a run rate > 0).
        stack.enter_context(background_forks(20))
        f = Fleet(central, rules)
        # Ratios need two collections; rate() windows a few samples at the center.
        for _ in range(120):
            if f.instances(f'linnix_overhead_ratio{{job="{JOB}"}}') == set(NODES):
                break
            time.sleep(0.5)
        assert f.instances(f'linnix_overhead_ratio{{job="{JOB}"}}') == set(NODES)
        time.sleep(5)
        yield f
        for d in exporters:
            assert d.stop() == 0


def test_node_label_is_the_node_name(fleet: Fleet) -> None:
    """The agent's relabel makes instance the node's name: up and every exporter series
    arrive under it, and nothing arrives under the scrape address."""
    assert fleet.instances(f'up{{job="{JOB}"}} == 1') == set(NODES)
    # Scraped series only: per-job recording rules (level job:) have no instance.
    scraped = f'{{job="{JOB}", __name__!~".*:.*"}}'
    assert fleet.instances(f"count by (instance) ({scraped})") == set(NODES)


def test_every_fleet_dashboard_query_per_node(fleet: Fleet) -> None:
    """Each query with one node selected returns data, for each node; with all of them
    selected, a query whose result keeps the instance label has all three."""
    board = json.loads((REPO / "dashboards" / "linnix-fleet.json").read_text())
    empty: list[str] = []
    partial: list[str] = []
    for node in NODES:
        for title, expr in dashboards.queries(board, {"job": JOB, "instance": node}):
            if not fleet.central.wait_query(expr, timeout=20):
                empty.append(f"{node}: {title}: {expr}")
    checked = 0
    for title, expr in dashboards.queries(board, {"job": JOB, "instance": ALL}):
        checked += 1
        seen = fleet.instances(expr) - {""}
        if seen and seen != set(NODES):
            partial.append(f"{title}: {expr}: {sorted(seen)}")
    assert checked > 20
    assert not empty, "queries with no data:\n" + "\n".join(empty)
    assert not partial, "queries missing nodes:\n" + "\n".join(partial)
    nodes = fleet.central.query(f'count(linnix_node_cpus{{job=~"{JOB}", instance=~"{ALL}"}})')
    assert float(nodes[0]["value"][1]) == len(NODES)  # "Nodes reporting"


def test_node_dashboards_per_node(fleet: Fleet) -> None:
    """The per-node dashboards (overview, programs) work at the center too: with each
    node selected, every query returns data."""
    empty: list[str] = []
    for name in ("linnix-overview.json", "linnix-bpf-programs.json"):
        board = json.loads((REPO / "dashboards" / name).read_text())
        for node in NODES:
            for title, expr in dashboards.queries(board, {"job": JOB, "instance": node}):
                if not fleet.central.wait_query(expr, timeout=20):
                    empty.append(f"{name} {node}: {title}: {expr}")
    assert not empty, "queries with no data:\n" + "\n".join(empty)


def test_every_recording_rule_per_node(fleet: Fleet) -> None:
    """Rules recorded per instance have all three nodes; per-job rules have the job."""
    for name in shipped_rules.recording_names():
        rows = fleet.central.wait_query(name, timeout=30)
        assert rows, f"recording rule {name} has no series"
        if name.startswith("instance"):
            assert fleet.instances(name) == set(NODES), name
        else:
            assert {r["metric"].get("job") for r in rows} == {JOB}, name
    bad = [r for r in fleet.central.rules_health() if r[1] != "ok"]
    assert not bad, bad


def test_overhead_alert_fires_for_each_node(fleet: Fleet) -> None:
    """Each node's real overhead breaks its tiny budget: the central server's alert is
    firing once per node, named by its node."""
    firing = 'ALERTS{alertname="LinnixOverheadOverBudget", alertstate="firing"}'
    for _ in range(60):
        if fleet.instances(firing) == set(NODES):
            break
        time.sleep(1)
    assert fleet.instances(firing) == set(NODES)
    assert not fleet.central.query('ALERTS{alertname="LinnixExporterAbsent"}')
