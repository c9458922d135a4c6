"""Every bundled workflow in ComfyUI's real web frontend (headless Chromium, Playwright).

For each file in ``workflows/``: it loads into the canvas with every node type known, the
frontend's own ``app.graphToPrompt()`` gives a prompt the server accepts, and that prompt runs to
success on the CPU once its widgets are set to small settings in the page (the tiny variant, two
steps, a one-second clip). The template browser lists each of the pack's templates once, with
its thumbnail.

Needs ``COMFYUI_DIR`` (see conftest.py) and a browser: Playwright's Python package and Debian's
``chromium`` (``.ci/run`` installs both); without them these tests skip with the reason.
"""
from __future__ import annotations

import json
import urllib.parse

import pytest
import torch
from PIL import Image

import comfy_frontend as F
from comfy_pack import pack_module
from comfy_server import FRONTEND_ONLY, PACK_FOLDER, REPO_ROOT, to_api_prompt
from node_helpers import frames, write_video
import dataset_media
import style_helpers

pytestmark = pytest.mark.timeout(1800)

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
VIDEO, AUDIO, MASK = "selva_frontend.mp4", "selva_frontend.wav", "selva_frontend_mask.png"

# Small settings, set in the page before converting. A widget named here is changed on any node;
# the per-type table wins. A new node with a slow widget (epochs, steps, sizes...) adds itself to
# SMALL_BY_TYPE.
SMALL_BY_NAME = {"variant": "tiny_16k", "precision": "fp32", "steps": 2}
SMALL_BY_TYPE = {
    "LoadVideo": {"file": VIDEO},
    "LoadAudio": {"audio": AUDIO},
    "LoadImage": {"image": MASK},
    "SelvaFeatureExtractor": {"duration": 1.0},
    "SelvaLoraTrainer": {"rank": 2, "save_every": 0, "grad_accum": 1, "warmup_steps": 1},
}
# Per workflow (file stem): a function (comfy) -> {node type: {widget: value}} that prepares
# what that workflow needs (a dataset folder, an adapter...) and returns extra widget values.
def _lora_dataset(comfy) -> str:
    from train_data import comfy_dataset

    folder = comfy.output_dir / "selva_frontend_lora_dataset"
    if not list(folder.glob("*.npz")):
        comfy_dataset(comfy, "tiny_16k", folder, "clip", 2)
    return str(folder)


def _sweep_setup(comfy) -> dict:
    experiments = comfy.output_dir / "selva_frontend_sweep.json"
    experiments.write_text(json.dumps({
        "base": {"data_dir": _lora_dataset(comfy), "steps": 2, "rank": 2, "save_every": 0, "grad_accum": 1,
                 "eval_samples": False},
        "experiments": [{"name": "a"}, {"name": "b", "lr": 1e-3}]}))
    return {"SelvaLoraScheduler": {"experiments_file": str(experiments), "output_dir": "selva_frontend/sweeps"}}


WORKFLOW_SETUP: dict = {
    "SelVA Make a Dataset Clip": lambda comfy: {
        "SelvaFeatureExtractor": {"cache_dir": str(comfy.output_dir / "selva_frontend_dataset_clip")}},
    "SelVA Train a LoRA": lambda comfy: {
        "SelvaLoraTrainer": {"data_dir": _lora_dataset(comfy), "output_dir": "selva_frontend/lora"}},
    "SelVA LoRA Sweep with Evaluator": _sweep_setup,
}
WORKFLOW_SETUP.update(style_helpers.FRONTEND_SETUP)
WORKFLOW_SETUP.update(dataset_media.FRONTEND_SETUP)


def _lora_adapter(comfy) -> dict:
    from lora_helpers import write_tiny_adapter

    write_tiny_adapter(comfy.output_dir / "selva_frontend" / "adapter.safetensors")
    return {"SelvaLoraLoader": {"adapter_path": "selva_frontend/adapter.safetensors"}}


WORKFLOW_SETUP["SelVA LoRA Base vs Adapter"] = _lora_adapter


def _vocoder_tuning_setup(comfy) -> dict:
    from vocoder_helpers import audio_folder

    audio_folder(comfy.output_dir / "selva_frontend_vocoder_data")
    return {"SelvaBigvganTrainer": {"data_dir": "selva_frontend_vocoder_data",
                                    "output_path": "selva_frontend_vocoder_runs", "batch_size": 1,
                                    "segment_seconds": 0.3, "save_every": 1}}


WORKFLOW_SETUP["SelVA Vocoder Tuning"] = _vocoder_tuning_setup


def _batch_setup(comfy) -> dict:
    folder = comfy.input_dir / "selva_frontend_batch"
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / "one.mp4", frames(1.0, seed=5), fps=25)
    return {"SelvaBatchGenerate": {"folder": "selva_frontend_batch", "output_folder": "selva_frontend/batch",
                                   "overwrite": True}}


def _held_out_setup(comfy) -> dict:
    from lora_helpers import write_tiny_adapter

    write_tiny_adapter(comfy.output_dir / "selva_frontend" / "held_out_adapter.safetensors")
    return {"SelvaLoraEvaluator": {"adapters_file": json.dumps(["selva_frontend/held_out_adapter.safetensors"]),
                                   "held_out_dir": _lora_dataset(comfy), "metrics": "spectral"}}


def _vocoder_sweep_setup(comfy) -> dict:
    from vocoder_helpers import audio_folder

    audio_folder(comfy.output_dir / "selva_frontend_vocoder_data")
    sweep = comfy.output_dir / "selva_frontend_vocoder_sweep.json"
    sweep.write_text(json.dumps({
        "base": {"data_dir": "selva_frontend_vocoder_data", "steps": 2, "batch_size": 1,
                 "segment_seconds": 0.3, "save_every": 0},
        "experiments": [{"name": "a"}]}))
    return {"SelvaBigvganScheduler": {"experiments_file": sweep.name, "output_dir": "selva_frontend/vocoder_sweeps"}}


WORKFLOW_SETUP["SelVA Batch Generate"] = _batch_setup
WORKFLOW_SETUP["SelVA Evaluate LoRAs on Held Out Clips"] = _held_out_setup
WORKFLOW_SETUP["SelVA Vocoder Sweep"] = _vocoder_sweep_setup
# the one-second test clip: a range inside it
WORKFLOW_SETUP["SelVA Replace a Sound in a Time Range"] = lambda comfy: {
    "SelvaSampler": {"regenerate_start": 0.3, "regenerate_end": 0.7}}


@pytest.fixture(scope="module")
def browser():
    reason = F.missing_browser_reason()
    if reason:
        pytest.skip(f"[browser] {reason}")  # conftest lets "[browser]" skips pass
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = F.launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def inputs(comfy):
    """The files the Load nodes pick, in the server's input folder before the page opens."""
    write_video(comfy.input_dir / VIDEO, frames(1.0, seed=3), fps=25)
    t = torch.arange(16000) / 16000
    pack_module("selva.media").write_audio(comfy.input_dir / AUDIO,
                                         0.3 * torch.sin(2 * torch.pi * 440 * t)[None], 16000)
    from PIL import Image

    mask = Image.new("RGB", (48, 32), "black")
    mask.paste((255, 255, 255), (12, 8, 36, 24))
    mask.save(comfy.input_dir / MASK)
    return comfy.input_dir


@pytest.fixture(scope="module")
def app_page(browser, comfy, inputs):
    """One page for the module (opening the app costs seconds); each test loads its own graph."""
    page = F.open_app(browser, comfy)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture
def page(app_page):
    F.close_dialogs(app_page)
    return app_page


def test_there_are_workflows():
    assert WORKFLOWS, "no bundled workflows"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_converts_and_runs_in_the_frontend(page, comfy, object_info, path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    loaded = F.load_graph(page, workflow, path.stem)
    missing = sorted({n["type"] for n in loaded["nodes"] if not n["registered"]})
    assert not missing, f"{path.name}: missing node types in the frontend: {missing}"
    assert not loaded["dialogs"], f"{path.name}: the frontend opened a dialog: {loaded['dialogs']}"
    assert len(loaded["nodes"]) == len(workflow["nodes"])

    # the frontend's conversion of the workflow as shipped = ours, for the pack's nodes
    shipped = F.graph_to_prompt(page)
    ours = to_api_prompt(workflow, object_info)
    for node_id, node in shipped.items():
        if node["class_type"].startswith("Selva"):
            assert node["inputs"] == ours[node_id]["inputs"], f"{path.name}: node {node_id}"

    per_type = {k: dict(v) for k, v in SMALL_BY_TYPE.items()}
    for node_type, values in (WORKFLOW_SETUP.get(path.stem, lambda c: {})(comfy)).items():
        per_type.setdefault(node_type, {}).update(values)
    prefix = f"selva_frontend/{path.stem.replace(' ', '_')}"
    changed = F.set_widgets(page, per_type, {**SMALL_BY_NAME, "filename_prefix": prefix})
    if any(n["type"] == "SelvaModelLoader" for n in workflow["nodes"]):
        assert "SelvaModelLoader.variant" in changed, changed  # runs on the tiny variant
    prompt = F.graph_to_prompt(page)
    sent = {n["type"] for n in workflow["nodes"] if n["type"] not in FRONTEND_ONLY
            and n.get("mode", 0) not in (2, 4)}
    assert {n["class_type"] for n in prompt.values()} == sent

    entry = comfy.run(prompt)  # the server accepts it (else WorkflowError) and it succeeds
    saved = [p for p in comfy.saved_files(entry) if p.is_file()]
    if any(t.startswith("Save") for t in sent):
        assert saved, f"{path.name}: nothing saved: {json.dumps(entry['outputs'])[:2000]}"
        assert all(p.stat().st_size > 0 for p in saved)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_nodes_do_not_cover_each_other(page, path):
    """As the frontend sizes the nodes (it grows them to fit their widgets), none overlaps another.

    After adding an input to a node, ``python tools/layout_workflows.py`` moves nodes apart."""
    F.load_graph(page, json.loads(path.read_text(encoding="utf-8")), path.stem)
    boxes = F.node_boxes(page)
    assert len(boxes) == len(json.loads(path.read_text(encoding="utf-8"))["nodes"])
    assert all(b["box"][2] > 0 and b["box"][3] > 0 for b in boxes), boxes
    overlaps = [(a["type"], a["box"], b["type"], b["box"]) for a, b in F.overlapping_nodes(boxes)]
    assert not overlaps, f"{path.name}: nodes overlap (run tools/layout_workflows.py): {overlaps}"


def test_template_route_lists_each_template_once(comfy):
    listed = comfy.get("/api/workflow_templates").get(PACK_FOLDER, [])
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS), listed


def test_template_browser_shows_each_template_once_with_its_thumbnail(page):
    cards = F.template_cards(page, PACK_FOLDER)
    names = [c["name"] for c in cards]
    assert sorted(names) == sorted(p.stem for p in WORKFLOWS), (sorted(set(p.stem for p in WORKFLOWS) - set(names)), names)
    for card in cards:
        assert card["name"] in card["text"], card  # the title a person reads
        assert card["thumbnail_loaded"], f"thumbnail of {card['name']} did not load: {card}"
        with Image.open(REPO_ROOT / "workflows" / f"{card['name']}.jpg") as img:
            assert card["thumbnail_size"] == list(img.size), card  # our picture, not a stand-in


def test_template_files_are_served(comfy):
    """What the browser fetches for a pack template: the workflow and its thumbnail."""
    for path in WORKFLOWS:
        base = f"/api/workflow_templates/{PACK_FOLDER}/{urllib.parse.quote(path.stem)}"
        assert json.loads(comfy.get_bytes(base + ".json")) == json.loads(path.read_text("utf-8"))
        assert comfy.get_bytes(base + ".jpg") == path.with_suffix(".jpg").read_bytes()


SAVED = sorted(p for p in (REPO_ROOT / "tests" / "data" / "saved_workflows").glob("*.json")
               if not p.name.endswith(".widgets.json"))


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
def test_saved_workflow_loads_with_its_values_in_the_frontend(page, path):
    """The real frontend puts each value of an older saved workflow back on its widget."""
    from test_saved_workflows import old_values

    workflow = json.loads(path.read_text(encoding="utf-8"))
    loaded = F.load_graph(page, workflow, path.stem)
    assert all(n["registered"] for n in loaded["nodes"]), loaded["nodes"]
    on_canvas = {n["id"]: n for n in loaded["nodes"]}
    for node_id, (node_type, values) in old_values(path).items():
        widgets = on_canvas[node_id]["widgets"]
        for name, value in values.items():
            assert name in widgets, f"{path.name}: {node_type} has no widget {name} any more"
            got = widgets[name]
            same = got == value or (isinstance(value, float) and abs(got - value) < 1e-9)
            assert same, f"{path.name}: {node_type}.{name} was {value!r}, the frontend shows {got!r}"
