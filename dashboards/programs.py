"""The BPF programs dashboard (linnix-bpf-programs.json): every BPF program on the node,
the Linnix probes and everybody else's: CPU, runs/s, ns per run, recursion misses,
owners, top N, and a repeated row per program name."""

from __future__ import annotations

from dashboards.board import Grid, dashboard, node_vars, query_var, topn_var
from dashboards.panels import (
    BUDGET,
    Json,
    merged_table,
    node_stat,
    table,
    table_target,
    target,
    thresholds,
    timeseries,
)
from dashboards.promql import (
    HOOK_TIME,
    MULTIPLIER_UNIT,
    RUN_TIME,
    increase,
    multiplier,
    ns_per_run,
    rate,
    sel,
    topk,
    whole_price,
    whole_price_node,
)

# Programs picked with the `name` variable; each measure below is one series per program.
NAME = 'name=~"$name"'
CPU = sel("linnix_bpf_program_cpu_ratio", NAME)
RUNS = rate("linnix_bpf_program_runs_total", NAME)
NS_PER_RUN = ns_per_run(NAME)
MISSES = rate("linnix_bpf_program_recursion_misses_total", NAME)
WHOLE = whole_price(NAME)  # share of one core
WHOLE_NODE = whole_price_node(NAME)
TIMES = multiplier(NAME)
PROG_LEGEND = "{{instance}} {{name}} #{{id}}"


def programs() -> Json:
    g = Grid()
    _node(g)
    _every_program(g)
    _whole_price(g)
    _top(g)
    _owners_and_memory(g)
    _one_program(g)
    return dashboard(
        "programs",
        "Every BPF program on the node (Linnix probes and everybody else's): CPU, runs, cost "
        "per run, its whole price with its hooks, recursion misses and owners.",
        [
            *node_vars(),
            query_var(
                "name",
                "Program",
                f"label_values({sel('linnix_bpf_program_runs_total')}, name)",
                ".*",
            ),
            topn_var(),
        ],
        g.done(),
    )


def _node(g: Grid) -> None:
    g.row("Node")
    g.add_each(
        4,
        4,
        [
            node_stat(
                "Programs loaded",
                "short",
                sel("linnix_bpf_programs"),
                "BPF programs loaded on the node.",
            ),
            node_stat(
                'Programs in "[other]"',
                "short",
                sel("linnix_bpf_unlisted_programs"),
                'Programs without their own series, added up in name="[other]".',
            ),
            node_stat(
                "All programs (share of the node)",
                "percentunit",
                sel("linnix_bpf_cpu_ratio"),
                "Kernel run time of every BPF program as a share of the node.",
            ),
            node_stat(
                "Linnix probes (share of the node)",
                "percentunit",
                sel("linnix_probes_cpu_ratio"),
                "Kernel run time of the exporter's own probes as a share of the node.",
            ),
            node_stat(
                "Runs per second (all programs)",
                "ops",
                rate("linnix_bpf_runs_total"),
                "Runs of every BPF program on the node.",
            ),
            node_stat(
                "Statistics read by",
                "short",
                sel("linnix_bpf_read_method"),
                "iterator: one BPF iterator read for all programs; syscall: bpf() per program.",
                instant=True,
                mappings=[{"options": {"1": {"index": 0, "text": "in use"}}, "type": "value"}],
                display_name="${__field.labels.instance}: ${__field.labels.method}",
                sparkline=False,
            ),
        ],
    )


def _every_program(g: Grid) -> None:
    g.row("Every program")
    g.add(
        24,
        10,
        merged_table(
            "Programs",
            "percentunit",
            [
                (CPU, "CPU (share of node)", "percentunit"),
                (RUNS, "runs/s", "ops"),
                (NS_PER_RUN, "ns/run", "ns"),
                (MISSES, "recursion misses/s", "ops"),
                (
                    increase("linnix_bpf_program_run_time_seconds_total", NAME),
                    "run time in range",
                    "s",
                ),
                (WHOLE_NODE, "whole price (share of node)", "percentunit"),
                (TIMES, "x run time", MULTIPLIER_UNIT),
            ],
            "Every listed program (the exporter keeps its top N by run time, ours always; "
            'the rest add up in "[other]"). Run time only advances while BPF statistics are on. '
            "Whole price: run time + what reaching the program through its hooks costs "
            "(--collector.hooks; empty for programs with no hook found).",
            sort_by="CPU (share of node)",
            hide=("Time", "__name__", "job"),
        ),
    )
    for title, unit, expr, desc in (
        (
            "CPU by program (share of the node)",
            "percentunit",
            CPU,
            "Kernel run time of each program over the last interval as a share of the node.",
        ),
        ("Runs per second by program", "ops", RUNS, "How often each program runs."),
        (
            "Average run time per run by program",
            "ns",
            NS_PER_RUN,
            "rate(run time) / rate(runs): the cost of one run. Programs that did not run in "
            "the window are left out.",
        ),
        (
            "Recursion misses per second by program",
            "ops",
            MISSES,
            "Runs skipped because the program was already running on that CPU: events the "
            "program never saw.",
        ),
    ):
        g.add(
            12,
            8,
            timeseries(title, unit, [target(topk(expr), PROG_LEGEND)], desc, legend_table=True),
        )
    g.add(
        12,
        8,
        timeseries(
            "Our probes vs every other program (share of the node)",
            "percentunit",
            [
                target(sel("linnix_probes_cpu_ratio"), "{{instance}} Linnix probes"),
                target(
                    f"{sel('linnix_bpf_cpu_ratio')} - {sel('linnix_probes_cpu_ratio')}",
                    "{{instance}} other programs",
                ),
            ],
            "Kernel run time of all BPF programs, stacked: the Linnix probes and the rest.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        table(
            "Program owners",
            "percentunit",
            [
                table_target(
                    f"max by (job, instance, id, type, ours) ({CPU}) "
                    "* on (job, instance, id) group_right (type, ours) "
                    f"{sel('linnix_bpf_program_owner_info', NAME)}"
                )
            ],
            "Processes holding a program or link fd of each listed program (one row per "
            "owner), with the program's CPU share. Programs held by nobody (pinned) are absent.",
            columns={"Value": ("CPU (share of node)", "percentunit")},
            sort_by="CPU (share of node)",
            hide=("Time", "__name__", "job"),
        ),
    )


def _whole_price(g: Grid) -> None:
    """Per program: the run time it reports, its whole price (run time + what reaching
    it through its hooks costs, calibrated on the node) and the multiplier between them;
    where each is attached and what each hook kind costs an event."""
    g.row("Whole price: run time + hooks")
    g.add(
        24,
        9,
        merged_table(
            "Run time, whole price and multiplier per program",
            "percentunit",
            [
                (rate(RUN_TIME, NAME), "run time (share of a core)", "percentunit"),
                (rate(HOOK_TIME, NAME), "hooks (share of a core)", "percentunit"),
                (WHOLE, "whole price (share of a core)", "percentunit"),
                (TIMES, "x run time", MULTIPLIER_UNIT),
            ],
            "The run time each program reports (run_time_ns: its body, what bpftop and "
            "every other meter show), what reaching it through its hooks costs outside that "
            "(its runs x the hook cost calibrated on this node: a uprobe trap is ~200x a "
            "small body here), their sum, and the multiplier whole / run time. Needs "
            "--collector.hooks; programs with no hook found are not listed. Runbook: "
            '"A program costs Nx its run time" in docs/runbooks.md.',
            sort_by="whole price (share of a core)",
            hide=("Time", "__name__", "job", "tag"),
        ),
    )
    g.add_each(
        12,
        8,
        [
            timeseries(
                "Whole price by program (share of one core)",
                "percentunit",
                [target(topk(WHOLE), PROG_LEGEND)],
                "Run time + hook cost of each program per second: what the program costs "
                "the node, where the run time shows only its body.",
                legend_table=True,
            ),
            timeseries(
                "Whole price / run time by program",
                MULTIPLIER_UNIT,
                [target(topk(TIMES), PROG_LEGEND)],
                "How many times its reported run time each program really costs: 1 when "
                "reaching it is free, hundreds for a uprobe on a small body.",
                legend_table=True,
            ),
            table(
                "Hooks of each program",
                "percentunit",
                [
                    table_target(
                        f"max by (job, instance, id) ({rate(HOOK_TIME, NAME)}) "
                        "* on (job, instance, id) group_right () "
                        f"{sel('linnix_bpf_program_hook_info', NAME)}"
                    )
                ],
                "Every attachment of each listed program (bpf links, and perf events held by "
                "processes, as bpftool link show and bpftool perf show list them), with what "
                "the program's hooks cost per second (share of one core).",
                columns={"Value": ("hooks (share of a core)", "percentunit")},
                sort_by="hooks (share of a core)",
                hide=("Time", "__name__", "job"),
            ),
            table(
                "Hook cost per event, by kind (calibrated here)",
                "s",
                [table_target(sel("linnix_bpf_hook_cost_seconds"))],
                "What reaching a program through each hook kind costs per event, outside its "
                "run time, measured on each node (A/B of a trivial program at start-up and "
                "every 6 h, after a failed one again within minutes); unsupported: the "
                "kernel lacks the kind (0).",
                columns={"Value": ("cost per event", "s")},
                sort_by="cost per event",
                hide=("Time", "__name__", "job"),
            ),
        ],
    )


def _top(g: Grid) -> None:
    g.row("Top $topn programs")
    for what, expr, unit in (
        ("by CPU (share of node)", CPU, "percentunit"),
        ("by runs/s", RUNS, "ops"),
        ("by ns/run", NS_PER_RUN, "ns"),
    ):
        column = what.removeprefix("by ")
        g.add(
            8,
            9,
            table(
                f"Top $topn programs {what}",
                unit,
                [table_target(topk(expr))],
                f"The $topn programs of the selected nodes {what}, now.",
                columns={"Value": (column, unit)},
                sort_by=column,
                hide=("Time", "__name__", "job", "tag"),
            ),
        )


OWNER_LEGEND = "{{instance}} {{owner_comm}} {{namespace}}/{{pod}}"
_BY_NAME = "sum by (job, instance, name, type)"
# As the recording rule instance_program:linnix_bpf_program_run_time_seconds:mean5m
# (dashboards read exporter metrics only), in ns: by name, so a reload continues its line.
NS_PER_RUN_BY_NAME = (
    f"{_BY_NAME} ({rate('linnix_bpf_program_run_time_seconds_total', NAME)}) / "
    f"({_BY_NAME} ({rate('linnix_bpf_program_runs_total', NAME)}) > 0) * 1e9"
)


def _owners_and_memory(g: Grid) -> None:
    """Who pays (programs rolled up by owner process and pod), the node's BPF budget,
    kernel memory, and each program's cost per run over time."""
    g.row("Owners, pods and kernel memory")
    g.add_each(
        6,
        4,
        [
            node_stat(
                "BPF budget used (all programs)",
                "percentunit",
                f"{sel('linnix_bpf_cost_ratio')} / {sel('linnix_bpf_budget_ratio')}",
                "The whole price of every BPF program (run time + hooks + statistics, "
                "linnix_bpf_cost_ratio) over the node's BPF budget (--bpf.node-budget): over "
                "100% the node breaks it (LinnixBpfOverBudget).",
                thresholds=BUDGET,
            ),
            node_stat(
                "Map memory (node, each map once)",
                "bytes",
                sel("linnix_bpf_map_memory_bytes"),
                "Kernel memory (memlock) of every BPF map on the node.",
            ),
            node_stat(
                "Maps (node)",
                "short",
                sel("linnix_bpf_maps"),
                "BPF maps on the node.",
            ),
            node_stat(
                "JIT memory used of net.core.bpf_jit_limit",
                "percentunit",
                f"{sel('linnix_bpf_jited_bytes')} / {sel('linnix_bpf_jit_limit_bytes')}",
                "JIT-compiled size of every program over the kernel's JIT limit (a lower "
                "bound: the kernel charges whole chunks). Loads start failing at 100%.",
                thresholds=thresholds((None, "green"), (0.8, "orange"), (1, "red")),
            ),
        ],
    )
    g.add(
        12,
        9,
        timeseries(
            "CPU share by owner and pod (stacked)",
            "percentunit",
            [target(sel("linnix_bpf_owner_cpu_ratio"), OWNER_LEGEND)],
            "Kernel run time of each owner's programs as a share of the node, stacked: each "
            "program counted once, under its lowest-pid holder ([none]: held by no process; "
            "[other]: owners without a series of their own). The stack is all BPF.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        timeseries(
            "Hook cost by owner and pod (stacked, share of the node)",
            "percentunit",
            [
                target(
                    f"{rate('linnix_bpf_owner_hook_seconds_total')} "
                    f"/ on (job, instance) group_left () {sel('linnix_node_cpus')}",
                    OWNER_LEGEND,
                )
            ],
            "What reaching each owner's programs through their hooks costs, outside their "
            "run time (--collector.hooks): add it to the CPU share beside for the owner's "
            "whole price.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        timeseries(
            "Kernel memory by owner and pod (stacked)",
            "bytes",
            [
                target(sel("linnix_bpf_owner_map_memory_bytes"), f"{OWNER_LEGEND} maps"),
                target(sel("linnix_bpf_owner_jited_bytes"), f"{OWNER_LEGEND} JIT"),
            ],
            "Memlock of each owner's maps (each map once per owner) and the JIT-compiled "
            "size of its programs. Read when programs appear and at each owner refresh.",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        timeseries(
            "ns per run by program name over time",
            "ns",
            [
                target(
                    topk(NS_PER_RUN_BY_NAME),
                    "{{instance}} {{name}} ({{type}})",
                )
            ],
            "Mean run time of one run over 5 minutes, by program name and type (not id: a "
            "reloaded program, a new agent version, continues its line). What "
            "LinnixBpfProgramSlower compares with the program's own past.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        merged_table(
            "Kernel memory by program",
            "bytes",
            [
                (sel("linnix_bpf_program_map_memory_bytes", NAME), "map memory", "bytes"),
                (sel("linnix_bpf_program_maps", NAME), "maps", "short"),
                (sel("linnix_bpf_program_jited_bytes", NAME), "JIT'd size", "bytes"),
            ],
            "Each listed program's maps (memlock; a map shared by several programs counts "
            'in each), map count and JIT-compiled size. "[other]" adds up the rest.',
            sort_by="map memory",
            hide=("Time", "__name__", "job"),
        ),
    )


def _one_program(g: Grid) -> None:
    """A collapsed row repeated for each program name the `name` variable picks."""
    g.collapsed_row(
        "Program: $name",
        [
            (8, 7, timeseries(f"$name: {what}", unit, [target(expr, "{{instance}} #{{id}}")], desc))
            for what, unit, expr, desc in (
                (
                    "CPU (share of the node)",
                    "percentunit",
                    CPU,
                    "Kernel run time of this program as a share of the node.",
                ),
                ("runs per second", "ops", RUNS, "Runs of this program."),
                (
                    "average run time per run",
                    "ns",
                    NS_PER_RUN,
                    "rate(run time) / rate(runs) of this program.",
                ),
                (
                    "whole price (share of one core)",
                    "percentunit",
                    WHOLE,
                    "Run time + hook cost of this program per second (--collector.hooks).",
                ),
                (
                    "whole price / run time",
                    MULTIPLIER_UNIT,
                    TIMES,
                    "How many times its reported run time this program really costs.",
                ),
            )
        ],
        repeat="name",
    )
