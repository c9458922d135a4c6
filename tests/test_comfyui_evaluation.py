"""The LoRA Evaluator's held-out mode inside a real ComfyUI, from the shipped template."""
from __future__ import annotations

import json

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from lora_helpers import write_tiny_adapter

pytestmark = pytest.mark.timeout(2400)

ADAPTER = "selva_eval_it/adapter_final.safetensors"
HELD_OUT = "selva_eval_it/held"


def test_held_out_template_scores_base_and_adapter_in_comfyui(comfy, object_info, models_dir):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
    from train_data import make_dataset

    write_tiny_adapter(comfy.output_dir / ADAPTER)
    pipe = SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))
    make_dataset(pipe, comfy.output_dir / HELD_OUT, clips=2, seconds=1.0)

    prompt = to_api_prompt(load_workflow("SelVA Evaluate LoRAs on Held Out Clips"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "SelvaLoraEvaluator", adapters_file=json.dumps([ADAPTER]), steps=2, seed=4,
               held_out_dir=HELD_OUT, metrics="spectral")
    entry = comfy.run(prompt)
    previews = [item for out in entry["outputs"].values() for item in out.get("images", []) or []]
    assert previews, "the chart was not previewed"
    summaries = sorted((comfy.output_dir / "selva_lora_eval").glob("heldout_*/metrics.json"))
    assert summaries
    data = json.loads(summaries[-1].read_text())
    assert list(data["models"]) == ["base", "adapter_final.safetensors"]
    assert data["settings"]["seed"] == 4 and data["settings"]["clips"] == ["clip_000", "clip_001"]
    assert all(m["spectral"]["mean"] > 0 for m in data["models"].values())
