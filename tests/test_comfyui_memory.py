"""ComfyUI's model management sees, unloads and reloads SelVA's stages (real server, --cpu).

The test-only node ``SelvaTestLoadedModels`` (tests/comfy_custom_nodes/selva_test_probe) reports
``comfy.model_management.current_loaded_models`` and a digest of the audio through /history.
"""
from __future__ import annotations

import time

import pytest

from comfy_server import load_workflow, nodes_of, set_inputs, to_api_prompt
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(1200)

PROBE = "SelvaTestLoadedModels"
GENERATION_STAGES = {"t5", "clip", "text_synch", "generator", "vae", "vocoder"}
# the features come from ComfyUI's node cache and text encodings from the pipeline's memo cache:
# what must run again is the generator and the decoder
SAMPLER_STAGES = {"generator", "vae", "vocoder"}


def _with_probe(prompt: dict, object_info: dict) -> dict:
    """``prompt`` plus the probe, fed by the Sampler's audio (so it runs after the generation)."""
    (sampler_id,) = [k for k, n in prompt.items() if n["class_type"] == "SelvaSampler"]
    audio_index = object_info["SelvaSampler"]["output"].index("AUDIO")
    prompt["probe"] = {"class_type": PROBE, "inputs": {"audio": [sampler_id, audio_index]}}
    return prompt


def _generation(comfy, object_info, seed: int) -> dict:
    prompt = to_api_prompt(load_workflow("SelVA Video to Audio"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32", offload_strategy="auto")
    set_inputs(prompt, "LoadVideo", file="selva_memory.mp4")
    # a feature cache of this server only: features from earlier sessions must not be served
    set_inputs(prompt, "SelvaFeatureExtractor", duration=1.0,
               cache_dir=str(comfy.base / "selva_memory_features"))
    set_inputs(prompt, "SelvaSampler", steps=2, seed=seed)
    for node in nodes_of(prompt, "SaveAudio") + nodes_of(prompt, "SaveVideo"):
        node["inputs"]["filename_prefix"] = "selva_memory/out"
    return _with_probe(prompt, object_info)


def _probe(entry: dict) -> tuple[list[dict], str]:
    out = entry["outputs"]["probe"]
    return out["loaded_models"], (out.get("audio_digest") or [None])[0]


def _selva_stages(models: list[dict]) -> set[str]:
    return {m["stage"] for m in models if m["stage"] is not None}


def _loaded_now(comfy) -> list[dict]:
    return _probe(comfy.run({"probe": {"class_type": PROBE, "inputs": {}}}))[0]


def test_unload_models_evicts_selva_and_the_next_run_gives_the_same_audio(comfy, object_info):
    write_video(comfy.input_dir / "selva_memory.mp4", frames(1.0, seed=5), fps=25)
    models, first = _probe(comfy.run(_generation(comfy, object_info, seed=1)))
    assert GENERATION_STAGES <= _selva_stages(models), models
    ours = [m for m in models if m["stage"] in GENERATION_STAGES]
    assert all(m["patcher"] == "SelvaStagePatcher" and m["size"] > 0 for m in ours), ours
    assert first

    # another seed: the Sampler runs again, so the seed-1 result leaves ComfyUI's node cache
    _, other = _probe(comfy.run(_generation(comfy, object_info, seed=2)))
    assert other != first

    comfy.post("/free", {"unload_models": True})
    # the flag is handled by the prompt worker between prompts: read the list until it shows
    deadline = time.monotonic() + 60
    while _selva_stages(models := _loaded_now(comfy)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _selva_stages(models), models

    # the same pipeline object (the loader's output is cached) loads its stages again
    models, again = _probe(comfy.run(_generation(comfy, object_info, seed=1)))
    assert again == first
    assert SAMPLER_STAGES <= _selva_stages(models) <= GENERATION_STAGES, models
