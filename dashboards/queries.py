"""Reading the queries back out of a dashboard, for tests: every target's PromQL with the
template variables substituted, and the linnix_* metric names an expression uses. Tests
check the names against the metric catalogue, the syntax with promtool, and the results
against a Prometheus."""

from __future__ import annotations

import re

from dashboards.board import iter_panels
from dashboards.panels import Json

# What queries() puts in place of Grafana's interval variables.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

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
