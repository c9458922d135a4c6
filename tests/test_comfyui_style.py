"""Style tools in a real ComfyUI: DITTO with a few steps, steering extract then sample.

Full-size random small_16k weights (``full_models_dir``), driven through the bundled workflows
over ComfyUI's HTTP API, as a user would load them. Skipped unless ``COMFYUI_DIR`` is set.
"""
from __future__ import annotations

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from node_helpers import frames, write_video
from style_helpers import reference_dir

pytestmark = pytest.mark.timeout(2400)

SECONDS = 1.0


def _front(comfy, object_info, workflow: str, video: str, cache: str = "") -> dict:
    write_video(comfy.input_dir / video, frames(SECONDS, seed=3), fps=25)
    prompt = to_api_prompt(load_workflow(workflow), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="small_16k", precision="fp32")
    set_inputs(prompt, "LoadVideo", file=video)
    set_inputs(prompt, "SelvaFeatureExtractor", duration=SECONDS, cache_dir=cache)
    return prompt


def test_ditto_few_steps_on_full_size_weights(comfy, object_info, full_models_dir):
    refs = reference_dir(comfy.output_dir / "selva_style_it")
    prompt = _front(comfy, object_info, "SelVA DITTO Style Transfer", "selva_style_ditto.mp4")
    set_inputs(prompt, "SelvaDittoOptimizer", reference_dir=str(refs), n_opt_steps=2, n_ode_steps=2,
               n_grad_steps=1, steps=2)
    set_inputs(prompt, "SaveAudio", filename_prefix="audio/selva_style_ditto")
    entry = comfy.run(prompt)
    saved = [p for p in comfy.saved_files(entry) if "selva_style_ditto" in p.name]
    assert saved and saved[0].stat().st_size > 1000


def test_steering_extract_then_sample(comfy, object_info, full_models_dir):
    cache = comfy.output_dir / "selva_style_it" / "features"
    # the features of two clips land in a folder through the extractor's cache_dir
    for i in range(2):
        prompt = _front(comfy, object_info, "SelVA Sample with Steering Vectors", f"selva_style_steer{i}.mp4", str(cache))
        del prompt[_id(prompt, "SelvaActivationSteeringLoader")]
        prompt[_id(prompt, "SelvaSampler")]["inputs"].pop("steering_vectors")
        prompt[_id(prompt, "SelvaFeatureExtractor")]["inputs"]["prompt"] = ["footsteps", "rain"][i]
        set_inputs(prompt, "SelvaSampler", steps=1)
        set_inputs(prompt, "SaveAudio", filename_prefix=f"audio/selva_style_feat{i}")
        comfy.run(prompt)
    assert len(list(cache.glob("*.npz"))) == 2

    extract = to_api_prompt(load_workflow("SelVA Extract Steering Vectors"), object_info)
    set_inputs(extract, "SelvaModelLoader", variant="small_16k", precision="fp32")
    set_inputs(extract, "SelvaActivationSteeringExtractor", data_dir=str(cache),
               output_path="selva_style_it/steer", n_samples=2, n_timesteps=2)
    entry = comfy.run(extract)
    assert entry["outputs"][_id(extract, "PreviewImage")]["images"]  # the magnitude chart
    vectors = sorted((comfy.output_dir / "selva_style_it").glob("steer*.safetensors"))
    assert vectors and (comfy.output_dir / "selva_style_it" / (vectors[-1].stem + ".png")).is_file()

    sample = _front(comfy, object_info, "SelVA Sample with Steering Vectors", "selva_style_steer0.mp4")
    set_inputs(sample, "SelvaActivationSteeringLoader", path=str(vectors[-1]))
    set_inputs(sample, "SelvaSampler", steps=2, steering_strength=0.3, steering_blocks="top4")
    set_inputs(sample, "SaveAudio", filename_prefix="audio/selva_style_steered")
    entry = comfy.run(sample)
    saved = [p for p in comfy.saved_files(entry) if "selva_style_steered" in p.name]
    assert saved and saved[0].stat().st_size > 1000

    # the earlier pack's mode: per-position vectors, on the conditional branch only
    set_inputs(extract, "SelvaActivationSteeringExtractor", output_path="selva_style_it/steer_pos", n_samples=1,
               n_timesteps=1, mode="per_position")
    comfy.run(extract)
    positions = sorted((comfy.output_dir / "selva_style_it").glob("steer_pos*.safetensors"))
    assert positions
    set_inputs(sample, "SelvaActivationSteeringLoader", path=str(positions[-1]))
    set_inputs(sample, "SelvaSampler", steps=1, steering_strength=0.1, steering_blocks="all")
    set_inputs(sample, "SaveAudio", filename_prefix="audio/selva_style_steered_pos")
    entry = comfy.run(sample)
    assert [p for p in comfy.saved_files(entry) if "selva_style_steered_pos" in p.name]


def _id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)
