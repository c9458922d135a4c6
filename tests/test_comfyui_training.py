"""Training in a real ComfyUI: make a dataset clip (Feature Extractor ``name``), train a LoRA on
full-size random small_16k weights, load it and sample; skip a sweep's running experiment over
HTTP while the sweep runs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from train_data import comfy_dataset

pytestmark = pytest.mark.timeout(2400)


def test_train_load_and_sample_on_full_size_weights(comfy, full_models_dir):
    folder = comfy.output_dir / "train_it_dataset"
    comfy_dataset(comfy, "small_16k", folder, "bell", 2)
    assert sorted(p.name for p in folder.glob("bell_*")) == ["bell_001.npz", "bell_001.wav",
                                                            "bell_002.npz", "bell_002.wav"]
    prompt = {
        "1": {"class_type": "SelvaModelLoader", "inputs": {"variant": "small_16k", "precision": "fp32",
                                                           "offload_strategy": "auto"}},
        "2": {"class_type": "SelvaLoraTrainer", "inputs": {
            "model": ["1", 0], "data_dir": "train_it_dataset", "output_dir": "train_it_runs", "steps": 2,
            "rank": 4, "alpha": 4.0, "target": "attn.qkv", "lr": 1e-3, "warmup_steps": 1, "batch_size": 1,
            "grad_accum": 1, "save_every": 0, "timestep_sampling": "logit_normal", "seed": 3,
            "gradient_checkpointing": True}},
        "3": {"class_type": "SelvaLoraLoader", "inputs": {"model": ["1", 0], "adapter_path": "",
                                                          "strength": 1.0, "adapter": ["2", 0]}},
        "4": {"class_type": "LoadVideo", "inputs": {"file": "bell_0.mp4"}},
        "5": {"class_type": "SelvaFeatureExtractor", "inputs": {
            "model": ["1", 0], "video": ["4", 0], "prompt": "a bell", "fps": 0.0, "duration": 1.0,
            "cache_dir": "", "mask_strength": 1.0, "mask_clip": True, "mask_sync": True}},
        "6": {"class_type": "SelvaSampler", "inputs": {
            "model": ["3", 0], "features": ["5", 0], "prompt": "", "negative_prompt": "", "duration": 1.0,
            "steps": 2, "cfg_strength": 4.5, "seed": 0, "normalize": True, "target_lufs": -27.0,
            "batch_size": 1}},
        "7": {"class_type": "SaveAudio", "inputs": {"audio": ["6", 0], "filename_prefix": "train_it/out"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
    }
    entry = comfy.run(prompt)
    saved = comfy.saved_files(entry)
    assert any(p.suffix == ".flac" for p in saved)
    run = comfy.output_dir / "train_it_runs" / "lora_001"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["steps_done"] == 2
    assert (run / "adapter_final.safetensors").is_file()
    assert (run / "samples" / "step_000000.wav").is_file() and (run / "loss_curve.png").is_file()


def test_skip_a_running_sweep_over_http(comfy):
    folder = comfy.output_dir / "sweep_it_dataset"
    comfy_dataset(comfy, "tiny_16k", folder, "tick", 1)
    exp = comfy.output_dir / "sweep_it.json"
    exp.write_text(json.dumps({"base": {"data_dir": str(folder), "steps": 2, "rank": 2, "save_every": 0,
                                        "grad_accum": 1, "eval_samples": False},
                               "experiments": [{"name": "endless", "steps": 1000000},
                                               {"name": "short"}, {"name": "broken", "target": "nope"}]}))
    prompt = {
        "1": {"class_type": "SelvaModelLoader", "inputs": {"variant": "tiny_16k", "precision": "fp32",
                                                           "offload_strategy": "auto"}},
        "2": {"class_type": "SelvaLoraScheduler", "inputs": {"model": ["1", 0], "experiments_file": "sweep_it.json",
                                                             "output_dir": "sweep_it_out"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    prompt_id = comfy.queue(prompt)
    summary = comfy.output_dir / "sweep_it_out" / "sweep_it" / "experiment_summary.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = json.loads(summary.read_text()).get("runs", {}) if summary.is_file() else {}
        run_dir = runs.get("endless", {}).get("run_dir")
        if run_dir and (Path(run_dir) / "meta.json").is_file():
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the sweep did not start: {comfy.log_tail()}")
    answer = comfy.post("/selva/skip", {})
    assert answer["flag_path"].endswith("skip.flag")
    entry = comfy.wait(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "success", comfy.log_tail()
    runs = json.loads(summary.read_text())["runs"]
    assert runs["endless"]["status"] == "stopped" and Path(runs["endless"]["adapter"]).is_file()
    assert runs["short"]["status"] == "finished"
    assert runs["broken"]["status"] == "failed" and "nope" in runs["broken"]["error"]


def test_scheduler_ranks_the_sweep_on_held_out_clips(comfy):
    comfy_dataset(comfy, "tiny_16k", comfy.output_dir / "rank_it_train", "hum", 1)
    comfy_dataset(comfy, "tiny_16k", comfy.output_dir / "rank_it_held_out", "buzz", 1)
    exp = comfy.output_dir / "rank_it.json"
    exp.write_text(json.dumps({"base": {"data_dir": "rank_it_train", "steps": 2, "rank": 2, "save_every": 0,
                                        "grad_accum": 1, "eval_samples": False},
                               "experiments": [{"name": "fast", "lr": 5e-2}, {"name": "broken", "target": "nope"}],
                               "evaluation": {"steps": 2}}))
    prompt = {
        "1": {"class_type": "SelvaModelLoader", "inputs": {"variant": "tiny_16k", "precision": "fp32",
                                                           "offload_strategy": "auto"}},
        "2": {"class_type": "SelvaLoraScheduler", "inputs": {
            "model": ["1", 0], "experiments_file": "rank_it.json", "output_dir": "rank_it_out",
            "held_out_dir": "rank_it_held_out", "rank_by": "spectral"}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
    }
    entry = comfy.run(prompt)
    summary = json.loads((comfy.output_dir / "rank_it_out" / "rank_it" / "experiment_summary.json").read_text())
    ranking = summary["ranking"]
    assert ranking["metric"] == "spectral" and sorted(ranking["order"]) == ["base", "fast"]
    assert ranking["best"] == "fast" and ranking["left_out"]["broken"].startswith("failed: ")
    assert ranking["held_out_dir"] == str(comfy.output_dir / "rank_it_held_out")
    assert summary["runs"]["fast"]["metrics"]["spectral"] == ranking["values"]["fast"]
    shown = json.dumps(entry["outputs"]["3"])
    assert "Best experiment by spectral (lower is better): fast" in shown and "left out: broken" in shown
    assert entry["outputs"]["4"]["images"][0]["filename"].endswith(".png")  # the metrics chart previewed
