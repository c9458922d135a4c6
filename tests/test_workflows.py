"""Every bundled workflow loads in ComfyUI with no missing nodes and a consistent graph."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_pack import (CORE_NODES, FRONTEND_ONLY, REPO_ROOT, input_spec, is_widget, load_pack,
                        types_overlap, widget_value_count)

# ComfyUI's template browser lists the .json files of every one of these folders of a pack
# (app/custom_node_manager.py), so the pack keeps exactly one of them.
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _ids(paths):
    return [p.stem for p in paths]


def test_one_template_folder_and_no_duplicate_template():
    assert WORKFLOWS, "no bundled workflows"
    present = [d for d in TEMPLATE_FOLDERS if (REPO_ROOT / d).is_dir()]
    assert present == ["workflows"], (f"ComfyUI lists the templates of {present} alike: keep "
                                      f"workflows/ only, or every template shows more than once")
    stems = [p.stem.casefold() for p in WORKFLOWS]
    assert len(stems) == len(set(stems)), f"duplicate template names: {stems}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=_ids(WORKFLOWS))
def test_template_has_a_thumbnail(path):
    """The template browser shows <name>.jpg beside the workflow (tools/workflow_thumbnails.py)."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} is missing: run python tools/workflow_thumbnails.py"
    data = thumb.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and len(data) > 2000, f"{thumb.name} is not a real JPEG"
    from PIL import Image

    with Image.open(thumb) as img:
        assert img.format == "JPEG" and img.width >= 256 and img.height >= 128


@pytest.mark.parametrize("path", WORKFLOWS, ids=_ids(WORKFLOWS))
def test_template_name_reads_as_a_title(path):
    """ComfyUI's frontend shows a pack template's file name as its title (and, with '-' and '_'
    turned into spaces, as its description): the name is what a person reads."""
    assert path.stem.startswith("SelVA "), f"{path.name}: start the name with 'SelVA '"
    assert not set(path.stem) & set("_-"), f"{path.name}: words are separated by spaces"
    assert path.stem[6:7].isupper(), f"{path.name}: write the name as a title"


def test_the_four_scenarios_are_covered():
    types_per_file = {p.name: {n["type"] for n in _load(p)["nodes"]} for p in WORKFLOWS}
    all_types = set().union(*types_per_file.values())
    assert {"SelvaModelLoader", "SelvaFeatureExtractor", "SelvaSampler", "SelvaVaeRoundtrip",
            "LoadVideo", "SaveAudio"} <= all_types
    masked = [n for n, t in types_per_file.items() if "ImageToMask" in t or "LoadImage" in t]
    assert masked, "no workflow uses a mask"
    negatives = [p for p in WORKFLOWS if any(
        n["type"] == "SelvaSampler" and n["widgets_values"][1].strip()
        for n in _load(p)["nodes"])]
    assert negatives, "no workflow sets a negative prompt"


def _node_io(node_type: str, classes: dict) -> tuple[dict[str, str], list[tuple[str, str]], int]:
    """(input name -> type, outputs, widget value count) for one of our nodes or a core node."""
    if node_type in classes:
        cls = classes[node_type]
        spec = input_spec(cls)
        inputs = {name: ("COMBO" if isinstance(v[0], (list, tuple)) else v[0]) for name, v in spec.items()}
        outputs = list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
        return inputs, outputs, widget_value_count(spec)
    core = CORE_NODES[node_type]
    return core["inputs"], core["outputs"], core["widgets"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=_ids(WORKFLOWS))
def test_workflow_nodes_exist_and_match_their_definitions(path):
    classes = load_pack().NODE_CLASS_MAPPINGS
    wf = _load(path)
    assert wf.get("version") == 0.4
    for node in wf["nodes"]:
        t = node["type"]
        if t in FRONTEND_ONLY:
            continue
        assert t in classes or t in CORE_NODES, f"{path.name}: unknown node type {t}"
        inputs, outputs, n_widgets = _node_io(t, classes)
        for slot in node.get("inputs", []):
            assert slot["name"] in inputs, f"{path.name}: {t} has no input {slot['name']}"
            assert types_overlap(slot["type"], inputs[slot["name"]]) or slot.get("widget"), \
                f"{path.name}: {t}.{slot['name']} declared {slot['type']}, node takes {inputs[slot['name']]}"
        got_outputs = [(o["name"], o["type"]) for o in node.get("outputs", [])]
        assert got_outputs == outputs, f"{path.name}: {t} outputs {got_outputs} != {outputs}"
        assert len(node.get("widgets_values", [])) == n_widgets, \
            f"{path.name}: {t} stores {len(node.get('widgets_values', []))} widget values, expected {n_widgets}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=_ids(WORKFLOWS))
def test_our_widget_values_are_valid(path):
    classes = load_pack().NODE_CLASS_MAPPINGS
    for node in _load(path)["nodes"]:
        if node["type"] not in classes:
            continue
        spec = input_spec(classes[node["type"]])
        values = iter(node["widgets_values"])
        for name, (kind, *rest) in spec.items():
            if not is_widget((kind, *rest)):
                continue
            opts = rest[0] if rest else {}
            value = next(values)
            if isinstance(kind, (list, tuple)):
                assert value in kind, f"{node['type']}.{name}={value!r} not in {kind}"
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool)
                assert opts.get("min", value) <= value <= opts.get("max", value), f"{node['type']}.{name}"
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)
            elif kind == "STRING":
                assert isinstance(value, str)
            if opts.get("control_after_generate"):
                assert next(values) in ("fixed", "increment", "decrement", "randomize")


@pytest.mark.parametrize("path", WORKFLOWS, ids=_ids(WORKFLOWS))
def test_links_are_consistent(path):
    classes = load_pack().NODE_CLASS_MAPPINGS
    wf = _load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    assert wf["last_node_id"] >= max(nodes)
    link_ids = [link[0] for link in wf["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    if link_ids:
        assert wf["last_link_id"] >= max(link_ids)
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert src in nodes and dst in nodes, f"link {lid} points at a missing node"
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in (out.get("links") or []), f"link {lid} missing from its source output"
        assert inp.get("link") == lid, f"link {lid} missing from its target input"
        assert types_overlap(out["type"], typ) and types_overlap(inp["type"], typ), \
            f"link {lid}: {out['type']} -> {inp['type']} as {typ}"
    referenced = set()
    for node in wf["nodes"]:
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                referenced.add(inp["link"])
        for out in node.get("outputs", []):
            referenced.update(out.get("links") or [])
    assert referenced == set(link_ids), "nodes reference links that do not exist (or vice versa)"
    # every required non-widget input of our nodes is connected
    for node in wf["nodes"]:
        if node["type"] not in classes:
            continue
        required = classes[node["type"]].INPUT_TYPES()["required"]
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, spec in required.items():
            if not is_widget(spec):
                assert name in linked, f"{path.name}: {node['type']}.{name} is not connected"


def test_the_layout_tool_rewrites_a_template_in_its_own_json_format():
    """tools/layout_workflows.py moves nodes only: indent and final newline stay the file's own."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("layout_workflows", REPO_ROOT / "tools" / "layout_workflows.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO_ROOT / "workflows").glob("*.json"))}
    for name, text in texts.items():
        assert tool.json_like(text, json.loads(text)) == text, name
    data = {"nodes": [{"id": 1, "pos": [0, 10]}], "title": "Café"}
    assert tool.json_like('{\n  "a": 1\n}', data).startswith('{\n  "nodes": [\n    {')
    assert tool.json_like('{\n "a": 1\n}\n', data).endswith("}\n") and "Café" in tool.json_like("{}", data)
