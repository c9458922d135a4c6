"""An earlier-pack PiSSA adapter (.pt, its layout built here) in a real ComfyUI's LoRA Loader: it
samples exactly as the same adapter converted against the base weights, and not as the base."""
from __future__ import annotations

import numpy as np
import pytest

from comfy_server import set_inputs
from node_helpers import frames, write_video
from test_comfyui_lora import VIDEO, _compare_prompt, _output_ids, _saved

pytestmark = pytest.mark.timeout(1800)

PT = "selva_compat_it/adapter_final.pt"
CONVERTED = "selva_compat_it/converted.safetensors"


def test_earlier_pissa_adapter_in_the_lora_loader(comfy, object_info, models_dir):
    from comfyui_selva.selva.adapters import load_adapter, save_adapter
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
    from test_compat_adapters import _pissa_file

    pipe = SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))
    generator = pipe.manager.get("generator")  # the weights the server's tiny_16k loads too
    folder = comfy.output_dir / "selva_compat_it"
    folder.mkdir(parents=True, exist_ok=True)
    path, _ = _pissa_file(generator, folder)
    assert path == comfy.output_dir / PT
    converted = load_adapter(path).against(generator)
    (comfy.output_dir / CONVERTED).unlink(missing_ok=True)
    save_adapter(converted, comfy.output_dir / CONVERTED)
    write_video(comfy.input_dir / VIDEO, frames(1.0, seed=3), fps=25)

    outputs = {}
    for name, adapter in (("pt", PT), ("converted", CONVERTED)):
        prompt = _compare_prompt(object_info, strength=1.0, base_lufs=-24.0 if name == "pt" else -23.0)
        set_inputs(prompt, "SelvaLoraLoader", adapter_path=adapter)
        base_id, lora_id = _output_ids(prompt)
        entry = comfy.run(prompt)
        outputs[name] = (_saved(comfy, entry, base_id), _saved(comfy, entry, lora_id))
    assert np.array_equal(outputs["pt"][1], outputs["converted"][1])
    assert not np.array_equal(outputs["pt"][1], outputs["pt"][0])  # the adapter does something
