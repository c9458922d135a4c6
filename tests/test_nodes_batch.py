"""SelVA Batch Generate in-process: outputs, first row's audio, Cancel and continuing."""
from __future__ import annotations

import json

import pytest

from comfy_pack import pack_module
from node_helpers import frames, run_node, write_video

Interrupted = pack_module("selva.hooks").Interrupted
SelvaError = pack_module("selva.errors").SelvaError


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "input" / "clips"
    folder.mkdir(parents=True)
    for i in range(3):
        write_video(folder / f"clip{i}.mp4", frames(1.0, seed=i), fps=25)
    return folder


def run(model, folder, out, **kw):
    inputs = dict(model=model, folder=str(folder), prompt="rain", negative_prompt="", steps=1, cfg_strength=4.5,
                  seed=3, output_folder=str(out), duration=0.0, normalize=True, format="wav")
    return run_node("SelvaBatchGenerate", **{**inputs, **kw})


def test_node_writes_every_row_and_returns_the_first_audio(model, videos, tmp_path):
    results_path, audio = run(model, videos, tmp_path / "out")
    lines = [json.loads(x) for x in open(results_path)]
    assert [x["name"] for x in lines] == ["clip0", "clip1", "clip2"]
    assert all(x["status"] == "done" for x in lines)
    assert audio["sample_rate"] == 16000 and audio["waveform"].shape[:2] == (1, 1)
    assert audio["waveform"].shape[-1] == model.variant.seq_lengths(1.0).audio_samples


def test_relative_folder_is_inside_the_input_folder(model, videos, tmp_path, monkeypatch):
    monkeypatch.setenv("SELVA_INPUT_DIR", str(tmp_path / "input"))
    results_path, _ = run(model, "clips", tmp_path / "out", seed=1)
    assert len(open(results_path).readlines()) == 3
    with pytest.raises(SelvaError, match="nowhere does not exist: give a folder of videos or a manifest"):
        run(model, "nowhere", tmp_path / "out")


def test_cancel_keeps_finished_rows_and_a_requeue_continues(model, videos, tmp_path, monkeypatch):
    compat = pack_module("nodes.comfy_compat")
    out = tmp_path / "out"
    # Cancel is pressed while the second row is being made
    monkeypatch.setattr(compat, "processing_interrupted", lambda: len(list(out.glob("*.wav"))) >= 1)
    with pytest.raises(Interrupted):
        run(model, videos, out)
    assert sorted(p.name for p in out.glob("*.wav")) == ["clip0.wav"]
    lines = [json.loads(x) for x in open(out / "results.jsonl")]
    assert [(x["name"], x["status"]) for x in lines] == [("clip0", "done")]
    monkeypatch.setattr(compat, "processing_interrupted", lambda: False)
    results_path, audio = run(model, videos, out)
    lines = [json.loads(x) for x in open(results_path)]
    assert [x["status"] for x in lines] == ["skipped", "done", "done"]
    assert audio["waveform"].shape[-1] > 0  # the first row's audio comes from its file
