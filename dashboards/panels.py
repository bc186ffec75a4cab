"""Grafana panel JSON builders: targets, the panel kinds the dashboards use (time series,
stat, table, heatmap, histogram), thresholds, field overrides and panel links.

Every panel and target uses the `${datasource}` template variable (no `__inputs`), so the
same files work imported by hand and provisioned from disk.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

DS: Json = {"type": "prometheus", "uid": "${datasource}"}


# --------------------------------------------------------------------------- targets


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


def table_target(expr: str) -> Json:
    """An instant query in table format: one column of a `table` panel."""
    return target(expr, instant=True, fmt="table")


def ref(i: int) -> str:
    """The refId of a panel's `i`-th target: A, B, C, ..."""
    return chr(ord("A") + i)


def _with_refs(targets: list[Json]) -> list[Json]:
    return [{**t, "refId": ref(i)} for i, t in enumerate(targets)]


# --------------------------------------------------------------------------- thresholds


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for v, c in steps],
    }


GREEN = thresholds((None, "green"))
# 1 or more is a problem (a count of broken nodes, errors, budget used).
PROBLEM = thresholds((None, "green"), (1, "red"))
# Budget used: orange from 80%, red over budget.
BUDGET = thresholds((None, "green"), (0.8, "orange"), (1, "red"))


# --------------------------------------------------------------------------- panels


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


def node_stat(
    title: str, unit: str, expr: str, description: str, *, instant: bool = False, **options: Any
) -> Json:
    """A stat of one query, one value per node (legend `{{instance}}`); `options` go to
    `stat`. Instant where only the last value means anything (a state, a version)."""
    return stat(
        title, unit, [target(expr, "{{instance}}", instant=instant)], description, **options
    )


def on_off_stat(
    title: str,
    expr: str,
    legend: str,
    description: str,
    *,
    on: str,
    off: str,
    display_name: str | None = None,
) -> Json:
    """A 0/1 state per node, shown as `on`/`off` text on a green/red background."""
    return stat(
        title,
        "bool_on_off",
        [target(expr, legend, instant=True)],
        description,
        mappings=on_off(on, off),
        display_name=display_name,
        sparkline=False,
        color_mode="background",
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


def merged_table(
    title: str,
    unit: str,
    columns: list[tuple[str, str, str]],
    description: str,
    **options: Any,
) -> Json:
    """A `table` of several instant queries merged into one row per label set: one
    (PromQL, header, unit) per value column, in order; `options` go to `table`. The
    queries must share their labels and carry no `__name__`, or the rows do not merge."""
    return table(
        title,
        unit,
        [table_target(expr) for expr, _, _ in columns],
        description,
        columns={f"Value #{ref(i)}": (header, u) for i, (_, header, u) in enumerate(columns)},
        **options,
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


# --------------------------------------------------------------------------- overrides, links


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


def colored_column(header: str, cell: str, steps: Json, *, regex: bool = False) -> Json:
    """Override: table column(s) named `header` (a regex if `regex`) colored by `steps`;
    `cell` is "color-background" or "color-text"."""
    return {
        "matcher": {"id": "byRegexp" if regex else "byName", "options": header},
        "properties": [
            {"id": "custom.cellOptions", "value": {"type": cell}},
            {"id": "thresholds", "value": steps},
        ],
    }
