"""Every shipped dashboard type-checks against Grafana's own published types.

No Grafana server can be installed here, but Grafana publishes its dashboard schema as
TypeScript types (the npm package @grafana/schema, generated from the same CUE schema
Grafana validates with). Each dashboards/*.json becomes a TypeScript module that assigns
the dashboard, every panel, and every panel's `options` and `fieldConfig.defaults.custom`
to the matching type (Dashboard, Panel/RowPanel, and the panel plugin's Options and
FieldConfig), and the TypeScript compiler checks it: unknown fields (object literals get
excess-property checks), wrong types, and values outside an enum fail. Fields left out
are not errors: Grafana fills in its defaults (the generated types mark every field
with a default as required, since a dashboard saved by Grafana carries them all).

The schema is the one of the Grafana release whose dashboard schemaVersion the files
carry (38: Grafana 10.0-10.2); newer Grafana migrates them on load. Versions are pinned
in tests/grafana_schema/package.json and package-lock.json; `npm ci` runs once (offline
afterwards). JSON has no enums, so enum-typed fields take the enum's values (`Json<T>`
below), exactly what Grafana reads from a dashboard file.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_helpers import REPO

NPM_DIR = REPO / "tests" / "grafana_schema"
SCHEMA = NPM_DIR / "node_modules" / "@grafana" / "schema"
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))

# JSON spelling of a schema type: string enums become the union of their values
# (`${E}`); the rest is mapped member by member, so optional fields stay optional and
# object literals still get excess-property checks.
PRELUDE = """\
import type { Dashboard, Panel, RowPanel } from "@grafana/schema";
type Json<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]?: Json<T[K]> }
      : T;
"""

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "module": "esnext",
        "moduleResolution": "bundler",
        "target": "es2022",
        "skipLibCheck": True,
        "types": [],
    },
    "include": ["*.ts"],
}


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """`npm ci` from the committed lock file, once; no network afterwards."""
    npm = shutil.which("npm")
    assert npm, "npm is missing: scripts/setup.sh installs nodejs and npm"
    lock = NPM_DIR / "package-lock.json"
    stamp = NPM_DIR / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        out = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NPM_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
    return NPM_DIR / "node_modules"


def panel_modules() -> dict[str, tuple[str, set[str]]]:
    """Panel type -> (import path of its Options/FieldConfig module, exported names)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for dts in SCHEMA.glob("dist/esm/raw/composable/*/panelcfg/x/*_types.gen.d.ts"):
        kind = dts.relative_to(SCHEMA / "dist/esm/raw/composable").parts[0]
        names = set(re.findall(r"export (?:interface|type|declare enum) (\w+)", dts.read_text()))
        module = str(dts.relative_to(SCHEMA)).removesuffix(".d.ts")
        out[kind] = (f"@grafana/schema/{module}", names)
    return out


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # collapsed rows hold theirs


def schema_spelling(board: dict[str, Any]) -> dict[str, Any]:
    """Two spellings Grafana itself writes when it saves a dashboard, but its schema
    types lack, checked here and then rewritten as the types have them:
    - `definition` on a query variable: the query repeated for the variables list;
    - a table footer's `fields: ""` ("every field"; the types say string[], where []
      means the same)."""
    board = copy.deepcopy(board)
    for v in board.get("templating", {}).get("list", []):
        if "definition" in v:
            assert v["type"] == "query", v["name"]
            q = v["query"]
            assert v.pop("definition") == (q["query"] if isinstance(q, dict) else q), v["name"]
    for p in all_panels(board.get("panels", [])):
        footer = p.get("options", {}).get("footer", {}) if p["type"] == "table" else {}
        if footer.get("fields") == "":
            footer["fields"] = []
    return board


def typescript_module(board: dict[str, Any], modules: dict[str, tuple[str, set[str]]]) -> str:
    """The dashboard as TypeScript declarations that the compiler checks."""
    board = schema_spelling(board)
    lines = [PRELUDE]
    used: set[str] = set()
    decls = [f"export const dashboard: Json<Dashboard> = {json.dumps(board)};"]
    for i, p in enumerate(all_panels(board.get("panels", []))):
        kind = p["type"]
        panel_type = "RowPanel" if kind == "row" else "Panel"
        decls.append(f"export const panel{i}: Json<{panel_type}> = {json.dumps(p)};")
        if kind == "row":
            continue
        assert kind in modules, f"panel type {kind}: no types in @grafana/schema"
        names = modules[kind][1]
        used.add(kind)
        if "options" in p:
            decls.append(f"export const panel{i}_options: Json<{kind}.Options> = ")
            decls[-1] += f"{json.dumps(p['options'])};"
        custom = p.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            if "FieldConfig" in names:
                decls.append(f"export const panel{i}_custom: Json<{kind}.FieldConfig> = ")
                decls[-1] += f"{json.dumps(custom)};"
            else:
                assert custom == {}, f"{kind} panels have no custom field config"
    for kind in sorted(used):
        lines.append(f'import type * as {kind} from "{modules[kind][0]}";')
    return "\n".join([*lines, *decls, ""])


def tsc(
    node_modules: Path, workdir: Path, sources: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    (workdir / "node_modules").symlink_to(node_modules)
    (workdir / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    for name, text in sources.items():
        (workdir / name).write_text(text)
    return subprocess.run(
        ["node", str(node_modules / "typescript" / "bin" / "tsc"), "-p", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_versions_are_pinned() -> None:
    pkg = json.loads((NPM_DIR / "package.json").read_text())
    for name, version in pkg["devDependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}@{version}: pin exactly"
    lock = json.loads((NPM_DIR / "package-lock.json").read_text())
    for name, version in pkg["devDependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_every_dashboard_type_checks(node_modules: Path, tmp_path: Path) -> None:
    assert DASHBOARDS, "no dashboards/*.json"
    for path in DASHBOARDS:
        # The pinned schema is Grafana 10.2's: pin another with another schemaVersion.
        assert json.loads(path.read_text())["schemaVersion"] == 38, path.name
    modules = panel_modules()
    sources = {
        f"{path.stem.replace('-', '_')}.ts": typescript_module(
            json.loads(path.read_text()), modules
        )
        for path in DASHBOARDS
    }
    out = tsc(node_modules, tmp_path, sources)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


SPOILS: dict[str, tuple[Any, str]] = {
    # An unknown field in a panel's options (a typo of legend.displayMode).
    "unknown_option": (lambda p: p["options"]["legend"].update(displaymode="list"), "TS2353"),
    # A value outside the enum of a field config (drawStyle is line/bars/points).
    "enum_value": (
        lambda p: p["fieldConfig"]["defaults"]["custom"].update(drawStyle="area"),
        "TS2322",
    ),
    # A wrong type at the panel level (gridPos.w is a number).
    "field_type": (lambda p: p["gridPos"].update(w="12"), "TS2322"),
}


def test_a_spoiled_dashboard_fails(node_modules: Path, tmp_path: Path) -> None:
    """The check can fail: each spoiling of a real timeseries panel is refused, with
    the error it causes, in its own file."""
    sources = {}
    for name, (spoil, _) in SPOILS.items():
        board = json.loads(DASHBOARDS[0].read_text())
        spoil(next(p for p in all_panels(board["panels"]) if p["type"] == "timeseries"))
        sources[f"{name}.ts"] = typescript_module(board, panel_modules())
    out = tsc(node_modules, tmp_path, sources)
    assert out.returncode != 0
    for name, (_, error) in SPOILS.items():
        assert re.search(rf"{name}\.ts\(\d+,\d+\): error {error}", out.stdout), (name, out.stdout)
