"""Workflows saved with earlier versions of the pack still load with the values they had.

ComfyUI stores a node's widget values by position. ``tests/data/saved_workflows/`` keeps copies
of workflows as they were saved, each with ``<name>.widgets.json``: the widget names, in order,
of each of the pack's node types at the time (``tools/snapshot_workflow.py`` writes both). Read
with today's INPUT_TYPES, every saved value must land on the widget of the same name, and still
be a valid value for it: new inputs go at the end of "optional" (or are sockets), never between.
The browser test loads the same files in ComfyUI's real frontend.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_pack import (CORE_NODES, FRONTEND_ONLY, REPO_ROOT, input_spec, load_pack,
                        saved_widget_values, widget_names)

SAVED_DIR = REPO_ROOT / "tests" / "data" / "saved_workflows"
SAVED = sorted(p for p in SAVED_DIR.glob("*.json") if not p.name.endswith(".widgets.json"))


def order_file(path: Path) -> Path:
    return path.with_name(path.stem + ".widgets.json")


def old_values(path: Path) -> dict[int, tuple[str, dict]]:
    """node id -> (type, {widget name: saved value}) for the pack's nodes, read the old way."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    order = json.loads(order_file(path).read_text(encoding="utf-8"))
    return {n["id"]: (n["type"], saved_widget_values(n, order[n["type"]]))
            for n in workflow["nodes"] if n["type"] in order}


def test_every_saved_workflow_has_its_widget_order():
    assert SAVED, "no saved workflows"
    orders = {p.name[: -len(".widgets.json")] for p in SAVED_DIR.glob("*.widgets.json")}
    assert orders == {p.stem for p in SAVED}


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
def test_saved_values_land_on_the_same_widgets(path):
    classes = load_pack().NODE_CLASS_MAPPINGS
    workflow = json.loads(path.read_text(encoding="utf-8"))
    order = json.loads(order_file(path).read_text(encoding="utf-8"))
    for node in workflow["nodes"]:
        t = node["type"]
        assert t in classes or t in CORE_NODES or t in FRONTEND_ONLY, f"{t} no longer exists"
        if t not in classes:
            continue
        assert t in order, f"{order_file(path).name} lacks {t}"
        old = saved_widget_values(node, order[t])
        now = saved_widget_values(node, widget_names(classes[t]))
        for name, value in old.items():
            assert name in now, f"{t}.{name}: the widget is gone or moved after the saved values"
            assert now[name] == value, (f"{t}.{name}: a saved {value!r} now lands on this widget "
                                        f"as {now[name]!r}: an input was inserted before it")


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
def test_saved_values_are_still_valid(path):
    classes = load_pack().NODE_CLASS_MAPPINGS
    for _, (t, values) in old_values(path).items():
        spec = input_spec(classes[t])
        for name, value in values.items():
            if name not in spec:  # control_after_generate
                continue
            kind, *rest = spec[name]
            opts = rest[0] if rest else {}
            if isinstance(kind, (list, tuple)):
                assert value in kind, f"{t}.{name}: saved {value!r} is no longer a choice"
            elif kind in ("INT", "FLOAT"):
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{t}.{name}"
