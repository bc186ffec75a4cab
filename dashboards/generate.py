#!/usr/bin/env python3
# ruff: noqa: E402 (the sibling imports follow the sys.path shim for script runs)
"""Grafana dashboards for linnix-exporter, generated as classic dashboard JSON.

    python dashboards/generate.py          # (re)write dashboards/*.json
    python dashboards/generate.py --check  # exit 1, naming the stale file(s), if they differ

Every panel and target uses the `${datasource}` template variable (no `__inputs`), so
the same files work imported by hand and provisioned from disk. Queries use raw
exporter metrics only (no recording rules), filtered by `$job` and `$instance`, with
rate windows of `$__rate_interval`.

This module is the entry point; the dashboards live in overview.py, programs.py and
fleet.py, built with promql.py, panels.py and board.py. `queries()` and `metric_names()`
(queries.py, importable from here too) let tests check every expression.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

if not __package__:
    # Run as a script, sys.path[0] is dashboards/ itself: put the repository root first so
    # that the sibling modules import as `dashboards.*`, the same as under tests.
    sys.path.insert(0, str(ROOT))

from dashboards.board import iter_panels
from dashboards.fleet import fleet
from dashboards.overview import overview
from dashboards.panels import Json
from dashboards.programs import programs
from dashboards.queries import BUILTINS, metric_names, queries, variable_defaults

__all__ = [
    "BUILTINS",
    "FILES",
    "HERE",
    "dashboards",
    "iter_panels",
    "main",
    "metric_names",
    "queries",
    "render",
    "variable_defaults",
]

FILES = {
    "overview": "linnix-overview.json",
    "programs": "linnix-bpf-programs.json",
    "fleet": "linnix-fleet.json",
}


def dashboards() -> dict[str, Json]:
    """File name -> dashboard."""
    return {FILES["overview"]: overview(), FILES["programs"]: programs(), FILES["fleet"]: fleet()}


def render(d: Json) -> str:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
