"""What a dashboard holds around its panels: the grid that places them, the template
variables (datasource, job, instance, topn) and the dashboard envelope with its links to
the other Linnix dashboards."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dashboards.panels import DS, Json

SCHEMA_VERSION = 38
TAGS = ["linnix"]

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

    def add_each(self, w: int, h: int, panels: Iterable[Json]) -> None:
        """`add` each of `panels`, all of one size."""
        for panel in panels:
            self.add(w, h, panel)

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


# --------------------------------------------------------------------------- dashboard


def dashboard(key: str, description: str, variables: list[Json], panels: list[Json]) -> Json:
    """The dashboard `key` ("overview", "programs", "fleet") around `panels`, linked to
    the other two (the links keep the time range and the variables)."""
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
