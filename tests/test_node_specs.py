"""Input declarations the frontend relies on, checked on every node of the pack."""
from __future__ import annotations

from comfy_pack import load_pack


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, value in spec.get(group, {}).items():
            yield name, value


def test_every_seed_declares_the_frontend_seed_control():
    # The frontend adds a fixed/increment/randomize widget to any INT named "seed" anyway; the
    # declaration makes it explicit, so every node's saved widget list has the same shape.
    missing = []
    seen = 0
    for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        for name, value in _inputs(cls):
            if "seed" in name and value[0] == "INT":
                seen += 1
                if not (len(value) > 1 and value[1].get("control_after_generate") is True):
                    missing.append(f"{node_id}.{name}")
    assert seen >= 7
    assert not missing, missing


def test_every_path_input_says_where_relative_paths_go():
    # One rule for every node (relative = inside ComfyUI's output folder); the tooltip says it.
    missing, seen = [], 0
    for node_id, cls in load_pack().NODE_CLASS_MAPPINGS.items():
        for name, value in _inputs(cls):
            is_path = name == "path" or name.endswith(("_dir", "_path", "_file", "_json"))
            if value[0] == "STRING" and is_path:
                seen += 1
                tooltip = value[1].get("tooltip", "") if len(value) > 1 else ""
                if "ComfyUI's output folder" not in tooltip:
                    missing.append(f"{node_id}.{name}")
    assert seen >= 15
    assert not missing, f"tooltips that do not say where a relative path goes: {missing}"
