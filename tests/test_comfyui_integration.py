"""The pack inside a real ComfyUI, driven over its HTTP API (one server per session: conftest.py).

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout whose requirements are installed in
the Python running pytest (``.ci/run`` sets it up, and there a skip fails the run). The server's
model folders (``extra_model_paths.yaml``) hold the tiny test variants and full-size random
small_16k weights; ``SELVA_TEST_MODELS_DIR`` adds a folder of real weights.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from comfy_pack import load_pack, pack_module
from comfy_server import FRONTEND_ONLY, REPO_ROOT, load_workflow, set_inputs, to_api_prompt
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(2400)  # start-up, full-size weights and CPU inference are slow


def _audio_info(path):
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(stream))
        return stream.sample_rate, stream.channels, samples


def _generation_prompt(comfy, object_info, variant: str, seconds: float, name: str) -> dict:
    write_video(comfy.input_dir / name, frames(seconds, seed=1), fps=25)
    prompt = to_api_prompt(load_workflow("SelVA Video to Audio"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant=variant, precision="fp32")
    set_inputs(prompt, "LoadVideo", file=name)
    set_inputs(prompt, "SelvaFeatureExtractor", duration=seconds)
    set_inputs(prompt, "SelvaSampler", steps=2)
    return prompt


def test_object_info_lists_every_node(object_info):
    pack = load_pack()
    for node_id, display in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert node_id in object_info, f"{node_id} missing from /object_info"
        info = object_info[node_id]
        assert info["display_name"] == display and info["category"].startswith("SelVA")
        ours = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(info["input"].get(section, {})) == list(ours.get(section, {}))
    assert object_info["SelvaFeatureExtractor"]["input"]["required"]["video"][0] == "IMAGE,VIDEO"


def test_server_offers_the_tiny_test_variants(object_info):
    """The test custom node (tests/comfy_custom_nodes/selva_test_variants) extended the pack."""
    variants = object_info["SelvaModelLoader"]["input"]["required"]["variant"][0]
    assert {"small_16k", "tiny_16k", "tiny_44k"} <= set(variants)


def test_bundled_workflows_use_only_known_nodes(object_info):
    for path in sorted((REPO_ROOT / "workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        for node in workflow["nodes"]:
            if node["type"] not in FRONTEND_ONLY:
                assert node["type"] in object_info, f"{path.name}: {node['type']} is not installed"
        to_api_prompt(workflow, object_info)  # every widget value maps onto a real input


def test_vae_roundtrip_on_full_size_weights(comfy, object_info, full_models_dir):
    """Full-size small_16k VAE and vocoder, found through extra_model_paths.yaml only."""
    media = pack_module("selva.media")
    t = torch.arange(22050) / 22050
    tone = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.2 * torch.sin(2 * torch.pi * 660 * t)])
    media.write_audio(comfy.input_dir / "selva_test.wav", tone, 22050)
    prompt = to_api_prompt(load_workflow("SelVA VAE Round Trip"), object_info)
    set_inputs(prompt, "LoadAudio", audio="selva_test.wav")
    set_inputs(prompt, "SelvaModelLoader", variant="small_16k", precision="fp32")
    entry = comfy.run(prompt)
    saved = [p for p in comfy.saved_files(entry) if "selva_roundtrip" in p.name]
    assert saved and saved[0].is_file(), json.dumps(entry["outputs"])[:2000]
    rate, channels, samples = _audio_info(saved[0])
    assert rate == 16000 and channels == 2
    assert abs(samples - 16000) <= 1024


def test_generation_workflow_on_tiny_variant(comfy, object_info):
    entry = comfy.run(_generation_prompt(comfy, object_info, "tiny_16k", 1.0, "selva_tiny.mp4"))
    audio = [p for p in comfy.saved_files(entry) if p.suffix == ".flac"]
    assert audio and audio[0].is_file()
    rate, _, samples = _audio_info(audio[0])
    assert rate == 16000 and abs(samples - 16000) <= 1024
    video = [p for p in comfy.saved_files(entry) if p.suffix == ".mp4"]
    assert video and video[0].stat().st_size > 0


def test_generation_workflow_on_full_size_weights(comfy, object_info, full_models_dir):
    """Every full-size small_16k network (T5, CLIP text, TextSynch, generator, VAE, BigVGAN)
    loads from its released layout and runs in ComfyUI."""
    prompt = _generation_prompt(comfy, object_info, "small_16k", 1.0, "selva_full.mp4")
    set_inputs(prompt, "SelvaSampler", steps=1)
    entry = comfy.run(prompt)
    audio = [p for p in comfy.saved_files(entry) if p.suffix == ".flac"]
    assert audio and audio[0].is_file()
    rate, _, samples = _audio_info(audio[0])
    assert rate == 16000 and abs(samples - 16000) <= 1024


def test_a_bad_input_reports_a_selva_error(comfy, object_info):
    """A missing weight file comes back as the pack's clear error, not a crash of the server."""
    prompt = _generation_prompt(comfy, object_info, "small_44k", 1.0, "selva_err.mp4")
    err = comfy.run_error(prompt)
    text = json.dumps(err.messages or err.status or err.error)
    assert "missing" in text and "generator_small_44k" in text, text[:2000]
    assert comfy.proc.poll() is None


@pytest.mark.skipif(not os.environ.get("SELVA_TEST_MODELS_DIR"), reason="set SELVA_TEST_MODELS_DIR "
                    "to a complete folder of real weights")
@pytest.mark.allow_skip
def test_generation_workflow_on_real_weights(comfy, object_info):
    prompt = _generation_prompt(comfy, object_info, "small_16k", 2.0, "selva_real.mp4")
    entry = comfy.run(prompt)
    assert [p for p in comfy.saved_files(entry) if p.suffix == ".flac"]


def test_startup_warns_about_another_selva_pack(comfy):
    """tests/comfy_custom_nodes/selva_test_earlier_pack names SelVA's node ids like the earlier pack."""
    log = comfy.log.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "also registers" in line]
    assert len(lines) == 1, comfy.log_tail()
    assert "selva_test_earlier_pack also registers 3 of SelVA's node ids" in lines[0]
    assert "SelvaModelLoader, SelvaFeatureExtractor, SelvaSampler" in lines[0]
    assert "docs/coming-from-earlier-pack.md" in lines[0]
