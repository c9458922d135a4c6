"""Vocoder sweeps (SelVA BigVGAN Scheduler's core): both file layouts, resume, failures."""
from __future__ import annotations

import json

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.vocoder_tuning import checkpoint as ck
from comfyui_selva.selva.vocoder_tuning.sweep import EARLIER_DEFAULTS, read_vocoder_sweep, run_vocoder_sweep
from vocoder_helpers import audio_folder, write_discriminator_file


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return audio_folder(tmp_path_factory.mktemp("voc_data"))


def earlier_optimized_dataset_file(path, data_dir, output_root, discriminator):
    """The layout of the earlier pack's experiments/bigvgan_optimized_dataset.json, rebuilt here
    (data_dir pointed at the test audio, steps cut to 2, segments made short for the tiny model)."""
    spec = {
        "name": "bigvgan_optimized_dataset",
        "description": "BigVGAN fine-tuning on an optimized dataset.",
        "data_dir": str(data_dir),
        "output_root": str(output_root),
        "base": {"train_mode": "snake_alpha_only", "steps": 2, "lr": 1e-4, "batch_size": 2,
                 "segment_seconds": 0.3, "lambda_l2sp": 1e-3, "use_gafilter": True,
                 "gafilter_kernel_size": 9, "lambda_phase": 1.0, "save_every": 1, "seed": 42},
        "experiments": [
            {"id": "standard_5k", "description": "Standard mode."},
            {"id": "disc_fm_5k", "description": "With discriminator feature matching.",
             "discriminator_path": str(discriminator)},
            {"id": "standard_10k", "description": "Longer.", "steps": 3},
        ],
    }
    path.write_text(json.dumps(spec, indent=2))
    return path


def tiny_discriminator(folder):
    from comfyui_selva.bigvgan.discriminators import DiscriminatorConfig, MultiPeriodDiscriminator, build_second

    cfg = DiscriminatorConfig(sampling_rate=16_000, second="mrd", discriminator_channel_mult=0.125)
    torch.manual_seed(0)
    path = folder / "do_00010000"
    folder.mkdir(parents=True, exist_ok=True)
    write_discriminator_file(path, MultiPeriodDiscriminator(cfg), build_second(cfg), "mrd")
    (folder / "config.json").write_text(json.dumps(
        {"mpd_reshapes": [2, 3, 5, 7, 11], "discriminator_channel_mult": 0.125,
         "resolutions": [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]], "sampling_rate": 16000}))
    return path


def test_the_earlier_packs_optimized_dataset_sweep_runs_to_the_end(model, data_dir, tmp_path):
    file = earlier_optimized_dataset_file(tmp_path / "bigvgan_optimized_dataset.json", data_dir,
                                          tmp_path / "out_root", tiny_discriminator(tmp_path / "disc"))
    with torch.inference_mode():
        result = run_vocoder_sweep(model, file, tmp_path / "unused")
    assert result.sweep_dir == tmp_path / "out_root"
    runs = result.summary["runs"]
    assert list(runs) == ["standard_5k", "disc_fm_5k", "standard_10k"]
    for name, r in runs.items():
        assert r["status"] == "finished", (name, r["error"])
        tuned = ck.read_tuned_vocoder(r["vocoder"])
        assert any(".gafilter." in k for k in tuned.tensors)  # use_gafilter applied
    assert runs["standard_10k"]["steps_done"] == 3 and runs["standard_5k"]["description"] == "Standard mode."
    assert not any("group" in r for r in runs.values())  # none given: none recorded (as the LoRA sweep)
    assert result.summary["name"] == "bigvgan_optimized_dataset"
    meta = json.loads((tmp_path / "out_root" / runs["disc_fm_5k"]["run_dir"] / "meta.json").read_text())
    assert meta["settings"]["discriminators"] is True
    assert (result.sweep_dir / "comparison_curves.png").is_file()
    # running it again skips every finished run
    with torch.inference_mode():
        again = run_vocoder_sweep(model, file, tmp_path / "unused")
    assert {k: v["run_dir"] for k, v in again.summary["runs"].items()} == {k: v["run_dir"] for k, v in runs.items()}


def test_our_layout_defaults_and_a_failing_run_is_recorded(model, data_dir, tmp_path):
    file = tmp_path / "voc.json"
    file.write_text(json.dumps({"base": {"data_dir": str(data_dir), "steps": 2, "batch_size": 2,
                                         "segment_seconds": 0.3, "save_every": 0},
                                "experiments": [{"name": "plain"},
                                                {"name": "broken", "discriminator_path": str(tmp_path / "nope.pt")},
                                                {"name": "phase", "lambda_phase": 0.5}]}))
    exps = read_vocoder_sweep(file).experiments
    assert "use_gafilter" not in exps[0].settings  # our layout keeps our defaults
    with torch.inference_mode():
        result = run_vocoder_sweep(model, file, tmp_path / "sweeps")
    assert result.sweep_dir == tmp_path / "sweeps" / "voc"
    runs = result.summary["runs"]
    assert runs["plain"]["status"] == runs["phase"]["status"] == "finished"
    assert runs["broken"]["status"] == "failed" and "Discriminator file not found" in runs["broken"]["error"]
    assert [v["name"] for v in result.summary["vocoders"]] == ["plain", "phase"]


def test_earlier_layout_gets_the_earlier_defaults_and_unknown_keys_are_clear_errors(tmp_path):
    file = tmp_path / "old.json"
    file.write_text(json.dumps({"data_dir": "/data", "experiments": [{"id": "a"}, {"id": "b", "seed": 1}]}))
    read = read_vocoder_sweep(file)
    assert read.experiments[0].settings == {**EARLIER_DEFAULTS, "data_dir": "/data"}
    assert read.experiments[1].settings["seed"] == 1
    file.write_text(json.dumps({"data_dir": "/data", "experiments": [{"id": "a", "lambda_fancy": 2}]}))
    with pytest.raises(SelvaError, match="experiment 'a' has unknown setting\\(s\\) lambda_fancy; known: "):
        read_vocoder_sweep(file)
    file.write_text(json.dumps({"experiments": [{"name": "a"}]}))
    with pytest.raises(SelvaError, match="experiment 'a' has no data_dir"):
        read_vocoder_sweep(file)
