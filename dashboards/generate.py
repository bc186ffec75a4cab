#!/usr/bin/env python3
"""Grafana dashboards for linnix-exporter, generated as classic dashboard JSON.

    python dashboards/generate.py          # (re)write dashboards/*.json
    python dashboards/generate.py --check  # exit 1, naming the stale file(s), if they differ

Every panel and target uses the `${datasource}` template variable (no `__inputs`), so
the same files work imported by hand and provisioned from disk. Queries use raw
exporter metrics only (no recording rules), filtered by `$job` and `$instance`, with
rate windows of `$__rate_interval`.

`queries()` and `metric_names()` let tests check every expression: the names against
the metric catalogue, the syntax with promtool, and the results against a Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

Json = dict[str, Any]

SCHEMA_VERSION = 38
TAGS = ["linnix"]
DS: Json = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RI = "$__rate_interval"
# What queries() puts in place of Grafana's interval variables.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

UIDS = {
    "overview": "linnix-overview",
    "programs": "linnix-bpf-programs",
    "fleet": "linnix-fleet",
}
TITLES = {
    "overview": "Linnix: eBPF overhead",
    "programs": "Linnix: BPF programs",
    "fleet": "Linnix: fleet",
}
FILES = {
    "overview": "linnix-overview.json",
    "programs": "linnix-bpf-programs.json",
    "fleet": "linnix-fleet.json",
}

# Program labels; the identity of a program on a node is (job, instance, id).
PROG = "id, name, type, tag, ours"


# --------------------------------------------------------------------------- PromQL


def sel(metric: str, extra: str = "") -> str:
    """`metric{job=~"$job", instance=~"$instance"[, extra]}`."""
    return metric + "{" + SEL + (", " + extra if extra else "") + "}"


def rate(metric: str, extra: str = "", window: str = RI) -> str:
    return f"rate({sel(metric, extra)}[{window}])"


def increase(metric: str, extra: str = "", window: str = "$__range") -> str:
    return f"increase({sel(metric, extra)}[{window}])"


def ns_per_run(extra: str = "") -> str:
    """Average kernel run time per run in ns; programs that did not run drop out."""
    rt = rate("linnix_bpf_program_run_time_seconds_total", extra)
    runs = rate("linnix_bpf_program_runs_total", extra)
    return f"{rt} / ({runs} > 0) * 1e9"


# --------------------------------------------------------------------------- panels


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> Json:
    t: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }
    return t


def _with_refs(targets: list[Json]) -> list[Json]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for v, c in steps],
    }


GREEN = _thresholds((None, "green"))


def _panel(
    kind: str,
    title: str,
    unit: str,
    targets: list[Json],
    description: str,
    *,
    defaults: Json | None = None,
    overrides: list[Json] | None = None,
    options: Json | None = None,
    links: list[Json] | None = None,
    **extra: Any,
) -> Json:
    p: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": _with_refs(targets),
        "fieldConfig": {
            "defaults": {"unit": unit, **(defaults or {})},
            "overrides": overrides or [],
        },
        "options": options or {},
        **extra,
    }
    if links:
        p["links"] = links
    return p


def timeseries(
    title: str,
    unit: str,
    targets: list[Json],
    description: str,
    *,
    stack: bool = False,
    minimum: float | None = 0,
    overrides: list[Json] | None = None,
    thresholds: Json | None = None,
    threshold_style: str = "off",
    legend_table: bool = False,
    links: list[Json] | None = None,
) -> Json:
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "fillOpacity": 20 if stack else 5,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
            "thresholdsStyle": {"mode": threshold_style},
        },
        "thresholds": thresholds or GREEN,
    }
    if minimum is not None:
        defaults["min"] = minimum
    legend: Json = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True}
    if legend_table:
        legend = {**legend, "calcs": ["mean", "max", "lastNotNull"], "displayMode": "table"}
    return _panel(
        "timeseries",
        title,
        unit,
        targets,
        description,
        defaults=defaults,
        overrides=overrides,
        options={"legend": legend, "tooltip": {"mode": "multi", "sort": "desc"}},
        links=links,
    )


def stat(
    title: str,
    unit: str,
    targets: list[Json],
    description: str,
    *,
    thresholds: Json | None = None,
    mappings: list[Json] | None = None,
    display_name: str | None = None,
    sparkline: bool = True,
    color_mode: str = "value",
    text_mode: str = "auto",
    links: list[Json] | None = None,
) -> Json:
    defaults: Json = {
        "color": {"mode": "thresholds"},
        "mappings": mappings or [],
        "thresholds": thresholds or GREEN,
    }
    if display_name:
        defaults["displayName"] = display_name
    return _panel(
        "stat",
        title,
        unit,
        targets,
        description,
        defaults=defaults,
        options={
            "colorMode": color_mode,
            "graphMode": "area" if sparkline else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
        links=links,
    )


def table(
    title: str,
    unit: str,
    targets: list[Json],
    description: str,
    *,
    columns: dict[str, tuple[str, str]],
    sort_by: str,
    sort_desc: bool = True,
    hide: tuple[str, ...] = ("Time", "__name__"),
    overrides: list[Json] | None = None,
    thresholds: Json | None = None,
) -> Json:
    """An instant table. `columns` maps a value field ("Value" or "Value #A") to
    (header, unit); label columns are kept. Several targets are merged by labels."""
    transformations: list[Json] = []
    if len(targets) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append(
        {
            "id": "organize",
            "options": {
                "excludeByName": dict.fromkeys(hide, True),
                "indexByName": {},
                "renameByName": {k: header for k, (header, _) in columns.items()},
            },
        }
    )
    col_overrides = [
        {
            "matcher": {"id": "byName", "options": header},
            "properties": [{"id": "unit", "value": u}],
        }
        for header, u in columns.values()
    ]
    return _panel(
        "table",
        title,
        unit,
        targets,
        description,
        defaults={
            "color": {"mode": "thresholds"},
            "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
            "thresholds": thresholds or GREEN,
        },
        overrides=col_overrides + (overrides or []),
        options={
            "cellHeight": "sm",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": [{"desc": sort_desc, "displayName": sort_by}],
        },
        transformations=transformations,
    )


def heatmap(title: str, y_unit: str, cell_unit: str, targets: list[Json], description: str) -> Json:
    return _panel(
        "heatmap",
        title,
        cell_unit,
        targets,
        description,
        defaults={"custom": {"scaleDistribution": {"type": "linear"}}},
        options={
            "calculate": False,
            "cellGap": 1,
            "cellValues": {"unit": cell_unit},
            "color": {
                "exponent": 0.5,
                "fill": "dark-orange",
                "mode": "scheme",
                "reverse": False,
                "scale": "exponential",
                "scheme": "Oranges",
                "steps": 64,
            },
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": False},
            "yAxis": {"axisPlacement": "left", "reverse": False, "unit": y_unit},
        },
    )


def histogram(title: str, unit: str, targets: list[Json], description: str) -> Json:
    return _panel(
        "histogram",
        title,
        unit,
        targets,
        description,
        defaults={"color": {"mode": "palette-classic"}, "custom": {"fillOpacity": 80}},
        options={
            "combine": True,
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom"},
        },
    )


def dashed(ref: str, color: str = "red") -> Json:
    """Override: the series of target `ref` as a dashed line without fill."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [
            {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineWidth", "value": 2},
            {"id": "custom.stacking", "value": {"group": "A", "mode": "none"}},
            {"id": "color", "value": {"fixedColor": color, "mode": "fixed"}},
        ],
    }


def link(title: str, uid: str) -> Json:
    return {
        "targetBlank": False,
        "title": title,
        "url": f"/d/{uid}?${{__all_variables}}&${{__url_time_range}}",
    }


def on_off(on: str, off: str) -> list[Json]:
    return [
        {
            "options": {
                "0": {"color": "red", "index": 1, "text": off},
                "1": {"color": "green", "index": 0, "text": on},
            },
            "type": "value",
        }
    ]


def flag_column(header: str, on: str, off: str) -> Json:
    """Override: a 0/1 table column shown as on/off text on a green/red background."""
    return {
        "matcher": {"id": "byName", "options": header},
        "properties": [
            {"id": "mappings", "value": on_off(on, off)},
            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
        ],
    }


# --------------------------------------------------------------------------- layout


class Grid:
    """Places panels left to right on Grafana's 24-column grid, wrapping as needed."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        if self.x:
            self._newline()
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self.y += 1

    def add(self, w: int, h: int, panel: Json) -> None:
        if self.x + w > 24:
            self._newline()
        self.panels.append({**panel, "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}})
        self.x += w
        self.row_h = max(self.row_h, h)

    def collapsed_row(
        self, title: str, children: list[tuple[int, int, Json]], repeat: str | None = None
    ) -> None:
        """A collapsed row (last on the dashboard) holding `children`."""
        if self.x:
            self._newline()
        inner = Grid()
        inner.y = self.y + 1
        for w, h, p in children:
            inner.add(w, h, p)
        row: Json = {
            "collapsed": True,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": inner.panels,
            "title": title,
            "type": "row",
        }
        if repeat:
            row["repeat"] = repeat
        self.panels.append(row)
        self.y += 1

    def done(self) -> list[Json]:
        for i, p in enumerate(iter_panels(self.panels), start=1):
            p["id"] = i
        return self.panels


def iter_panels(panels: list[Json]) -> Iterator[Json]:
    """Every panel, rows and the panels inside collapsed rows included."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


# --------------------------------------------------------------------------- variables


ALL: Json = {"selected": True, "text": ["All"], "value": ["$__all"]}


def datasource_var() -> Json:
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }


def query_var(name: str, label: str, query: str, all_value: str | None) -> Json:
    v: Json = {
        "current": ALL,
        "datasource": DS,
        "definition": query,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }
    if all_value is not None:
        v["allValue"] = all_value
    return v


def topn_var(default: str = "10") -> Json:
    values = ["5", "10", "20", "50"]
    return {
        "current": {"selected": True, "text": default, "value": default},
        "hide": 0,
        "includeAll": False,
        "label": "Top N",
        "multi": False,
        "name": "topn",
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "query": ",".join(values),
        "skipUrlSync": False,
        "type": "custom",
    }


def node_vars() -> list[Json]:
    # job: "All" expands to the jobs that export Linnix metrics (so `up{job=~"$job"}`
    # stays about them); instance: "All" is a plain regex, cheap with many nodes.
    return [
        datasource_var(),
        query_var("job", "Job", "label_values(linnix_node_cpus, job)", None),
        query_var(
            "instance", "Instance", 'label_values(linnix_node_cpus{job=~"$job"}, instance)', ".*"
        ),
    ]


# --------------------------------------------------------------------------- dashboards


def dashboard(key: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
    links = [
        {
            "asDropdown": False,
            "icon": "dashboard",
            "includeVars": True,
            "keepTime": True,
            "tags": [],
            "targetBlank": False,
            "title": TITLES[other],
            "tooltip": "",
            "type": "link",
            "url": f"/d/{UIDS[other]}",
        }
        for other in UIDS
        if other != key
    ]
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": links,
        "liveNow": False,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": TITLES[key],
        "uid": UIDS[key],
        "version": 1,
        "weekStart": "",
    }


def overview() -> Json:
    g = Grid()
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
            "(our probes' kernel run time + exporter CPU) / (interval x online CPUs), against "
            "the budget (--overhead-budget, dashed).",
            overrides=[dashed("B")],
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Overhead split: probes' kernel time and exporter CPU (share of the node)",
            "percentunit",
            [
                target(sel("linnix_probes_cpu_ratio"), "{{instance}} probes (kernel)"),
                target(sel("linnix_exporter_cpu_ratio"), "{{instance}} exporter CPU"),
            ],
            "The two parts of the overhead, stacked: kernel run time of the Linnix probes and "
            "CPU of the exporter process (helpers included).",
            stack=True,
            legend_table=True,
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Overhead now (share of the node)",
            "percentunit",
            [target(sel("linnix_overhead_ratio"), "{{instance}}")],
            "Last overhead ratio: 100% = every CPU of the node busy.",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Budget used",
            "percentunit",
            [
                target(
                    f"{sel('linnix_overhead_ratio')} / {sel('linnix_overhead_budget_ratio')}",
                    "{{instance}}",
                )
            ],
            "Overhead / budget: over 100% the node breaks its budget.",
            thresholds=_thresholds((None, "green"), (0.8, "orange"), (1, "red")),
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Overhead now (share of one core)",
            "percentunit",
            [target(sel("linnix_overhead_core_ratio"), "{{instance}}")],
            "The same overhead as a share of one core (can exceed 100%).",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "BPF statistics",
            "bool_on_off",
            [target(sel("linnix_bpf_stats_enabled"), "{{instance}} {{method}}", instant=True)],
            "Whether the kernel accumulates BPF run time, and how it was turned on "
            "(enable_stats_fd, sysctl, already_on, off). Off: program run times do not move.",
            mappings=on_off("on", "off"),
            display_name="${__field.labels.instance}: ${__field.labels.method}",
            sparkline=False,
            color_mode="background",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Probes attached",
            "bool_on_off",
            [target(sel("linnix_probes_attached"), "{{instance}}", instant=True)],
            "1 if the Linnix probes are loaded (checked against the kernel's program list).",
            mappings=on_off("attached", "detached"),
            sparkline=False,
            color_mode="background",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Online CPUs",
            "short",
            [target(sel("linnix_node_cpus"), "{{instance}}", instant=True)],
            "Online CPUs of the node: the denominator of every node share.",
            sparkline=False,
        ),
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
                [target(f"topk($topn, sum by (comm) ({rate(metric)}))", "{{comm}}")],
                desc + ' Over the selected nodes; "[other]" adds up unlisted commands.',
                legend_table=True,
            ),
        )
    g.add(
        12,
        8,
        timeseries(
            "CPU of exited tasks by command (share of one core)",
            "percentunit",
            [
                target(
                    f"topk($topn, sum by (comm) ({rate('linnix_exited_task_cpu_seconds_total')}))",
                    "{{comm}}",
                )
            ],
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
            [
                target(
                    "topk($topn, sum by (comm) "
                    f"({increase('linnix_exited_task_cpu_seconds_total')}))",
                    instant=True,
                    fmt="table",
                )
            ],
            "CPU seconds burned by tasks that exited during the dashboard's time range, by "
            "command, over the selected nodes.",
            columns={"Value": ("CPU time", "s")},
            sort_by="CPU time",
        ),
    )
    g.add(
        12,
        8,
        heatmap(
            "Process lifetime",
            "s",
            "ops",
            [
                target(
                    f"sum by (le) ({rate('linnix_process_lifetime_seconds_bucket')})",
                    "{{le}}",
                    fmt="heatmap",
                )
            ],
            "Processes (thread-group leaders) exiting per second by fork-to-exit lifetime, "
            "log2 buckets, over the selected nodes.",
        ),
    )
    life = "linnix_process_lifetime_seconds"
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

    g.row("Exporter")
    g.add(
        8,
        8,
        timeseries(
            "Exporter CPU by mode (share of one core)",
            "percentunit",
            [target(rate("linnix_exporter_cpu_seconds_total"), "{{instance}} {{mode}}")],
            "CPU of the exporter, including the helper processes it started and reaped.",
            stack=True,
        ),
    )
    g.add(
        8,
        8,
        timeseries(
            "Exporter resident memory",
            "bytes",
            [target(sel("linnix_exporter_resident_memory_bytes"), "{{instance}}")],
            "Resident set size of the exporter.",
        ),
    )
    g.add(
        8,
        8,
        timeseries(
            "Collection: duration and interval",
            "s",
            [
                target(sel("linnix_exporter_collect_duration_seconds"), "{{instance}} duration"),
                target(sel("linnix_overhead_interval_seconds"), "{{instance}} interval"),
            ],
            "Wall time of the last collection, and the measured interval the ratios cover.",
        ),
    )
    g.add(
        6,
        4,
        stat(
            "Exporter version",
            "short",
            [target(sel("linnix_exporter_build_info"), "{{instance}}", instant=True)],
            "Version of the exporter (and of Python) on each node.",
            display_name="${__field.labels.version} (Python ${__field.labels.python_version})",
            sparkline=False,
            text_mode="name",
        ),
    )
    g.add(
        6,
        4,
        stat(
            "Last collection age",
            "s",
            [target(f"time() - {sel('linnix_exporter_last_collect_timestamp_seconds')}")],
            "Seconds since the exporter's last collection: grows when collection is stuck.",
            thresholds=_thresholds((None, "green"), (60, "red")),
        ),
    )
    g.add(
        6,
        4,
        stat(
            "Collections per second",
            "ops",
            [target(rate("linnix_exporter_collections_total"), "{{instance}}")],
            "Ticks (kernel reads) per second: 1 / --collect.interval.",
        ),
    )
    g.add(
        6,
        4,
        stat(
            'Commands in "[other]"',
            "short",
            [target(sel("linnix_process_unlisted_comms"), "{{instance}}")],
            'Command names without their own series, added up in comm="[other]".',
        ),
    )
    return dashboard(
        "overview",
        "What eBPF costs the node: Linnix overhead against its budget, and what the Linnix "
        "process probes see.",
        [*node_vars(), topn_var()],
        g.done(),
    )


def programs() -> Json:
    name = 'name=~"$name"'
    prog_legend = "{{instance}} {{name}} #{{id}}"
    g = Grid()
    g.row("Node")
    g.add(
        4,
        4,
        stat(
            "Programs loaded",
            "short",
            [target(sel("linnix_bpf_programs"), "{{instance}}")],
            "BPF programs loaded on the node.",
        ),
    )
    g.add(
        4,
        4,
        stat(
            'Programs in "[other]"',
            "short",
            [target(sel("linnix_bpf_unlisted_programs"), "{{instance}}")],
            'Programs without their own series, added up in name="[other]".',
        ),
    )
    g.add(
        4,
        4,
        stat(
            "All programs (share of the node)",
            "percentunit",
            [target(sel("linnix_bpf_cpu_ratio"), "{{instance}}")],
            "Kernel run time of every BPF program as a share of the node.",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Linnix probes (share of the node)",
            "percentunit",
            [target(sel("linnix_probes_cpu_ratio"), "{{instance}}")],
            "Kernel run time of the exporter's own probes as a share of the node.",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Runs per second (all programs)",
            "ops",
            [target(rate("linnix_bpf_runs_total"), "{{instance}}")],
            "Runs of every BPF program on the node.",
        ),
    )
    g.add(
        4,
        4,
        stat(
            "Statistics read by",
            "short",
            [target(sel("linnix_bpf_read_method"), "{{instance}}", instant=True)],
            "iterator: one BPF iterator read for all programs; syscall: bpf() per program.",
            mappings=[{"options": {"1": {"index": 0, "text": "in use"}}, "type": "value"}],
            display_name="${__field.labels.instance}: ${__field.labels.method}",
            sparkline=False,
        ),
    )

    g.row("Every program")
    g.add(
        24,
        10,
        table(
            "Programs",
            "percentunit",
            [
                target(sel("linnix_bpf_program_cpu_ratio", name), instant=True, fmt="table"),
                target(rate("linnix_bpf_program_runs_total", name), instant=True, fmt="table"),
                target(ns_per_run(name), instant=True, fmt="table"),
                target(
                    rate("linnix_bpf_program_recursion_misses_total", name),
                    instant=True,
                    fmt="table",
                ),
                target(
                    increase("linnix_bpf_program_run_time_seconds_total", name),
                    instant=True,
                    fmt="table",
                ),
            ],
            "Every listed program (the exporter keeps its top N by run time, ours always; "
            'the rest add up in "[other]"). Run time only advances while BPF statistics are on.',
            columns={
                "Value #A": ("CPU (share of node)", "percentunit"),
                "Value #B": ("runs/s", "ops"),
                "Value #C": ("ns/run", "ns"),
                "Value #D": ("recursion misses/s", "ops"),
                "Value #E": ("run time in range", "s"),
            },
            sort_by="CPU (share of node)",
            hide=("Time", "__name__", "job"),
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "CPU by program (share of the node)",
            "percentunit",
            [target(f"topk($topn, {sel('linnix_bpf_program_cpu_ratio', name)})", prog_legend)],
            "Kernel run time of each program over the last interval as a share of the node.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Runs per second by program",
            "ops",
            [target(f"topk($topn, {rate('linnix_bpf_program_runs_total', name)})", prog_legend)],
            "How often each program runs.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Average run time per run by program",
            "ns",
            [target(f"topk($topn, {ns_per_run(name)})", prog_legend)],
            "rate(run time) / rate(runs): the cost of one run. Programs that did not run in "
            "the window are left out.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Recursion misses per second by program",
            "ops",
            [
                target(
                    f"topk($topn, {rate('linnix_bpf_program_recursion_misses_total', name)})",
                    prog_legend,
                )
            ],
            "Runs skipped because the program was already running on that CPU: events the "
            "program never saw.",
            legend_table=True,
        ),
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
                target(
                    "max by (job, instance, id, type, ours) "
                    f"({sel('linnix_bpf_program_cpu_ratio', name)}) "
                    "* on (job, instance, id) group_right (type, ours) "
                    f"{sel('linnix_bpf_program_owner_info', name)}",
                    instant=True,
                    fmt="table",
                )
            ],
            "Processes holding a program or link fd of each listed program (one row per "
            "owner), with the program's CPU share. Programs held by nobody (pinned) are absent.",
            columns={"Value": ("CPU (share of node)", "percentunit")},
            sort_by="CPU (share of node)",
            hide=("Time", "__name__", "job"),
        ),
    )

    g.row("Top $topn programs")
    tops = (
        ("by CPU (share of node)", sel("linnix_bpf_program_cpu_ratio", name), "percentunit"),
        ("by runs/s", rate("linnix_bpf_program_runs_total", name), "ops"),
        ("by ns/run", ns_per_run(name), "ns"),
    )
    for what, expr, unit in tops:
        g.add(
            8,
            9,
            table(
                f"Top $topn programs {what}",
                unit,
                [target(f"topk($topn, {expr})", instant=True, fmt="table")],
                f"The $topn programs of the selected nodes {what}, now.",
                columns={"Value": (what.removeprefix("by "), unit)},
                sort_by=what.removeprefix("by "),
                hide=("Time", "__name__", "job", "tag"),
            ),
        )

    one = 'name=~"$name"'
    g.collapsed_row(
        "Program: $name",
        [
            (
                8,
                7,
                timeseries(
                    "$name: CPU (share of the node)",
                    "percentunit",
                    [target(sel("linnix_bpf_program_cpu_ratio", one), "{{instance}} #{{id}}")],
                    "Kernel run time of this program as a share of the node.",
                ),
            ),
            (
                8,
                7,
                timeseries(
                    "$name: runs per second",
                    "ops",
                    [target(rate("linnix_bpf_program_runs_total", one), "{{instance}} #{{id}}")],
                    "Runs of this program.",
                ),
            ),
            (
                8,
                7,
                timeseries(
                    "$name: average run time per run",
                    "ns",
                    [target(ns_per_run(one), "{{instance}} #{{id}}")],
                    "rate(run time) / rate(runs) of this program.",
                ),
            ),
        ],
        repeat="name",
    )
    return dashboard(
        "programs",
        "Every BPF program on the node (Linnix probes and everybody else's): CPU, runs, cost "
        "per run, recursion misses and owners.",
        [
            *node_vars(),
            query_var(
                "name",
                "Program",
                'label_values(linnix_bpf_program_runs_total{job=~"$job", instance=~"$instance"}'
                ", name)",
                ".*",
            ),
            topn_var(),
        ],
        g.done(),
    )


def fleet() -> Json:
    budget_used = f"{sel('linnix_overhead_ratio')} / {sel('linnix_overhead_budget_ratio')}"
    overview_link = (
        f"/d/{UIDS['overview']}?${{datasource:queryparam}}&var-job=${{__data.fields.job}}"
        "&var-instance=${__data.fields.instance}&${__url_time_range}"
    )
    instance_link = {
        "matcher": {"id": "byName", "options": "instance"},
        "properties": [
            {"id": "links", "value": [{"title": "Node overview", "url": overview_link}]}
        ],
    }
    problem = _thresholds((None, "green"), (1, "red"))
    g = Grid()
    g.row("Budget")
    for title, expr, desc, th in (
        ("Nodes reporting", f"count({sel('linnix_node_cpus')})", "Nodes with an exporter.", None),
        (
            "Nodes over budget",
            f"count({budget_used} > 1) or vector(0)",
            "Nodes whose overhead is above their budget now.",
            problem,
        ),
        (
            "Probes detached",
            f"count({sel('linnix_probes_attached')} == 0) or vector(0)",
            "Nodes whose Linnix probes are not loaded.",
            problem,
        ),
        (
            "BPF statistics off",
            f"count({sel('linnix_bpf_stats_enabled')} == 0) or vector(0)",
            "Nodes where the kernel does not accumulate BPF run time.",
            problem,
        ),
        (
            "Targets down",
            f"count({sel('up')} == 0) or vector(0)",
            "Exporters Prometheus could not scrape.",
            problem,
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
            [target(f"topk($topn, {budget_used})", "{{instance}}")],
            "Overhead / budget per node. The dashed line is the budget.",
            thresholds=_thresholds((None, "green"), (1, "red")),
            threshold_style="dashed",
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        table(
            "Nodes by budget used",
            "percentunit",
            [
                target(budget_used, instant=True, fmt="table"),
                target(
                    f"max_over_time(({budget_used})[$__range:$__interval])",
                    instant=True,
                    fmt="table",
                ),
                # No __name__ in any of them: rows merge on the labels the tables share.
                target(
                    f"avg_over_time({sel('linnix_overhead_ratio')}[$__range])",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"max by (job, instance) ({sel('linnix_node_cpus')})",
                    instant=True,
                    fmt="table",
                ),
            ],
            "Budget used now and at worst over the time range (over 100%: over budget), mean "
            "overhead over the range. Click an instance for its overview.",
            columns={
                "Value #A": ("budget used", "percentunit"),
                "Value #B": ("max budget used in range", "percentunit"),
                "Value #C": ("mean overhead in range (share of node)", "percentunit"),
                "Value #D": ("CPUs", "short"),
            },
            sort_by="max budget used in range",
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": "budget used.*"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {
                            "id": "thresholds",
                            "value": _thresholds((None, "green"), (0.8, "orange"), (1, "red")),
                        },
                    ],
                },
                instance_link,
            ],
        ),
    )

    g.row("Distribution over nodes")
    g.add(
        12,
        8,
        timeseries(
            "Overhead across nodes: quantiles (share of the node)",
            "percentunit",
            [
                target(f"min({sel('linnix_overhead_ratio')})", "min"),
                *(
                    target(f"quantile({q}, {sel('linnix_overhead_ratio')})", f"p{round(q * 100)}")
                    for q in (0.5, 0.9, 0.99)
                ),
                target(f"max({sel('linnix_overhead_ratio')})", "max"),
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
            [
                target(
                    f"avg_over_time({sel('linnix_overhead_ratio')}[$__range])",
                    "{{instance}}",
                    instant=True,
                )
            ],
            "How many nodes spend how much on Linnix, averaged over the time range.",
        ),
    )
    g.add(
        12,
        8,
        table(
            "Node health",
            "short",
            [
                # Aggregated by node: no __name__, so the tables merge into one row per node.
                target(f"max by (job, instance) ({sel('up')})", instant=True, fmt="table"),
                target(
                    f"max by (job, instance) ({sel('linnix_probes_attached')})",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"max by (job, instance, method) ({sel('linnix_bpf_stats_enabled')})",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"max by (job, instance) ({increase('linnix_exporter_collect_errors_total')})",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"max by (job, instance) ({sel('linnix_exporter_resident_memory_bytes')})",
                    instant=True,
                    fmt="table",
                ),
            ],
            "Every node: scraped, probes attached, BPF statistics on (and how), failed "
            "collections over the time range, exporter memory. Problems sort first.",
            columns={
                "Value #A": ("scrape", "short"),
                "Value #B": ("probes", "short"),
                "Value #C": ("BPF statistics", "short"),
                "Value #D": ("collection errors in range", "short"),
                "Value #E": ("exporter RSS", "bytes"),
            },
            sort_by="probes",
            sort_desc=False,
            overrides=[
                flag_column("scrape", "up", "down"),
                flag_column("probes", "attached", "detached"),
                flag_column("BPF statistics", "on", "off"),
                {
                    "matcher": {"id": "byName", "options": "collection errors in range"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                        {"id": "thresholds", "value": problem},
                    ],
                },
                instance_link,
            ],
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Forks per second (top $topn nodes)",
            "ops",
            [target(f"topk($topn, {rate('linnix_process_forks_total')})", "{{instance}}")],
            "Fork storms across the fleet; the node overview says who is forking.",
            legend_table=True,
        ),
    )

    g.row("Programs across the fleet")
    cores = f"sum by (name, type, ours) ({rate('linnix_bpf_program_run_time_seconds_total')})"
    top = f"topk($topn, {cores})"
    g.add(
        12,
        9,
        timeseries(
            "Top $topn programs across the fleet (CPU, share of one core)",
            "percentunit",
            [
                target(
                    "topk($topn, sum by (name) "
                    f"({rate('linnix_bpf_program_run_time_seconds_total')}))",
                    "{{name}}",
                )
            ],
            "Kernel run time of each program name summed over the nodes: 100% = one core.",
            legend_table=True,
        ),
    )
    g.add(
        12,
        9,
        table(
            "Top $topn programs across the fleet",
            "percentunit",
            [
                target(top, instant=True, fmt="table"),
                target(
                    "max by (name, type, ours) "
                    f"({sel('linnix_bpf_program_cpu_ratio')}) and on (name, type, ours) {top}",
                    instant=True,
                    fmt="table",
                ),
                target(
                    "count by (name, type, ours) (count by (job, instance, name, type, ours) "
                    f"({sel('linnix_bpf_program_cpu_ratio')})) and on (name, type, ours) {top}",
                    instant=True,
                    fmt="table",
                ),
            ],
            "Programs by name: CPU summed over the nodes (100% = one core), the worst node's "
            "share, and on how many nodes the program runs.",
            columns={
                "Value #A": ("CPU, all nodes (share of one core)", "percentunit"),
                "Value #B": ("worst node (share of node)", "percentunit"),
                "Value #C": ("nodes", "short"),
            },
            sort_by="CPU, all nodes (share of one core)",
        ),
    )
    g.add(
        12,
        8,
        timeseries(
            "Exporter resident memory across the fleet",
            "bytes",
            [
                target(f"max({sel('linnix_exporter_resident_memory_bytes')})", "max"),
                target(f"quantile(0.5, {sel('linnix_exporter_resident_memory_bytes')})", "p50"),
            ],
            "Resident set size of the exporters.",
        ),
    )
    exporter_cpu = f"sum by (job, instance) ({rate('linnix_exporter_cpu_seconds_total')})"
    g.add(
        12,
        8,
        timeseries(
            "Exporter CPU across the fleet (share of one core)",
            "percentunit",
            [
                target(f"max({exporter_cpu})", "max"),
                target(f"quantile(0.5, {exporter_cpu})", "p50"),
            ],
            "CPU of the exporter processes (helpers included) per node: worst and median.",
        ),
    )
    return dashboard(
        "fleet",
        "Linnix over many nodes: who breaks the overhead budget, how the overhead is "
        "distributed, which BPF programs cost the most across the fleet.",
        [*node_vars(), topn_var()],
        g.done(),
    )


def dashboards() -> dict[str, Json]:
    """File name -> dashboard."""
    return {FILES["overview"]: overview(), FILES["programs"]: programs(), FILES["fleet"]: fleet()}


def render(d: Json) -> str:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- for tests

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def variable_defaults(dashboard: Json) -> dict[str, str]:
    """Each variable's value when nothing is chosen: "All" as its regex, else current."""
    out: dict[str, str] = {}
    for v in dashboard.get("templating", {}).get("list", []):
        if v["type"] == "datasource":
            continue
        if v.get("includeAll"):
            out[v["name"]] = v.get("allValue") or ".+"
        else:
            cur = v.get("current", {}).get("value", "")
            out[v["name"]] = cur[0] if isinstance(cur, list) else cur
    return out


def queries(dashboard: Json, variables: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted:
    `variables` first, then the dashboard's own defaults; Grafana's $__rate_interval,
    $__interval and $__range become 1m, 15s and 5m. An unknown variable raises KeyError."""
    values = {**variable_defaults(dashboard), **variables, **BUILTINS}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():  # a regex group reference ($1, ${1}): Grafana leaves it too
            return m.group(0)
        if name == "datasource":
            raise ValueError("${datasource} in an expression")
        return values[name]

    out: list[tuple[str, str]] = []
    for p in iter_panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            out.append((p.get("title", ""), _VAR.sub(sub, t["expr"])))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"(?<![A-Za-z0-9_:])linnix_[A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """linnix_* metric names in a PromQL expression (string literals ignored); a
    histogram's _bucket/_sum/_count series map to the family name."""
    from linnix_exporter.figures import FAMILIES

    names = set()
    for n in _NAME.findall(_STRING.sub('""', expr)):
        for suffix in ("_bucket", "_sum", "_count"):
            base = n.removesuffix(suffix)
            if base != n and base in FAMILIES and FAMILIES[base].kind == "histogram":
                n = base
                break
        names.add(n)
    return names


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is stale")
    args = ap.parse_args(argv)
    rendered = {name: render(d) for name, d in dashboards().items()}
    if args.check:
        stale = [
            name
            for name, text in rendered.items()
            if not (HERE / name).is_file() or (HERE / name).read_text() != text
        ]
        if stale:
            files = ", ".join(f"dashboards/{n}" for n in stale)
            print(f"stale: {files} (run python dashboards/generate.py)", file=sys.stderr)
            return 1
        return 0
    for name, text in rendered.items():
        (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
