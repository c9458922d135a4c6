"""The LoRA Loader inside a real ComfyUI: load an adapter file, sample, base branch unchanged.

Uses the shared server (tests/comfy_server.py) and the tiny_16k variant it offers. ComfyUI caches
node outputs between prompts by their inputs, so each base Sampler below differs from the
reference run by ``target_lufs`` alone (which does nothing with ``normalize`` off): every base
branch is really generated again, in a graph where a LoRA Loader used the same model.
"""
from __future__ import annotations

import numpy as np
import pytest

from comfy_server import load_workflow, nodes_of, set_inputs, to_api_prompt
from lora_helpers import write_tiny_adapter
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(2400)

ADAPTER = "selva_lora_it/adapter_final.safetensors"
VIDEO = "selva_lora_it.mp4"


def _decode(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray() for f in c.decode(c.streams.audio[0])], axis=-1)


def _write_adapter(comfy) -> None:
    write_tiny_adapter(comfy.output_dir / ADAPTER)


def _saved(comfy, entry, node_id: str):
    files = [p for p in comfy.saved_files(entry, kinds=("audio",))]
    out = entry["outputs"][node_id]["audio"][0]
    path = comfy.output_dir / out.get("subfolder", "") / out["filename"]
    assert path in files
    return _decode(path)


def _compare_prompt(object_info, *, strength: float, base_lufs: float) -> dict:
    prompt = to_api_prompt(load_workflow("SelVA LoRA Base vs Adapter"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "LoadVideo", file=VIDEO)
    set_inputs(prompt, "SelvaFeatureExtractor", duration=1.0)
    set_inputs(prompt, "SelvaSampler", steps=2, seed=5, normalize=False)
    set_inputs(prompt, "SelvaLoraLoader", adapter_path=ADAPTER, strength=strength)
    lora_model = next(k for k, n in prompt.items() if n["class_type"] == "SelvaLoraLoader")
    for node in nodes_of(prompt, "SelvaSampler"):
        if node["inputs"]["model"][0] != lora_model:
            node["inputs"]["target_lufs"] = base_lufs
    for node in nodes_of(prompt, "SaveAudio"):
        node["inputs"]["filename_prefix"] = "selva_lora_it/" + node["inputs"]["filename_prefix"].split("/")[-1]
    return prompt


def _output_ids(prompt) -> tuple[str, str]:
    """(SaveAudio of the base branch, SaveAudio of the LoRA branch)."""
    lora_model = next(k for k, n in prompt.items() if n["class_type"] == "SelvaLoraLoader")
    base = lora = None
    for save_id, save in prompt.items():
        if save["class_type"] != "SaveAudio":
            continue
        sampler = prompt[save["inputs"]["audio"][0]]
        if sampler["inputs"]["model"][0] == lora_model:
            lora = save_id
        else:
            base = save_id
    return base, lora


def test_lora_loader_in_comfyui_keeps_the_base_branch(comfy, object_info):
    write_video(comfy.input_dir / VIDEO, frames(1.0, seed=3), fps=25)
    _write_adapter(comfy)

    # reference: the base model alone (the LoRA Loader, its Sampler and its SaveAudio removed)
    reference = _compare_prompt(object_info, strength=1.0, base_lufs=-27.0)
    base_id, lora_id = _output_ids(reference)
    lora_sampler = reference[lora_id]["inputs"]["audio"][0]
    loader = reference[lora_sampler]["inputs"]["model"][0]
    for node_id in (lora_id, lora_sampler, loader):
        del reference[node_id]
    ref = _saved(comfy, comfy.run(reference), base_id)

    # the comparison graph: base branch and LoRA branch from the same model
    prompt = _compare_prompt(object_info, strength=1.0, base_lufs=-26.5)
    entry = comfy.run(prompt)
    base, lora = _saved(comfy, entry, base_id), _saved(comfy, entry, lora_id)
    assert np.array_equal(base, ref), "the base branch changed when a LoRA Loader used its model"
    assert base.shape == lora.shape and not np.array_equal(lora, ref)

    # strength 0: the LoRA branch is the base model bit for bit (and the base branch still is)
    entry = comfy.run(_compare_prompt(object_info, strength=0.0, base_lufs=-26.0))
    assert np.array_equal(_saved(comfy, entry, lora_id), ref)
    assert np.array_equal(_saved(comfy, entry, base_id), ref)


def test_lora_loader_refuses_a_missing_file_in_comfyui(comfy, object_info):
    write_video(comfy.input_dir / VIDEO, frames(1.0, seed=3), fps=25)
    prompt = _compare_prompt(object_info, strength=1.0, base_lufs=-25.0)
    set_inputs(prompt, "SelvaLoraLoader", adapter_path="selva_lora_it/missing.safetensors")
    err = comfy.run_error(prompt)
    text = str(err.messages or err.status or err.error)
    assert "LoRA adapter not found" in text and "missing.safetensors" in text, text[:2000]
    assert comfy.proc.poll() is None
