"""Editing and text to audio through a real ComfyUI: the bundled templates on tiny models.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (see tests/test_comfyui_integration.py).
"""
from __future__ import annotations

import json

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from node_helpers import frames, write_video
from style_helpers import write_wav

pytestmark = pytest.mark.timeout(2400)


def _audio(path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        data = np.concatenate([f.to_ndarray().reshape(stream.channels, -1) for f in c.decode(stream)], axis=1)
        if np.issubdtype(data.dtype, np.integer):  # PCM: scale to [-1, 1)
            data = data / float(np.iinfo(data.dtype).max + 1)
        return stream.sample_rate, data


def _saved_audio(comfy, entry, name):
    saved = [p for p in comfy.saved_files(entry) if name in p.name and p.parent.name == "audio"]
    assert saved, json.dumps(entry["outputs"])[:2000]
    return _audio(saved[0])


def test_text_to_audio_template(comfy, object_info):
    from comfyui_selva.selva.variants import get_variant

    prompt = to_api_prompt(load_workflow("SelVA Text to Audio"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "SelvaTextToAudio", duration=1.5, steps=2)
    set_inputs(prompt, "SaveAudio", filename_prefix="audio/selva_t2a_test")
    rate, data = _saved_audio(comfy, comfy.run(prompt), "selva_t2a_test")
    assert rate == 16000 and abs(data.shape[-1] - get_variant("tiny_16k").seq_lengths(1.5).audio_samples) <= 1024


def test_replace_a_range_template_keeps_the_take_outside_the_range(comfy, object_info):
    write_video(comfy.input_dir / "selva_edit.mp4", frames(2.0, seed=2), fps=25)
    write_wav(comfy.input_dir / "selva_take.wav", seconds=2.0, rate=16000)
    prompt = to_api_prompt(load_workflow("SelVA Replace a Sound in a Time Range"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "LoadVideo", file="selva_edit.mp4")
    set_inputs(prompt, "LoadAudio", audio="selva_take.wav")
    set_inputs(prompt, "SelvaFeatureExtractor", duration=2.0)
    set_inputs(prompt, "SelvaSampler", steps=2, normalize=False, regenerate_start=0.5, regenerate_end=1.2)
    set_inputs(prompt, "SaveAudio", filename_prefix="audio/selva_range_test")
    rate, data = _saved_audio(comfy, comfy.run(prompt), "selva_range_test")
    _, take = _audio(comfy.input_dir / "selva_take.wav")
    assert rate == 16000
    # saved as FLAC from float: the untouched part is the take to within 16-bit rounding
    assert abs(data[0, :7000] - take[0, :7000]).max() < 1e-3
    assert abs(data[0, 8000:19200] - take[0, 8000:19200]).max() > 1e-2
