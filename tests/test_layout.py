"""The package's layout, read from the source with ast (nothing imported): no module of
linnix_exporter/ imports one that imports it back (directly or through others; imports
inside functions and under TYPE_CHECKING count too, since either makes a circle a reader
must follow), the data modules stay clear of the kernel layer and the loop, and cli.py
stays small (wiring.py builds the daemon)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "linnix_exporter"


def module_name(path: Path, top: Path = REPO) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every linnix_exporter module `path` imports, anywhere in the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports a module; `from mod import name` the module.
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            if n in known:
                out.add(n)
    return out


def graph(root: Path = PKG) -> dict[str, set[str]]:
    files = {module_name(p, root.parent): p for p in root.rglob("*.py")}
    known = set(files)
    # A package's own __init__ (nearly empty here) is not an edge worth following.
    return {m: imports_of(p, known) - {m, "linnix_exporter"} for m, p in files.items()}


def reach(g: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for n in g.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_graph_is_read() -> None:
    g = graph()
    # Known edges, so an empty graph (a broken reader) cannot pass the tests below.
    assert "linnix_exporter.tick" in g["linnix_exporter.figures"]
    assert "linnix_exporter.wiring" in g["linnix_exporter.cli"]
    assert "linnix_exporter.kernel.prog_iter" in g["linnix_exporter.kernel.iter_loader"]


def test_no_import_circles() -> None:
    g = graph()
    circles = sorted(m for m in g if m in reach(g, m))
    assert not circles, f"modules that import themselves back: {circles}"


def test_cycle_finder_finds_one(tmp_path: Path) -> None:
    pkg = tmp_path / "linnix_exporter"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from linnix_exporter.b import x\n")
    (pkg / "b.py").write_text("from linnix_exporter import a\nx = 1\n")
    (pkg / "c.py").write_text("from linnix_exporter import b\n")
    g = graph(pkg)
    assert g["linnix_exporter.a"] == {"linnix_exporter.b"}  # the import inside f() counts
    assert "linnix_exporter.a" in reach(g, "linnix_exporter.a")
    assert "linnix_exporter.c" not in reach(g, "linnix_exporter.c")


def test_data_modules_do_not_pull_in_the_kernel_or_the_loop() -> None:
    g = graph()
    for leaf in (
        "linnix_exporter.tick",
        "linnix_exporter.figures",
        "linnix_exporter.sinks.prometheus",
        "linnix_exporter.stats_policy",
    ):
        bad = {
            m
            for m in reach(g, leaf)
            if m.startswith("linnix_exporter.kernel")
            or m in ("linnix_exporter.state", "linnix_exporter.schedule", "linnix_exporter.config")
        }
        assert not bad, f"{leaf} pulls in {sorted(bad)}"


def test_dashboards_import_only_the_catalogue() -> None:
    queries = REPO / "dashboards" / "queries.py"
    g = graph()
    direct = imports_of(queries, set(g))
    assert direct == {"linnix_exporter.figures"}
    assert not any(
        m.startswith("linnix_exporter.kernel") for m in reach(g, "linnix_exporter.figures")
    )


def test_cli_is_small() -> None:
    lines = (PKG / "cli.py").read_text().count("\n")
    assert lines < 150, f"cli.py has {lines} lines: building the daemon belongs in wiring.py"
