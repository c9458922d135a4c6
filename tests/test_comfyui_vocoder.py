"""Vocoder tuning in a real ComfyUI: the bundled workflow trains a few steps, loads the tuned
vocoder and samples with it beside the base model (shared server: conftest.py / comfy_server.py)."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from comfy_server import load_workflow, nodes_of, set_inputs, to_api_prompt
from node_helpers import frames, write_video
from vocoder_helpers import audio_folder

pytestmark = pytest.mark.timeout(2400)


def _read(path):
    import av

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        data = [f.to_ndarray() for f in c.decode(stream)]
        import numpy as np

        return stream.sample_rate, torch.from_numpy(np.concatenate(data, axis=-1).astype("float32"))


def _tuning_prompt(comfy, object_info, variant: str, tag: str) -> dict:
    audio_folder(comfy.output_dir / f"{tag}_data")
    write_video(comfy.input_dir / f"{tag}.mp4", frames(1.0, seed=2), fps=25)
    prompt = to_api_prompt(load_workflow("SelVA Vocoder Tuning"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant=variant, precision="fp32")
    set_inputs(prompt, "SelvaBigvganTrainer", data_dir=f"{tag}_data", output_path=f"{tag}_runs", steps=2,
               batch_size=1, segment_seconds=0.3, save_every=1, lr=1e-2)
    set_inputs(prompt, "LoadVideo", file=f"{tag}.mp4")
    set_inputs(prompt, "SelvaFeatureExtractor", duration=1.0)
    set_inputs(prompt, "SelvaSampler", steps=1, normalize=False)
    set_inputs(prompt, "SaveAudio", filename_prefix=f"audio/{tag}_tuned")
    # save the base model's audio too, to compare (the workflow only previews it)
    (preview,) = nodes_of(prompt, "PreviewAudio")
    preview["class_type"] = "SaveAudio"
    preview["inputs"]["filename_prefix"] = f"audio/{tag}_base"
    return prompt


def _check_run(comfy, entry, tag: str) -> "object":
    ck = pack_module("selva.vocoder_tuning.checkpoint")
    saved = comfy.saved_files(entry)
    tuned = [p for p in saved if f"{tag}_tuned" in p.name]
    base = [p for p in saved if f"{tag}_base" in p.name]
    assert tuned and base, saved
    (run,) = sorted((comfy.output_dir / f"{tag}_runs").glob("bigvgan_*"))
    final = ck.read_tuned_vocoder(run / "vocoder_final.safetensors")
    assert final.steps == 2 and final.mode == "snake_alpha_only"
    assert (run / "checkpoints" / "step_000001.pt").is_file()
    assert (run / "samples" / "step_000000.wav").is_file() and (run / "samples" / "step_000002.png").is_file()
    rate_t, wave_t = _read(tuned[0])
    rate_b, wave_b = _read(base[0])
    assert rate_t == rate_b == 16000 and wave_t.shape == wave_b.shape
    assert not torch.equal(wave_t, wave_b), "the tuned vocoder should change the sound"
    return final


def test_vocoder_tuning_workflow_on_tiny_variant(comfy, object_info):
    entry = comfy.run(_tuning_prompt(comfy, object_info, "tiny_16k", "voc_tiny"))
    _check_run(comfy, entry, "voc_tiny")


def test_vocoder_tuning_workflow_on_full_size_weights(comfy, object_info, full_models_dir):
    """The full-size small_16k BigVGAN (v1, best_netG.pt layout) tunes, saves, loads and decodes."""
    entry = comfy.run(_tuning_prompt(comfy, object_info, "small_16k", "voc_full"))
    final = _check_run(comfy, entry, "voc_full")
    # every Snake alpha/beta of the released 16 kHz BigVGAN: the full-size network was tuned
    assert sum(t.numel() for t in final.tensors.values()) == 54_480
