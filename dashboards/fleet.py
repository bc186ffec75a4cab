"""The fleet dashboard (linnix-fleet.json): Linnix over many nodes: nodes over budget,
problems, the distribution of the overhead over nodes, the most expensive programs across
the fleet."""

from __future__ import annotations

from dashboards.board import UIDS, Grid, dashboard, node_vars, topn_var
from dashboards.panels import (
    BUDGET,
    PROBLEM,
    Json,
    colored_column,
    dashed,
    flag_column,
    histogram,
    merged_table,
    stat,
    target,
    timeseries,
)
from dashboards.promql import budget_used, by_node, increase, rate, sel, topk

_OVERVIEW_LINK = (
    f"/d/{UIDS['overview']}?${{datasource:queryparam}}&var-job=${{__data.fields.job}}"
    "&var-instance=${__data.fields.instance}&${__url_time_range}"
)
# Override: a table's instance column links to that node's overview.
INSTANCE_LINK: Json = {
    "matcher": {"id": "byName", "options": "instance"},
    "properties": [{"id": "links", "value": [{"title": "Node overview", "url": _OVERVIEW_LINK}]}],
}


def fleet() -> Json:
    g = Grid()
    _budget(g)
    _distribution(g)
    _programs(g)
    return dashboard(
        "fleet",
        "Linnix over many nodes: who breaks the overhead budget, how the overhead is "
        "distributed, which BPF programs cost the most across the fleet.",
        [*node_vars(), topn_var()],
        g.done(),
    )


def _budget(g: Grid) -> None:
    used = budget_used()
    g.row("Budget")
    for title, expr, desc, th in (
        ("Nodes reporting", f"count({sel('linnix_node_cpus')})", "Nodes with an exporter.", None),
        (
            "Nodes over budget",
            f"count({used} > 1) or vector(0)",
            "Nodes whose overhead is above their budget now.",
            PROBLEM,
        ),
        (
            "Probes detached",
            f"count({sel('linnix_probes_attached')} == 0) or vector(0)",
            "Nodes whose Linnix probes are not loaded.",
            PROBLEM,
        ),
        (
            "BPF statistics off",
            f"count({sel('linnix_bpf_stats_enabled')} == 0) or vector(0)",
            "Nodes where the kernel does not accumulate BPF run time.",
            PROBLEM,
        ),
        (
            "Targets down",
            f"count({sel('up')} == 0) or vector(0)",
            "Exporters Prometheus could not scrape.",
            PROBLEM,
        ),
    ):
        g.add(4, 4, stat(title, "short", [target(expr, "")], desc, thresholds=th))
    g.add(
        4,
        4,
        stat(
            "Fleet overhead (CPU-weighted)",
            "percentunit",
            [
                target(
                    f"sum({sel('linnix_overhead_ratio')} * {sel('linnix_node_cpus')}) "
                    f"/ sum({sel('linnix_node_cpus')})",
                    "",
                )
            ],
            "Share of all CPUs of the selected nodes that Linnix uses.",
        ),
    )
    g.add(
        12,
        9,
        timeseries(
            "Budget used by node (top $topn; over 100% breaks the budget)",
            "percentunit",
            [target(topk(used), "{{instance}}")],
            "Overhead / budget per node. The dashed line is the budget.",
            thresholds=PROBLEM,
            threshold_style="dashed",
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        merged_table(
            "Nodes by budget used",
            "percentunit",
            [
                (used, "budget used", "percentunit"),
                (
                    f"max_over_time(({used})[$__range:$__interval])",
                    "max budget used in range",
                    "percentunit",
                ),
                # No __name__ in any of them: rows merge on the labels the tables share.
                (
                    f"avg_over_time({sel('linnix_overhead_ratio')}[$__range])",
                    "mean overhead in range (share of node)",
                    "percentunit",
                ),
                (by_node(sel("linnix_node_cpus")), "CPUs", "short"),
            ],
            "Budget used now and at worst over the time range (over 100%: over budget), mean "
            "overhead over the range. Click an instance for its overview.",
            sort_by="max budget used in range",
            overrides=[
                colored_column("budget used.*", "color-background", BUDGET, regex=True),
                INSTANCE_LINK,
            ],
        ),
    )


def _distribution(g: Grid) -> None:
    overhead = sel("linnix_overhead_ratio")
    g.row("Distribution over nodes")
    g.add(
        12,
        8,
        timeseries(
            "Overhead across nodes: quantiles (share of the node)",
            "percentunit",
            [
                target(f"min({overhead})", "min"),
                *(
                    target(f"quantile({q}, {overhead})", f"p{round(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                ),
                target(f"max({overhead})", "max"),
                target(f"max({sel('linnix_overhead_budget_ratio')})", "budget (max)"),
            ],
            "Distribution of the overhead ratio over the selected nodes at each instant; "
            "dashed: the largest budget.",
            overrides=[dashed("F")],
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        histogram(
            "Nodes by mean overhead over the time range",
            "percentunit",
            [target(f"avg_over_time({overhead}[$__range])", "{{instance}}", instant=True)],
            "How many nodes spend how much on Linnix, averaged over the time range.",
        ),
    )
    g.add(
        12,
        8,
        merged_table(
            "Node health",
            "short",
            [
                # Aggregated by node: no __name__, so the tables merge into one row per node.
                (by_node(sel("up")), "scrape", "short"),
                (by_node(sel("linnix_probes_attached")), "probes", "short"),
                (
                    by_node(sel("linnix_bpf_stats_enabled"), labels="job, instance, method"),
                    "BPF statistics",
                    "short",
                ),
                (
                    by_node(increase("linnix_exporter_collect_errors_total")),
                    "collection errors in range",
                    "short",
                ),
                (by_node(sel("linnix_exporter_resident_memory_bytes")), "exporter RSS", "bytes"),
            ],
            "Every node: scraped, probes attached, BPF statistics on (and how), failed "
            "collections over the time range, exporter memory. Problems sort first.",
            sort_by="probes",
            sort_desc=False,
            overrides=[
                flag_column("scrape", "up", "down"),
                flag_column("probes", "attached", "detached"),
                flag_column("BPF statistics", "on", "off"),
                colored_column("collection errors in range", "color-text", PROBLEM),
                INSTANCE_LINK,
            ],
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Forks per second (top $topn nodes)",
            "ops",
            [target(topk(rate("linnix_process_forks_total")), "{{instance}}")],
            "Fork storms across the fleet; the node overview says who is forking.",
            legend_table=True,
        ),
    )


def _programs(g: Grid) -> None:
    run_time = rate("linnix_bpf_program_run_time_seconds_total")
    top = topk(f"sum by (name, type, ours) ({run_time})")
    cpu_ratio = sel("linnix_bpf_program_cpu_ratio")
    g.row("Programs across the fleet")
    g.add(
        12,
        9,
        timeseries(
            "Top $topn programs across the fleet (CPU, share of one core)",
            "percentunit",
            [target(topk(f"sum by (name) ({run_time})"), "{{name}}")],
            "Kernel run time of each program name summed over the nodes: 100% = one core.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        merged_table(
            "Top $topn programs across the fleet",
            "percentunit",
            [
                (top, "CPU, all nodes (share of one core)", "percentunit"),
                (
                    f"max by (name, type, ours) ({cpu_ratio}) and on (name, type, ours) {top}",
                    "worst node (share of node)",
                    "percentunit",
                ),
                (
                    "count by (name, type, ours) (count by (job, instance, name, type, ours) "
                    f"({cpu_ratio})) and on (name, type, ours) {top}",
                    "nodes",
                    "short",
                ),
            ],
            "Programs by name: CPU summed over the nodes (100% = one core), the worst node's "
            "share, and on how many nodes the program runs.",
            sort_by="CPU, all nodes (share of one core)",
        ),
    )
    rss = sel("linnix_exporter_resident_memory_bytes")
    exporter_cpu = f"sum by (job, instance) ({rate('linnix_exporter_cpu_seconds_total')})"
    g.add_each(
        12,
        8,
        [
            timeseries(
                "Exporter resident memory across the fleet",
                "bytes",
                [target(f"max({rss})", "max"), target(f"quantile(0.5, {rss})", "p50")],
                "Resident set size of the exporters.",
            ),
            timeseries(
                "Exporter CPU across the fleet (share of one core)",
                "percentunit",
                [
                    target(f"max({exporter_cpu})", "max"),
                    target(f"quantile(0.5, {exporter_cpu})", "p50"),
                ],
                "CPU of the exporter processes (helpers included) per node: worst and median.",
            ),
        ],
    )
