"""The pack's import graph is one-directional: no module imports one that (indirectly) imports it.

Imports inside functions and under ``TYPE_CHECKING`` count too: a cycle hidden in a function is
still a cycle, and it breaks as soon as someone moves the import to the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("selva", "bigvgan")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(path: Path, modules: set[str]) -> set[str]:
    name = _module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve(name, is_package, node.level, node.module)
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for cand in candidates:
            # the deepest in-pack module the import names (``from . import audio`` -> selva.audio)
            while cand and cand not in modules:
                cand = cand.rpartition(".")[0]
            if cand and cand != name and not name.startswith(cand + "."):
                found.add(cand)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_loading_does_not_import_the_pipeline():
    graph = import_graph()
    assert "selva.pipeline" in graph["selva.cli"]  # the graph really sees function-level imports
    assert "selva.loading" in graph["selva.pipeline"]
    assert "selva.pipeline" not in graph["selva.loading"]


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def test_only_the_fallback_loaders_import_the_compat_package():
    """selva/compat reads the earlier pack's files; only the loaders that fall back to it (and
    the convert command's registration) may import it, so nothing else grows a dependency on
    the earlier layouts."""
    allowed = {"selva.adapters.format", "selva.adapters.compare", "selva.train.sweep", "selva.train.dataset",
               "selva.datasets.folder",
               "selva.style.textual_inversion", "selva.style.steering", "selva.vocoder_tuning.checkpoint",
               "selva.cli"}
    graph = import_graph()
    users = {m for m, deps in graph.items() if not m.startswith("selva.compat")
             and any(d == "selva.compat" or d.startswith("selva.compat.") for d in deps)}
    assert users <= allowed, sorted(users - allowed)
    nodes = [p for p in (ROOT / "nodes").glob("*.py") if "selva.compat" in p.read_text(encoding="utf-8")]
    assert [p.name for p in nodes] == []  # the Dataset Browser falls back through selva.datasets


def test_bigvgan_stands_alone():
    """bigvgan/ imports nothing from selva/: not relatively, not through a ``try: from ..selva``
    fallback, not as a top-level ``selva`` package."""
    graph = import_graph()
    assert "bigvgan.errors" in graph["bigvgan.loading"]  # the graph sees bigvgan's own imports
    assert "bigvgan.loading" in graph["selva.loading"]  # and the SelVA side using bigvgan
    leaks = {name: sorted(t for t in targets if t == "selva" or t.startswith("selva."))
             for name, targets in graph.items() if name.startswith("bigvgan")}
    assert {name: found for name, found in leaks.items() if found} == {}
    import re

    for path in (ROOT / "bigvgan").rglob("*.py"):  # also imports the AST walk cannot resolve
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not re.search(r"(\bfrom|\bimport|import_module\()\s*[(\"'.\w]*selva", line), (path, line)
