"""Long videos through the nodes and the CLI: start, window inputs, muxing aligned with start."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_selva.selva import cli, media
from comfyui_selva.selva import long_video
from comfyui_selva.selva.errors import SelvaError

from comfy_pack import input_spec, load_pack, pack_module
from node_helpers import FakeVideoFromFile, frames, run_node, write_video


def _gop_video(path: Path, seconds: int = 6, fps: int = 25) -> Path:
    """H.264 with a keyframe every second and B-frames; frame i is flat grey of level 1.6 i."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": str(fps), "keyint_min": str(fps), "sc_threshold": "0", "bf": "2"}
        for i in range(seconds * fps):
            img = np.full((48, 64, 3), int(i * 1.6), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _read_muxed(path: Path):
    """(frame times and source-frame numbers, audio samples, audio start) of a muxed file."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        shown = [(float(f.pts * v.time_base), f.to_ndarray(format="rgb24")[0, 0, 0] / 1.6)
                 for f in c.decode(v)]
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        decoded = list(c.decode(a))
        first = float(decoded[0].pts * a.time_base)
        samples = np.concatenate([f.to_ndarray() for f in decoded], axis=-1)[0]
    return shown, samples, first


@pytest.mark.parametrize("start", [2.5, 3.0])
def test_mux_keeps_the_audio_aligned_with_start(tmp_path, start):
    src = _gop_video(tmp_path / "gop.mp4")
    rate = 16000
    wave = torch.full((1, 3 * rate), 0.5)
    out = media.mux_video(src, wave, rate, tmp_path / "out.mp4", duration=3.0, start=start)
    shown, samples, first = _read_muxed(out)
    keyframe = float(int(start))  # keyframes every second: the copy begins on the one before
    t0, frame0 = shown[0]
    assert t0 == 0.0 and frame0 == pytest.approx(25 * keyframe, abs=0.7)
    onset = first + np.argmax(np.abs(samples) > 0.25) / rate
    # the audio begins where `start` is in the copied picture
    assert onset == pytest.approx(start - keyframe, abs=0.03)
    t_last, frame_last = shown[-1]
    # the last frame under the audio, or the one after it when a B-frame under the audio refers
    # to it (the copy keeps such a reference frame rather than leave that B-frame undecodable)
    assert start + 3.0 - 0.04 - 0.01 <= t_last + keyframe <= start + 3.0 + 0.03


def test_mux_from_zero_is_unchanged(tmp_path):
    src = _gop_video(tmp_path / "gop.mp4", seconds=3)
    rate = 16000
    out = media.mux_video(src, torch.full((1, 2 * rate), 0.5), rate, tmp_path / "out.mp4")
    shown, samples, first = _read_muxed(out)
    assert shown[0][1] == pytest.approx(0, abs=0.7) and first + np.argmax(np.abs(samples) > 0.25) / rate < 0.03
    assert shown[-1][0] == pytest.approx(1.96, abs=0.05)


# ------------------------------------------------------------------------------------ nodes
def test_new_inputs_sit_at_the_end_with_the_core_defaults():
    classes = load_pack().NODE_CLASS_MAPPINGS
    extractor = list(input_spec(classes["SelvaFeatureExtractor"]))
    sampler = list(input_spec(classes["SelvaSampler"]))
    assert extractor[-1] == "start"
    # the window inputs came before the editing inputs, which came last (tests/test_nodes.py)
    assert sampler[-6:-4] == ["window_seconds", "overlap_seconds"]
    opts = classes["SelvaSampler"].INPUT_TYPES()["optional"]
    assert opts["window_seconds"][1]["default"] == long_video.DEFAULT_WINDOW_SECONDS
    assert opts["overlap_seconds"][1]["default"] == long_video.DEFAULT_OVERLAP_SECONDS


def _features(model, video, **kw):
    (feats, fps, _) = run_node("SelvaFeatureExtractor", model=model, video=video, prompt="rain",
                               fps=25.0, duration=kw.pop("duration", 0.0), cache_dir="",
                               mask_strength=1.0, mask_clip=True, mask_sync=True, **kw)
    return feats


def _sample(model, feats, **kw):
    (audio,) = run_node("SelvaSampler", model=model, features=feats, prompt="", negative_prompt="",
                        duration=0.0, steps=1, cfg_strength=4.5, seed=0, normalize=False,
                        batch_size=1, **kw)
    return audio


def test_feature_extractor_start_and_its_errors(model, tmp_path):
    video = frames(4.0)
    feats = _features(model, video, start=1.0, duration=2.0)
    direct = _features(model, video[25:75])
    assert feats.start == 1.0 and feats.duration == 2.0
    assert torch.equal(feats.sync_frames_u8, direct.sync_frames_u8)
    with pytest.raises(SelvaError, match="beyond the end"):
        _features(model, video, start=9.0)
    # a file-backed VIDEO is streamed from the start on
    path = write_video(tmp_path / "v.mp4", video)
    streamed = _features(model, FakeVideoFromFile(str(path)), start=1.0, duration=2.0)
    assert streamed.start == 1.0 and streamed.sync_frames_u8.shape == direct.sync_frames_u8.shape


def test_sampler_window_inputs(model, tmp_path):
    feats = _features(model, frames(2.0))
    base = _sample(model, feats)
    # 1.28 s windows make a 2 s clip a long one (same length, other audio) ...
    windowed = _sample(model, feats, window_seconds=1.28, overlap_seconds=0.32)
    assert windowed["waveform"].shape == base["waveform"].shape
    assert not torch.equal(windowed["waveform"], base["waveform"])
    # ... the defaults leave it one window, as without the inputs
    assert torch.equal(_sample(model, feats, window_seconds=8.0, overlap_seconds=2.56)["waveform"],
                       base["waveform"])
    with pytest.raises(SelvaError, match="shorter than window_seconds"):
        _sample(model, feats, window_seconds=1.28, overlap_seconds=1.28)


def test_mux_node_writes_a_new_file_aligned_with_the_features(model, tmp_path, monkeypatch):
    monkeypatch.setattr(pack_module("nodes.comfy_compat"), "comfy_temp_dir", lambda: tmp_path / "temp")
    src = _gop_video(tmp_path / "gop.mp4", seconds=4)
    feats = _features(model, FakeVideoFromFile(str(src)), start=1.5, duration=2.0)
    audio = {"waveform": torch.full((2, 1, 2 * 16000), 0.5), "sample_rate": 16000}
    (first,) = run_node("SelvaMuxVideo", video=FakeVideoFromFile(str(src)), audio=audio, features=feats)
    (second,) = run_node("SelvaMuxVideo", video=FakeVideoFromFile(str(src)), audio=audio,
                         features=feats, variation=1)
    a, b = Path(first.get_stream_source()), Path(second.get_stream_source())
    assert a != b and a.is_file() and b.is_file(), "every run writes a new numbered file"
    assert a.parent == b.parent == tmp_path / "temp" and a.name == "selva_mux_00001.mp4"
    shown, samples, start = _read_muxed(a)
    assert shown[0][1] == pytest.approx(25, abs=0.7)  # the keyframe at 1 s
    assert start + np.argmax(np.abs(samples) > 0.25) / 16000 == pytest.approx(0.5, abs=0.03)
    with pytest.raises(SelvaError, match="variation 2 does not exist"):
        run_node("SelvaMuxVideo", video=FakeVideoFromFile(str(src)), audio=audio, features=feats,
                 variation=2)
    with pytest.raises(SelvaError, match="loaded from a file"):
        run_node("SelvaMuxVideo", video=object(), audio=audio, features=feats)


# -------------------------------------------------------------------------------------- CLI
def test_cli_start_windows_and_mux(models_dir, tmp_path, monkeypatch):
    from node_helpers import env_for_models

    env_for_models(monkeypatch, models_dir)
    src = _gop_video(tmp_path / "in.mp4", seconds=5)
    out, muxed = tmp_path / "a.wav", tmp_path / "m.mp4"
    rc = cli.main(["generate", "--video", str(src), "--prompt", "rain", "--start", "1.5",
                   "--duration", "3", "--steps", "1", "--variant", "tiny_16k", "--precision", "fp32",
                   "--device", "cpu", "--offline", "--window-seconds", "1.92",
                   "--overlap-seconds", "0.64", "--out", str(out), "--mux", str(muxed)])
    assert rc == 0
    import av

    with av.open(str(out)) as c:
        n = sum(f.samples for f in c.decode(audio=0))
    from comfyui_selva.selva.variants import get_variant

    assert n == get_variant("tiny_16k").seq_lengths(3.0).audio_samples
    shown, samples, start = _read_muxed(muxed)
    assert shown[0][1] == pytest.approx(25, abs=0.7)
    assert cli.main(["generate", "--video", str(src), "--prompt", "rain", "--start", "9",
                     "--steps", "1", "--variant", "tiny_16k", "--device", "cpu", "--offline",
                     "--out", str(tmp_path / "b.wav")]) == 1
