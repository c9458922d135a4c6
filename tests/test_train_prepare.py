"""prepare_dataset: videos -> clips (.npz + .wav) + dataset.json; resumable; bad videos skipped."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline
from comfyui_selva.selva.datasets import folder as P
from comfyui_selva.selva.train.dataset import load_dataset
from comfyui_selva.selva.train.files import write_wav

from node_helpers import frames, write_video
from train_data import tone


def video_with_audio(path, seconds, rate=22050):
    """An mp4 with a video and a sine sound track (the video's own audio)."""
    import av

    data = (frames(seconds, seed=5) * 255).round().to(torch.uint8).numpy()
    wave = tone(seconds, rate, 440.0).numpy()
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mpeg4", rate=25)
        vs.width, vs.height, vs.pix_fmt = data.shape[2], data.shape[1], "yuv420p"
        aus = out.add_stream("aac", rate=rate, layout="mono")
        for img in data:
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        frame = av.AudioFrame.from_ndarray(wave.astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        for pkt in list(aus.encode(frame)) + list(aus.encode(None)):
            out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)


@pytest.fixture(scope="module")
def pipe(models_dir):
    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


def test_prepare_cuts_clips_writes_an_index_and_resumes(pipe, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    video_with_audio(videos / "long.mp4", 2.6)  # -> 2 clips of 1 s (+ a 0.6 s tail: dropped)
    write_video(videos / "clean.mp4", frames(1.2, seed=2), fps=25)
    write_wav(videos / "clean.wav", tone(1.2, 16000, 880.0), 16000)  # clean audio beside it
    (videos / "broken.mp4").write_bytes(b"not a video")
    (videos / "prompts.csv").write_text("file,prompt\nlong.mp4,an engine\n")
    opts = P.PrepareOptions(videos_dir=videos, out_dir=tmp_path / "ds", prompt="a bell",
                            csv_path=videos / "prompts.csv", clip_seconds=1.0, keep_frames=True)
    index = P.prepare_dataset(pipe, opts)
    ids = [c.id for c in index.clips]
    assert ids == ["clean_000", "long_000", "long_001"]
    assert [c.label for c in index.clips] == ["a bell", "an engine", "an engine"]
    assert [c.start for c in index.clips] == [0.0, 0.0, 1.0]
    assert len(index.failed) == 1 and "broken.mp4" in index.failed[0]["video"]
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [c["id"] for c in on_disk["clips"]] == ids and on_disk["clips"][0]["frames_dir"] == "frames/clean_000"
    assert len(list((tmp_path / "ds" / "frames" / "clean_000").glob("*.jpg"))) > 10
    ds = load_dataset(pipe, tmp_path / "ds")  # a valid training dataset
    assert [c.name for c in ds.clips] == ids
    # the clean file's audio was used for "clean", the video's own track for "long"
    from comfyui_selva.selva.train.audio_files import read_audio

    def peak_hz(name):
        wave, rate = read_audio(tmp_path / "ds" / f"{name}.wav")
        spectrum = torch.fft.rfft(wave[0]).abs()
        return float(spectrum.argmax()) * rate / wave.shape[-1]

    assert abs(peak_hz("clean_000") - 880) < 20 and abs(peak_hz("long_001") - 440) < 20
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("*.npz")}
    again = P.prepare_dataset(pipe, opts)  # resumable: nothing re-made
    assert [c.id for c in again.clips] == ids
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds").glob("*.npz")} == before


def test_prepare_errors(pipe, tmp_path):
    with pytest.raises(SelvaError, match="does not exist"):
        P.prepare_dataset(pipe, P.PrepareOptions(videos_dir=tmp_path / "none", out_dir=tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelvaError, match="No videos"):
        P.prepare_dataset(pipe, P.PrepareOptions(videos_dir=tmp_path / "empty", out_dir=tmp_path / "o"))
    assert P.clip_spans(17.0, 8.0) == [(0.0, 8.0), (8.0, 8.0), (16.0, 1.0)]
    assert P.clip_spans(3.0, 8.0) == [(0.0, 3.0)]
    with pytest.raises(SelvaError, match="not a dataset index"):
        bad = tmp_path / "x.json"
        bad.write_text("[1, 2]")
        P.read_index(bad)
