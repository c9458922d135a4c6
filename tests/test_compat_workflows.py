"""The earlier-layout table and web/selva_compat.js's remapping, run in Node (no browser).

The browser test (tests/test_comfyui_compat_workflows.py) checks the same in ComfyUI's frontend.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import earlier_workflows as EW
from comfy_pack import REPO_ROOT, load_pack


def test_renamed_widgets_exist_on_both_sides():
    table = EW.earlier_table()
    for node_id, names in table["renamed"].items():
        ours = EW.our_widgets(node_id)
        earlier = {w["name"] for layout in table["nodes"][node_id] for w in layout["widgets"]}
        for old, new in names.items():
            assert old in earlier and new in ours, (node_id, old, new)


def test_every_node_the_issue_names_has_an_earlier_layout_that_differs():
    classes = load_pack().NODE_CLASS_MAPPINGS
    differ = {node_id for node_id, layout in EW.every_layout()
              if [w["name"] for w in layout["widgets"]] !=
              list(EW.our_widgets(node_id))[:len(layout["widgets"])] and node_id in classes}
    assert {"SelvaLoraTrainer", "SelvaTextualInversionTrainer", "SelvaFeatureExtractor", "SelvaSampler",
            "SelvaDittoOptimizer", "SelvaBigvganTrainer", "SelvaSpectralMatcher", "SelvaLoraEvaluator",
            "SelvaSkipExperiment"} <= differ


def run_in_node(tmp_path, workflow: dict, node_ids) -> tuple[dict, list]:
    """web/selva_compat.js's migrateWorkflow on ``workflow`` in Node, with our object_info."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("no Node.js")
    ext = tmp_path / "extensions" / "pack"
    ext.mkdir(parents=True)
    for name in ("selva_compat.js", "selva_earlier_layouts.js"):
        shutil.copy(REPO_ROOT / "web" / name, ext / name)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text("export const app = {registerExtension() {}};\n")
    defs = {n: EW.object_info_like(n) for n in node_ids}
    (tmp_path / "in.json").write_text(json.dumps({"workflow": workflow, "defs": defs}))
    (tmp_path / "run.mjs").write_text(
        "import { readFileSync } from 'fs';\n"
        "import { migrateWorkflow } from './extensions/pack/selva_compat.js';\n"
        "const { workflow, defs } = JSON.parse(readFileSync(process.argv[2], 'utf8'));\n"
        "const items = migrateWorkflow(workflow, defs);\n"
        "console.log(JSON.stringify({ workflow, items }));\n")
    out = subprocess.run([node, str(tmp_path / "run.mjs"), str(tmp_path / "in.json")], check=True,
                         capture_output=True, text=True).stdout
    data = json.loads(out)
    return data["workflow"], data["items"]


def _by_name(node_id: str, values: list) -> dict:
    info = EW.object_info_like(node_id)
    names = []
    for name in info["input_order"]["required"] + info["input_order"]["optional"]:
        spec = info["input"]["required"].get(name) or info["input"]["optional"].get(name)
        kind = spec[0]
        if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            names.append(name)
            opts = spec[1] if len(spec) > 1 else {}
            if kind == "INT" and opts.get("control_after_generate", name in ("seed", "noise_seed")):
                names.append(EW.CONTROL)
    return dict(zip(names, values))


def test_each_earlier_layout_is_remapped_by_name(tmp_path):
    layouts = EW.every_layout()
    nodes = [EW.earlier_node(node_id, layout, i + 1) for i, (node_id, layout) in enumerate(layouts)]
    wf, items = run_in_node(tmp_path, EW.workflow(nodes), {n for n, _ in layouts})
    for node, saved, (node_id, layout) in zip(wf["nodes"], nodes, layouts):
        want, listed = EW.expected(saved, layout)
        got = _by_name(node_id, node["widgets_values"])
        for name, value in want.items():
            assert got[name] == value, (node_id, layout["refs"], name, got[name], value)
        names = {i["input"] for i in items if i["node"].endswith(f"#{node['id']}")}
        assert set(listed) <= names, (node_id, listed, names)


def test_a_workflow_saved_with_this_pack_is_left_alone(tmp_path):
    saved = sorted((REPO_ROOT / "tests" / "data" / "saved_workflows").glob("*.json"))
    for path in (p for p in saved if not p.name.endswith(".widgets.json")):
        wf = json.loads(path.read_text(encoding="utf-8"))
        types = {n["type"] for n in wf["nodes"] if n["type"] in EW.earlier_table()["nodes"]}
        types &= set(load_pack().NODE_CLASS_MAPPINGS)
        out, items = run_in_node(tmp_path / path.stem, json.loads(json.dumps(wf)), types)
        assert [n.get("widgets_values") for n in out["nodes"]] == [n.get("widgets_values") for n in wf["nodes"]]
        assert items == [], (path.name, items)


def _layout(node_id: str, ref: str = "40d29bc") -> dict:
    return next(l for l in EW.earlier_table()["nodes"][node_id] if ref in l["refs"])


def socket_workflow() -> tuple[dict, dict]:
    """An earlier LoRA Trainer whose first output (then the model) feeds a Sampler, an Evaluator
    without features and a Spectral Matcher without a model; the trainer's alpha is 0."""
    trainer = EW.earlier_node("SelvaLoraTrainer", _layout("SelvaLoraTrainer"), 1)
    names = [w["name"] for w in _layout("SelvaLoraTrainer")["widgets"]]
    trainer["widgets_values"][names.index("alpha")] = 0.0
    trainer["widgets_values"][names.index("rank")] = 32
    sampler = EW.earlier_node("SelvaSampler", _layout("SelvaSampler"), 2)
    evaluator = EW.earlier_node("SelvaLoraEvaluator", _layout("SelvaLoraEvaluator"), 3)
    matcher = EW.earlier_node("SelvaSpectralMatcher", _layout("SelvaSpectralMatcher"), 4)
    trainer["outputs"][0]["links"] = [1]
    sampler["inputs"][0]["link"] = 1
    links = [[1, 1, 0, 2, 0, "SELVA_MODEL"]]
    return EW.workflow([trainer, sampler, evaluator, matcher], links), trainer


# The Evaluator's features input is optional here (it may read held_out_dir instead), so an
# earlier Evaluator without it has nothing to reconnect.
SOCKET_ITEMS = {("SelvaLoraTrainer #1", "output model"), ("SelvaSpectralMatcher #4", "model")}


def test_sockets_to_reconnect_and_alpha_zero(tmp_path):
    wf, _ = socket_workflow()
    out, items = run_in_node(tmp_path, wf, {n["type"] for n in wf["nodes"]})
    got = {(i["node"], i["input"]) for i in items}
    assert SOCKET_ITEMS <= got, items
    assert ("SelvaLoraEvaluator #3", "features") not in got, items  # optional here
    trainer_item = next(i for i in items if i["input"] == "output model")
    assert "adapter (SELVA_LORA)" in trainer_item["what"]
    values = _by_name("SelvaLoraTrainer", out["nodes"][0]["widgets_values"])
    assert values["alpha"] == 64 and values["rank"] == 32  # alpha 0 meant 2 x rank there
    # the Evaluator's eval_file is our adapters_file (it reads that file's adapters and their ids)
    ev = _by_name("SelvaLoraEvaluator", out["nodes"][2]["widgets_values"])
    assert ev["adapters_file"] == "eval_file-saved"


@pytest.mark.parametrize("earlier, want", [
    # the earlier defaults: mean spectrum only, the anchor 1 against a style loss scaled by 0.1
    ({"style_weight": 0.1, "gram_weight": 0.0, "anchor_weight": 1.0, "n_opt_steps": 50},
     {"style_weight": 0.0, "anchor_weight": 10.0, "n_opt_steps": 50}),
    ({"style_weight": 0.5, "gram_weight": 0.2, "anchor_weight": 2.0, "n_opt_steps": 30},
     {"style_weight": 0.2, "anchor_weight": 4.0, "n_opt_steps": 30}),
    # only the anchor, which never moves the noise from where it starts: the Sampler's output
    ({"style_weight": 0.0, "gram_weight": 0.3, "anchor_weight": 1.0, "n_opt_steps": 50},
     {"style_weight": 0.3, "n_opt_steps": 0}),
    ({"style_weight": 0.05, "gram_weight": 0.0, "anchor_weight": 10.0, "n_opt_steps": 50},
     {"anchor_weight": 100.0}),  # 200 is past our maximum
])
def test_ditto_gram_weight_and_style_weight_keep_their_balance(tmp_path, earlier, want):
    layout = _layout("SelvaDittoOptimizer")
    node = EW.earlier_node("SelvaDittoOptimizer", layout, 1)
    names = [w["name"] for w in layout["widgets"]]
    for name, value in earlier.items():
        node["widgets_values"][names.index(name)] = value
    out, items = run_in_node(tmp_path, EW.workflow([node]), {"SelvaDittoOptimizer"})
    got = _by_name("SelvaDittoOptimizer", out["nodes"][0]["widgets_values"])
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), (name, got[name])
    assert "gram_weight" not in {i["input"] for i in items}  # used, so not listed as lost
    expected, listed = EW.expected(node, layout)
    assert "gram_weight" not in listed
    assert {k: expected[k] for k in want} == pytest.approx(want)


def test_an_earlier_steering_extractor_makes_per_position_vectors(tmp_path):
    """Its layout is the start of ours; saved with exactly its five values it is the earlier
    pack's (this pack always saved n_timesteps too), and it made per-position vectors there."""
    earlier = EW.earlier_node("SelvaActivationSteeringExtractor", _layout("SelvaActivationSteeringExtractor"), 1)
    ours = json.loads(json.dumps(earlier))
    ours["id"] = 2
    ours["widgets_values"] = earlier["widgets_values"] + [7, "per_block"]  # saved with this pack
    out, items = run_in_node(tmp_path, EW.workflow([earlier, ours]), {"SelvaActivationSteeringExtractor"})
    got = _by_name("SelvaActivationSteeringExtractor", out["nodes"][0]["widgets_values"])
    assert got["mode"] == "per_position" and got["n_timesteps"] == 10  # ours' default for the new one
    assert got["data_dir"] == "data_dir-saved" and got["n_samples"] == earlier["widgets_values"][2]
    assert [(i["node"].split(" #")[1], i["input"], i["value"]) for i in items] == [("1", "mode", "per_position")]
    assert out["nodes"][1]["widgets_values"] == ours["widgets_values"]  # ours: left as saved
    assert EW.expected(earlier, _layout("SelvaActivationSteeringExtractor"))[0]["mode"] == "per_position"


def test_layout_tool_reads_node_sources_without_running_them(tmp_path):
    """tools/earlier_layouts.py on a small git repository in the earlier pack's layout."""
    import importlib.util
    import subprocess as sp

    repo = tmp_path / "earlier"
    (repo / "nodes").mkdir(parents=True)
    (repo / "nodes" / "__init__.py").write_text(
        '_NODES = {"SelvaX": (".x", "SelvaX", "SelVA X")}\n')
    (repo / "nodes" / "x.py").write_text(
        "import folder_paths  # ComfyUI: never imported by the tool\n"
        "KIND = 'AUDIO_DATASET'\n_VARIANTS = {'a': 1, 'b': 2}\n"
        "class SelvaX:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'model': ('SELVA_MODEL',), 'variant': (list(_VARIANTS),),\n"
        "                             'seed': ('INT', {'default': 42, 'max': 0xFFFFFFFF}),\n"
        "                             'mode': (['a', 'b'], {'default': 'b'})},\n"
        "                'optional': {'lr': ('FLOAT', {'default': 1e-4, 'tooltip': 'x' + 'y'}),\n"
        "                             'text': ('STRING', {'forceInput': True}), 'data': (KIND,)}}\n"
        "    RETURN_TYPES = (KIND, 'STRING')\n    RETURN_NAMES = ('dataset', 'path')\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        sp.run(["git", *args], cwd=repo, check=True)
    spec = importlib.util.spec_from_file_location("earlier_layouts", REPO_ROOT / "tools" / "earlier_layouts.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    table = tool.collect(repo / ".git", ["HEAD"])
    (layout,) = table["nodes"]["SelvaX"]
    assert [w["name"] for w in layout["widgets"]] == ["variant", "seed", "control_after_generate", "mode", "lr"]
    assert layout["widgets"][3] == {"name": "mode", "type": "COMBO", "options": ["a", "b"], "default": "b"}
    assert layout["widgets"][1]["max"] == 0xFFFFFFFF and layout["widgets"][4]["default"] == 1e-4
    assert [(s["name"], s["type"]) for s in layout["inputs"]] == [
        ("model", "SELVA_MODEL"), ("text", "STRING"), ("data", "AUDIO_DATASET")]
    assert layout["outputs"] == [{"name": "dataset", "type": "AUDIO_DATASET"}, {"name": "path", "type": "STRING"}]
