"""Dataset nodes in a real ComfyUI (tiny models): the two dataset templates (a folder of videos
to a dataset, then its report and browser), a named Feature Extractor clip cut out of a video's
soundtrack, and the audio chain of ``SelvaDataset*`` nodes, all in one server start."""
from __future__ import annotations

import json

import pytest

from comfy_server import load_workflow, set_inputs, to_api_prompt
from comfyui_selva.selva.train.audio_files import read_audio
from comfyui_selva.selva.train.files import write_wav
from dataset_media import click_time, sound, write_av
from node_helpers import frames, write_video

pytestmark = pytest.mark.timeout(1200)

RATE = 16000


def _loader(prompt):
    set_inputs(prompt, "SelvaModelLoader", variant="tiny_16k", precision="fp32")


def _id(prompt, class_type):
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def test_folder_to_dataset_then_report_and_browse(comfy, object_info):
    videos = comfy.output_dir / "ds_it_videos"
    videos.mkdir()
    write_av(videos / "engine.mkv", 2.0, sound(2.0, RATE, 300.0, 0.3), seed=1)
    write_av(videos / "hush.mkv", 1.0, sound(1.0, RATE, 300.0, 0.0), seed=2)
    prompt = to_api_prompt(load_workflow("SelVA Make a Dataset from a Folder"), object_info)
    _loader(prompt)
    prompt[_id(prompt, "SelvaDatasetFromFolder")]["inputs"].update(
        videos_dir="ds_it_videos", out_dir="ds_it/made", prompt="an engine", clip_seconds=1.0)
    entry = comfy.run(prompt)
    made = comfy.output_dir / "ds_it" / "made"
    index = json.loads((made / "dataset.json").read_text())
    assert [c["id"] for c in index["clips"]] == ["engine_000", "engine_001"]
    assert [c["id"] for c in index["left_out"]] == ["hush_000"] and "silent" in index["left_out"][0]["reason"]
    assert entry["outputs"][_id(prompt, "PreviewImage")]["images"]  # the report picture
    assert "2 clip(s), 0 flagged" in (made / "dataset_report.md").read_text()

    inspect = to_api_prompt(load_workflow("SelVA Inspect a Dataset"), object_info)
    set_inputs(inspect, "SelvaDatasetReport", dataset_dir="ds_it/made")
    set_inputs(inspect, "SelvaDatasetBrowser", dataset_json="ds_it/made", index=1)
    entry = comfy.run(inspect)
    shown = json.dumps(entry["outputs"][_id(inspect, "PreviewAny")])
    assert "an engine" in shown or "dataset_report.md" in shown


def test_named_clip_from_a_soundtrack_lands_in_selva_datasets(comfy):
    write_video(comfy.input_dir / "ds_it_click.mp4", frames(2.0, seed=4), fps=25)
    write_wav(comfy.input_dir / "ds_it_click.wav", sound(2.0, RATE, 200.0, 0.05, click_at=1.2), RATE)
    prompt = {
        "1": {"class_type": "SelvaModelLoader", "inputs": {"variant": "tiny_16k", "precision": "fp32",
                                                           "offload_strategy": "auto"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": "ds_it_click.mp4"}},
        "3": {"class_type": "LoadAudio", "inputs": {"audio": "ds_it_click.wav"}},
        "4": {"class_type": "SelvaFeatureExtractor", "inputs": {
            "model": ["1", 0], "video": ["2", 0], "prompt": "a click", "fps": 0.0, "duration": 1.0,
            "cache_dir": "", "mask_strength": 1.0, "mask_clip": True, "mask_sync": True,
            "name": "ds_it_click", "audio": ["3", 0], "start": 0.5}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }
    comfy.run(prompt)
    wave, rate = read_audio(comfy.output_dir / "selva_datasets" / "ds_it_click" / "ds_it_click_001.wav")
    assert wave.shape[-1] == rate and click_time(wave, rate) == pytest.approx(0.7, abs=2 / rate)


def test_the_audio_dataset_chain_template_runs_every_step(comfy, object_info):
    """Every SelvaDataset* chain node in one run of the bundled template, on two clips whose
    features come from a dataset folder; the saved folder is a dataset the trainer reads."""
    import torch

    from comfyui_selva.selva.datasets import read_dataset

    source = comfy.output_dir / "ds_it_chain" / "source"
    source.mkdir(parents=True)
    feats = comfy.output_dir / "ds_it" / "made"  # made by the first test of this module, if it ran
    for i, name in enumerate(("a", "b")):
        t = torch.arange(RATE) / RATE
        wave = 0.3 * torch.sin(2 * 3.14159 * (300 + 200 * i) * t) * ((t * 4).floor() % 2 == 0)
        write_wav(source / f"{name}.wav", (wave + 1e-4 * torch.randn(RATE))[None], 22050)
        if (feats / "engine_000.npz").is_file():
            (source / f"{name}.npz").write_bytes((feats / "engine_000.npz").read_bytes())
    prompt = to_api_prompt(load_workflow("SelVA Clean a Dataset Step by Step"), object_info)
    _loader(prompt)
    set_inputs(prompt, "SelvaDatasetLoader", folder="ds_it_chain/source")
    set_inputs(prompt, "SelvaDatasetSaver", output_dir="ds_it_chain/clean", npz_source_dir="ds_it_chain/source")
    set_inputs(prompt, "SelvaDatasetAugmenter", variants_per_clip=1, pitch_range_semitones=1.0,
               time_stretch_range=0.1)
    set_inputs(prompt, "SelvaDatasetInspector", min_snr_db=10.0, max_silence_fraction=0.9)
    set_inputs(prompt, "SelvaDatasetHfSmoother", cutoff_hz=5000.0)
    entry = comfy.run(prompt)
    clean = comfy.output_dir / "ds_it_chain" / "clean"
    assert sorted(p.name for p in clean.glob("*.flac")) == ["a.flac", "a_aug00.flac", "b.flac", "b_aug00.flac"]
    shown = json.dumps(entry["outputs"])
    assert "4 clip(s): 4 clean" in shown and "Saved 4 clip(s)" in shown
    assert entry["outputs"][_id(prompt, "PreviewAudio")]["audio"]
    wave, rate = read_audio(clean / "a.flac")
    assert rate == RATE  # resampled from 22050
    if (source / "a.npz").is_file():
        assert [c.stem for c in read_dataset(clean)] == ["a", "a_aug00", "b", "b_aug00"]
