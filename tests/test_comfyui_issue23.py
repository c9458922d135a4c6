"""Issue 23's nodes and options in a real ComfyUI (shared server: conftest.py / comfy_server.py):
the BigVGAN Scheduler runs a sweep file in the earlier pack's layout, the Harmonic Exciter and
Output Normalizer process audio, the Spectral Matcher takes its new inputs, and the LoRA Trainer
trains with every new option switched on."""
from __future__ import annotations

import json

import pytest

from comfy_pack import pack_module
from train_data import comfy_dataset
from vocoder_helpers import audio_folder, write_tone

pytestmark = pytest.mark.timeout(2400)
LOADER = {"class_type": "SelvaModelLoader", "inputs": {"variant": "tiny_16k", "precision": "fp32",
                                                      "offload_strategy": "auto"}}


def test_bigvgan_scheduler_runs_an_earlier_layout_sweep(comfy):
    audio_folder(comfy.output_dir / "voc_sweep_data")
    (comfy.output_dir / "voc_sweep.json").write_text(json.dumps({
        "name": "voc_sweep", "description": "earlier layout", "data_dir": "voc_sweep_data",
        "output_root": "voc_sweep_root",
        "base": {"steps": 2, "batch_size": 1, "segment_seconds": 0.3, "save_every": 1, "gafilter_kernel_size": 5},
        "experiments": [{"id": "standard", "description": "plain"}, {"id": "no_phase", "lambda_phase": 0.0}]}))
    prompt = {"1": LOADER,
              "2": {"class_type": "SelvaBigvganScheduler", "inputs": {"model": ["1", 0],
                                                                     "experiments_file": "voc_sweep.json"}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
    comfy.run(prompt)
    summary = json.loads((comfy.output_dir / "voc_sweep_root" / "experiment_summary.json").read_text())
    ck = pack_module("selva.vocoder_tuning.checkpoint")
    for name in ("standard", "no_phase"):
        run = summary["runs"][name]
        assert run["status"] == "finished", run["error"]
        tuned = ck.read_tuned_vocoder(run["vocoder"])
        assert any(".gafilter." in k for k in tuned.tensors)  # the earlier layout's default: GAFilters on


def test_post_processing_nodes(comfy):
    write_tone(comfy.input_dir / "post_in.wav", 1.0, 16000, 3500.0)
    prompt = {"1": LOADER,
              "2": {"class_type": "LoadAudio", "inputs": {"audio": "post_in.wav"}},
              "3": {"class_type": "SelvaSpectralMatcher", "inputs": {"model": ["1", 0], "audio": ["2", 0],
                                                                    "strength": 0.5, "mode": "16k",
                                                                    "max_gain_db": 6.0}},
              "4": {"class_type": "SelvaHarmonicExciter", "inputs": {"audio": ["3", 0], "cutoff_hz": 3000.0,
                                                                    "drive": 3.0, "mix": 0.2}},
              "5": {"class_type": "SelvaOutputNormalizer", "inputs": {"audio": ["4", 0], "target_lufs": -16.0,
                                                                     "true_peak_dbtp": -1.0}},
              "6": {"class_type": "SaveAudio", "inputs": {"audio": ["5", 0], "filename_prefix": "post/out"}}}
    saved = comfy.saved_files(comfy.run(prompt))
    assert any(p.suffix == ".flac" for p in saved)
    error = comfy.run_error({**prompt, "3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "mode": "44k"}}})
    assert "mode 44k asks for the 44100 Hz model's profile" in str(error)


def test_lora_trainer_with_every_new_option(comfy):
    folder = comfy.output_dir / "opts_dataset"
    comfy_dataset(comfy, "tiny_16k", folder, "tock", 2)
    prompt = {"1": LOADER,
              "2": {"class_type": "SelvaLoraTrainer", "inputs": {
                  "model": ["1", 0], "data_dir": "opts_dataset", "output_dir": "opts_runs", "steps": 3, "rank": 2,
                  "alpha": 2.0, "target": "attn.qkv", "lr": 1e-3, "warmup_steps": 1, "batch_size": 2,
                  "grad_accum": 1, "save_every": 0, "timestep_sampling": "curriculum", "seed": 3,
                  "lora_dropout": 0.1, "lora_plus_ratio": 4.0, "lr_schedule": "cosine", "logit_normal_sigma": 1.5,
                  "curriculum_switch": 0.5, "latent_mixup_alpha": 0.4, "latent_noise_sigma": 0.02,
                  "spectral_surgery": True}},
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}}}
    comfy.run(prompt)
    meta = json.loads((comfy.output_dir / "opts_runs" / "lora_001" / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["config"]["lr_schedule"] == "cosine"
    assert meta["options"]["lora_plus_ratio"] == 4.0 and meta["options"]["spectral_surgery"] is True
    assert set(meta["eval_metrics"]) == {"0", "3"}
