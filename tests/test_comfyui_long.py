"""A long video through a real ComfyUI: the bundled long-video workflow on a 20 s clip, tiny models.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (see tests/test_comfyui_integration.py).
"""
from __future__ import annotations

import json

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(2400)


def _streams(path):
    import av

    with av.open(str(path)) as c:
        video = c.streams.video[0]
        shown = [float(f.pts * video.time_base) for f in c.decode(video)]
    with av.open(str(path)) as c:
        audio = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(audio))
        return shown, audio.sample_rate, samples


def test_long_video_workflow_scores_from_start_and_muxes(comfy, object_info):
    from comfyui_selva.selva.variants import get_variant

    write_video(comfy.input_dir / "selva_long_20s.mp4", frames(20.0, seed=4), fps=25)
    prompt = to_api_prompt(load_workflow("SelVA Long Video to Audio"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "LoadVideo", file="selva_long_20s.mp4")
    set_inputs(prompt, "SelvaFeatureExtractor", start=2.0, duration=0.0)
    set_inputs(prompt, "SelvaSampler", steps=2)
    set_inputs(prompt, "SaveAudio", filename_prefix="audio/selva_long_test")
    set_inputs(prompt, "SaveVideo", filename_prefix="video/selva_long_test")
    entry = comfy.run(prompt)
    saved = comfy.saved_files(entry)
    audio = [p for p in saved if "selva_long_test" in p.name and p.parent.name == "audio"]
    video = [p for p in saved if "selva_long_test" in p.name and p.parent.name == "video"]
    assert audio and video, json.dumps(entry["outputs"])[:2000]
    expected = get_variant("tiny_16k").seq_lengths(18.0).audio_samples  # 2 s .. 20 s: 3 windows
    shown, rate, samples = _streams(video[0])
    assert rate == 16000 and abs(samples - expected) <= 2048  # AAC pads to whole frames
    # every test frame is a keyframe (mpeg4 intra): the picture starts exactly at `start`
    assert shown[0] == 0.0 and shown[-1] == pytest.approx(18.0 - 0.04, abs=0.05)


def test_mux_node_turns_an_obs_style_recording_into_a_playable_video_in_comfyuis_temp(comfy, object_info):
    """Matroska H.264 with B-frames (OBS's default): the saved video's picture decodes in full,
    and the node's own file lands in ComfyUI's temp folder, not the system one. The node writes
    MP4 (decode times stored): Save Video's stream copy drops packets that have none."""
    import tempfile
    from pathlib import Path

    from test_media import _clip, _first_packet_is_keyframe

    source = _clip(comfy.input_dir / "selva_obs_bframes.mkv", "libx264", bframes=3)
    temp = comfy.base / "temp"
    before = set(temp.glob("selva_mux_*"))
    system_before = set(Path(tempfile.gettempdir()).glob("selva_mux*"))
    prompt = to_api_prompt(load_workflow("SelVA Long Video to Audio"), object_info)
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")
    set_inputs(prompt, "LoadVideo", file=source.name)
    set_inputs(prompt, "SelvaFeatureExtractor", start=1.3, duration=2.0)
    set_inputs(prompt, "SelvaSampler", steps=1)
    set_inputs(prompt, "SaveAudio", filename_prefix="audio/selva_obs_test")
    set_inputs(prompt, "SaveVideo", filename_prefix="video/selva_obs_test")
    entry = comfy.run(prompt)
    video = [p for p in comfy.saved_files(entry) if "selva_obs_test" in p.name and p.parent.name == "video"]
    assert video, json.dumps(entry["outputs"])[:2000]
    made = set(temp.glob("selva_mux_*")) - before
    assert len(made) == 1 and next(iter(made)).suffix == ".mp4", sorted(temp.iterdir())
    assert set(Path(tempfile.gettempdir()).glob("selva_mux*")) == system_before
    shown, rate, samples = _streams(video[0])
    # the copy begins on the keyframe at 1 s: 0.3 s before start, then the 2 s under the audio
    # (plus at most the one reference frame after it)
    assert _first_packet_is_keyframe(video[0]) and 57 <= len(shown) <= 59
    assert rate == 16000 and abs(samples - (0.3 + 2.0) * 16000) <= 2048
