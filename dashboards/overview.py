"""The node overview dashboard (linnix-overview.json): overhead against its budget, split
into probes' kernel time and exporter CPU; stats switch and probes; what the Linnix
process probes see (forks, execs, exits, top commands, lifetimes, CPU of exited tasks);
the exporter itself."""

from __future__ import annotations

from dashboards.board import UIDS, Grid, dashboard, node_vars, topn_var
from dashboards.panels import (
    BUDGET,
    Json,
    dashed,
    heatmap,
    link,
    node_stat,
    on_off_stat,
    stat,
    table,
    table_target,
    target,
    thresholds,
    timeseries,
)
from dashboards.promql import MULTIPLIER_UNIT, budget_used, increase, rate, sel, topk


def overview() -> Json:
    g = Grid()
    _overhead(g)
    _process_activity(g)
    _exporter(g)
    return dashboard(
        "overview",
        "What eBPF costs the node: Linnix overhead against its budget, and what the Linnix "
        "process probes see.",
        [*node_vars(), topn_var()],
        g.done(),
    )


def _overhead(g: Grid) -> None:
    g.row("Overhead")
    g.add(
        12,
        8,
        timeseries(
            "Overhead vs budget (share of the node)",
            "percentunit",
            [
                target(sel("linnix_overhead_ratio"), "{{instance}} overhead"),
                target(sel("linnix_overhead_budget_ratio"), "{{instance}} budget"),
            ],
            "(our probes' kernel run time + exporter CPU + what the BPF statistics we turned "
            "on cost every program run) / (interval x online CPUs), against the budget "
            "(--overhead.budget, dashed).",
            overrides=[dashed("B")],
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Overhead split: probes, exporter, statistics (share of the node)",
            "percentunit",
            [
                target(sel("linnix_overhead_component_ratio"), "{{instance}} {{component}}"),
            ],
            "The three terms of the overhead, stacked (they add up to it): probes = kernel "
            "run time of the Linnix probes; exporter = CPU of the exporter process (helpers "
            "included); stats = runs of every BPF program x what statistics add to each run "
            "(linnix_bpf_stats_run_cost_seconds), while we hold them on.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add_each(
        4,
        4,
        [
            node_stat(
                "Overhead now (share of the node)",
                "percentunit",
                sel("linnix_overhead_ratio"),
                "Last overhead ratio: 100% = every CPU of the node busy.",
            ),
            node_stat(
                "Budget used",
                "percentunit",
                budget_used(),
                "Overhead / budget: over 100% the node breaks its budget.",
                thresholds=BUDGET,
            ),
            node_stat(
                "Overhead now (share of one core)",
                "percentunit",
                sel("linnix_overhead_core_ratio"),
                "The same overhead as a share of one core (can exceed 100%).",
            ),
            on_off_stat(
                "BPF statistics",
                sel("linnix_bpf_stats_enabled"),
                "{{instance}} {{method}}",
                "Whether the kernel accumulates BPF run time, and how it was turned on "
                "(enable_stats_fd, sysctl, already_on, off; sampled: on only for a window of "
                "each interval, see linnix_bpf_stats_duty_ratio). Off: program run times do "
                "not move.",
                on="on",
                off="off",
                display_name="${__field.labels.instance}: ${__field.labels.method}",
            ),
            on_off_stat(
                "Probes attached",
                sel("linnix_probes_attached"),
                "{{instance}}",
                "1 if the Linnix probes are loaded (checked against the kernel's program list).",
                on="attached",
                off="detached",
            ),
            node_stat(
                "Online CPUs",
                "short",
                sel("linnix_node_cpus"),
                "Online CPUs of the node: the denominator of every node share.",
                instant=True,
                sparkline=False,
            ),
        ],
    )
    g.add(
        12,
        8,
        timeseries(
            "Overhead (share of one core)",
            "percentunit",
            [target(sel("linnix_overhead_core_ratio"), "{{instance}}")],
            "The overhead as a share of one core: 100% = one core fully used.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "All BPF programs vs our probes (share of the node)",
            "percentunit",
            [
                target(sel("linnix_bpf_cpu_ratio"), "{{instance}} all programs"),
                target(sel("linnix_probes_cpu_ratio"), "{{instance}} Linnix probes"),
            ],
            "Kernel run time of every BPF program on the node (Cilium, Falco, ... and ours) "
            "next to the Linnix probes alone. Details per program: Linnix: BPF programs.",
            legend_table=True,
            links=[link("Linnix: BPF programs", UIDS["programs"])],
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Whole price of BPF: run time, hooks, statistics (share of the node)",
            "percentunit",
            [target(sel("linnix_bpf_cost_component_ratio"), "{{instance}} {{component}}")],
            "What every BPF program on the node costs, stacked (the parts add up to "
            "linnix_bpf_cost_ratio): run_time = the bodies, as the kernel's run_time_ns "
            "counts them (linnix_bpf_cpu_ratio); hooks = what reaching them costs outside "
            "that (runs x the hook cost calibrated here, --collector.hooks); stats = what "
            "BPF statistics add to every run. Per program: Linnix: BPF programs.",
            stack=True,
            legend_table=True,
            links=[link("Linnix: BPF programs", UIDS["programs"])],
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Whole price / reported run time (all programs)",
            MULTIPLIER_UNIT,
            [
                target(
                    f"{sel('linnix_bpf_cost_ratio')} / ({sel('linnix_bpf_cpu_ratio')} > 0)",
                    "{{instance}}",
                )
            ],
            "How many times the run time every meter shows the node's BPF really costs: "
            "(run time + hooks + statistics) / run time. A node of uprobe-based agents "
            "reads tens to hundreds; tracepoints alone a few.",
            legend_table=True,
        ),
    )


def _process_activity(g: Grid) -> None:
    g.row("Process activity (Linnix probes)")
    g.add(
        12,
        8,
        timeseries(
            "Forks, execs and exits per second",
            "ops",
            [
                target(rate("linnix_process_forks_total"), "{{instance}} forks"),
                target(rate("linnix_process_execs_total"), "{{instance}} execs"),
                target(rate("linnix_process_exits_total"), "{{instance}} exits"),
            ],
            "Tasks created (threads included), successful execs, tasks that exited.",
            legend_table=True,
        ),
    )
    for what, metric, desc in (
        ("forking", "linnix_process_comm_forks_total", "Forks by the forking task's command."),
        ("exec'd", "linnix_process_comm_execs_total", "Execs by the new command name."),
        ("exiting", "linnix_process_comm_exits_total", "Exits by the exiting task's command."),
    ):
        g.add(
            12,
            8,
            timeseries(
                f"Top $topn {what} commands (per second)",
                "ops",
                [target(topk(f"sum by (comm) ({rate(metric)})"), "{{comm}}")],
                desc + ' Over the selected nodes; "[other]" adds up unlisted commands.',
                legend_table=True,
            ),
        )
    exited_cpu = "linnix_exited_task_cpu_seconds_total"
    g.add(
        12,
        8,
        timeseries(
            "CPU of exited tasks by command (share of one core)",
            "percentunit",
            [target(topk(f"sum by (comm) ({rate(exited_cpu)})"), "{{comm}}")],
            "CPU time of tasks when they exited, per second: catches short-lived processes "
            "that /proc polling misses. 100% = one core.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        table(
            "CPU of exited tasks over the time range",
            "s",
            [table_target(topk(f"sum by (comm) ({increase(exited_cpu)})"))],
            "CPU seconds burned by tasks that exited during the dashboard's time range, by "
            "command, over the selected nodes.",
            columns={"Value": ("CPU time", "s")},
            sort_by="CPU time",
        ),
    )
    life = "linnix_process_lifetime_seconds"
    g.add(
        12,
        8,
        heatmap(
            "Process lifetime",
            "s",
            "ops",
            [target(f"sum by (le) ({rate(life + '_bucket')})", "{{le}}", fmt="heatmap")],
            "Processes (thread-group leaders) exiting per second by fork-to-exit lifetime, "
            "log2 buckets, over the selected nodes.",
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Process lifetime quantiles",
            "s",
            [
                *(
                    target(
                        f"histogram_quantile({q}, sum by (le) ({rate(life + '_bucket')}))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ),
                target(f"sum({rate(life + '_sum')}) / sum({rate(life + '_count')})", "mean"),
            ],
            "Fork-to-exit lifetime of processes that exited, over the selected nodes. "
            "Buckets are powers of two: quantiles are upper bounds of a bucket.",
            legend_table=True,
        ),
    )


def _exporter(g: Grid) -> None:
    g.row("Exporter")
    g.add_each(
        8,
        8,
        [
            timeseries(
                "Exporter CPU by mode (share of one core)",
                "percentunit",
                [target(rate("linnix_exporter_cpu_seconds_total"), "{{instance}} {{mode}}")],
                "CPU of the exporter, including the helper processes it started and reaped.",
                stack=True,
            ),
            timeseries(
                "Exporter resident memory",
                "bytes",
                [target(sel("linnix_exporter_resident_memory_bytes"), "{{instance}}")],
                "Resident set size of the exporter.",
            ),
            timeseries(
                "Collection: duration and interval",
                "s",
                [
                    target(
                        sel("linnix_exporter_collect_duration_seconds"), "{{instance}} duration"
                    ),
                    target(sel("linnix_overhead_interval_seconds"), "{{instance}} interval"),
                ],
                "Wall time of the last collection, and the measured interval the ratios cover.",
            ),
        ],
    )
    g.add_each(
        6,
        4,
        [
            node_stat(
                "Exporter version",
                "short",
                sel("linnix_exporter_build_info"),
                "Version of the exporter (and of Python) on each node.",
                instant=True,
                display_name="${__field.labels.version} (Python ${__field.labels.python_version})",
                sparkline=False,
                text_mode="name",
            ),
            stat(
                "Last collection age",
                "s",
                [target(f"time() - {sel('linnix_exporter_last_collect_timestamp_seconds')}")],
                "Seconds since the exporter's last collection: grows when collection is stuck.",
                thresholds=thresholds((None, "green"), (60, "red")),
            ),
            node_stat(
                "Collections per second",
                "ops",
                rate("linnix_exporter_collections_total"),
                "Ticks (kernel reads) per second: 1 / --collect.interval.",
            ),
            node_stat(
                'Commands in "[other]"',
                "short",
                sel("linnix_process_unlisted_comms"),
                'Command names without their own series, added up in comm="[other]".',
            ),
        ],
    )
