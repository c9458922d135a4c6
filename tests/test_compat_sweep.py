"""Sweep files in the earlier pack's layout (rebuilt here from its experiments/*.json) run as there."""
from __future__ import annotations

import json

import pytest

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.train import sweep as S
from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions

LORA_FIELDS = set(LoraTrainOptions.__dataclass_fields__)


def earlier_lora_file(path, data_dir="/data/features", **extra_exp):
    """The layout of its pissa_sweep.json / tier1_sweep.json."""
    path.write_text(json.dumps({
        "name": "pissa_sweep", "description": "PiSSA vs standard init",
        "data_dir": str(data_dir), "output_root": "lora_sweeps/pissa_sweep",
        "base": {"steps": 2, "rank": 2, "alpha": 0.0, "lr": 3e-4, "warmup_steps": 1, "save_every": 2000,
                 "seed": 42, "target": "attn.qkv", "timestep_mode": "uniform", "lora_dropout": 0.0,
                 "lora_plus_ratio": 1.0, "lr_schedule": "constant", "logit_normal_sigma": 1.0,
                 "curriculum_switch": 0.6},
        "experiments": [
            {"id": "standard_baseline", "description": "classic", "init_mode": "standard",
             "use_rslora": False},
            {"id": "pissa_rslora", "group": "tier_s", "description": "defaults of the earlier pack",
             **extra_exp},
        ]}))
    return path


def test_earlier_lora_layout_reads_with_its_names_and_defaults(tmp_path):
    exps = S.read_experiments(earlier_lora_file(tmp_path / "pissa_sweep.json"))
    assert [e.name for e in exps] == ["standard_baseline", "pissa_rslora"]
    std, pissa = exps[0].settings, exps[1].settings
    assert std["data_dir"] == "/data/features"
    assert (std["init"], std["rslora"]) == ("default", False)
    # left out of the file: the earlier defaults (PiSSA, rsLoRA, batch 4, grad_accum 1, uniform)
    assert (pissa["init"], pissa["rslora"], pissa["batch_size"], pissa["grad_accum"],
            pissa["timestep_sampling"]) == ("pissa", True, 4, 1, "uniform")
    assert LoraTrainOptions().batch_size != 4 or LoraTrainOptions().grad_accum != 1  # ours differ
    assert pissa["alpha"] == 4.0  # alpha 0 = 2 x rank
    assert exps[1].info == {"group": "tier_s", "description": "defaults of the earlier pack"}
    assert "description" not in pissa and "id" not in pissa
    for key in ("lora_dropout", "lora_plus_ratio", "lr_schedule", "curriculum_switch"):
        assert (key in pissa) == (key in LORA_FIELDS)  # neutral earlier options: ours, or dropped
    options = LoraTrainOptions.from_dict({k: v for k, v in pissa.items() if k != "data_dir"})
    options.validate()


def test_earlier_option_we_lack_or_unknown_key_is_a_clear_error(tmp_path):
    if "lora_dropout" in LORA_FIELDS:  # helper C's options arrived: the value is passed on
        exps = S.read_experiments(earlier_lora_file(tmp_path / "d.json", lora_dropout=0.05))
        assert exps[1].settings["lora_dropout"] == 0.05
    else:
        with pytest.raises(SelvaError, match=r"sets the earlier pack's option\(s\) lora_dropout=0.05, "
                                             r"which this version's trainer does not have yet"):
            S.read_experiments(earlier_lora_file(tmp_path / "d.json", lora_dropout=0.05))
    with pytest.raises(SelvaError, match=r"experiment 'pissa_rslora' has unknown setting\(s\) frobnicate"):
        S.read_experiments(earlier_lora_file(tmp_path / "u.json", frobnicate=1))
    bad = json.loads(earlier_lora_file(tmp_path / "n.json").read_text())
    del bad["experiments"][0]["id"]
    (tmp_path / "n.json").write_text(json.dumps(bad))
    with pytest.raises(SelvaError, match='experiment 1 needs an "id"'):
        S.read_experiments(tmp_path / "n.json")


def test_earlier_ti_layout(tmp_path):
    from comfyui_selva.selva.style.textual_inversion import TiTrainOptions

    fields = set(TiTrainOptions.__dataclass_fields__)
    path = tmp_path / "ti_sweep_1.json"
    spec = {"name": "ti_sweep_1", "description": "first TI sweep", "data_dir": "/f",
            "output_root": "/abs/ti_sweep_1",
            "base": {"steps": 30, "save_every": 10, "init_text": "", "n_tokens": 4, "inject_mode": "suffix"},
            "experiments": [{"id": "n4_clamped", "group": "norm_clamp"}]}
    path.write_text(json.dumps(spec))
    (exp,) = S.read_experiments(path, TiTrainOptions)
    s = exp.settings
    assert (s["lr"], s["batch_size"], s["warmup_steps"], s["steps"]) == (2e-4, 4, 100, 30)
    assert s.get("path", "clip") == "clip" and exp.info == {"group": "norm_clamp"}
    assert str(S.sweep_dir_for(path, tmp_path / "out")) == "/abs/ti_sweep_1"  # absolute: as is
    spec["experiments"].append({"id": "n4_prefix", "inject_mode": "prefix"})
    path.write_text(json.dumps(spec))
    if "inject_mode" not in fields:
        with pytest.raises(SelvaError, match="experiment 'n4_prefix' uses inject_mode 'prefix'.*Use "
                                             "inject_mode 'suffix' for it, or remove the experiment"):
            S.read_experiments(path, TiTrainOptions)


def test_our_layout_is_unchanged(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"base": {"data_dir": "/d", "rank": 4},
                                "experiments": [{"name": "a", "description": "kept", "alpha": 0.5}]}))
    (exp,) = S.read_experiments(path)
    assert exp.settings == {"data_dir": "/d", "rank": 4, "alpha": 0.5} and exp.info == {"description": "kept"}
    assert S.sweep_dir_for(path, tmp_path / "out") == tmp_path / "out" / "mine"
    earlier = json.loads(earlier_lora_file(tmp_path / "e.json").read_text())
    del earlier["output_root"]  # then the earlier pack used the sweep's name as its folder
    (tmp_path / "e.json").write_text(json.dumps(earlier))
    assert S.sweep_dir_for(tmp_path / "e.json", tmp_path / "out") == tmp_path / "out" / "pissa_sweep"


@pytest.fixture(scope="module")
def pipe(models_dir):
    from comfyui_selva.selva.pipeline import LoadOptions, SelvaPipeline

    return SelvaPipeline.load(LoadOptions(variant="tiny_16k", precision="fp32", device="cpu",
                                          models_dir=models_dir, allow_download=False))


def test_earlier_sweep_runs_into_its_output_root(pipe, tmp_path):
    from train_data import make_dataset

    data = make_dataset(pipe, tmp_path / "data", clips=2)
    path = earlier_lora_file(tmp_path / "pissa_sweep.json", data_dir=data)
    result = S.run_sweep(pipe, path, tmp_path / "out")
    assert result.sweep_dir == tmp_path / "out" / "lora_sweeps" / "pissa_sweep"
    summary = json.loads((result.sweep_dir / S.SUMMARY_NAME).read_text())
    runs = summary["runs"]
    assert [r["status"] for r in runs.values()] == ["finished", "finished"], runs
    assert runs["pissa_rslora"]["group"] == "tier_s" and runs["standard_baseline"]["description"] == "classic"
    assert runs["pissa_rslora"]["settings"]["init"] == "pissa"
    assert (summary["name"], summary["description"]) == ("pissa_sweep", "PiSSA vs standard init")
    from comfyui_selva.selva.adapters import load_adapter
    adapter = load_adapter(tmp_path / runs["pissa_rslora"]["adapter"])
    assert adapter.meta.init == "pissa" and adapter.meta.rslora and adapter.meta.alpha == 4.0


def test_earlier_vocoder_layout_uses_its_defaults(tmp_path):
    """The BigVGAN Scheduler's files (its bigvgan_*.json layout), read with a vocoder options class."""
    from dataclasses import dataclass

    @dataclass
    class VocoderOptions:  # the fields our vocoder tuning has today
        train_mode: str = "snake_alpha_only"
        steps: int = 2000
        lr: float = 1e-4
        batch_size: int = 1
        segment_seconds: float = 1.0
        lambda_l2sp: float = 0.0
        save_every: int = 500
        seed: int = 0
        discriminator_path: str = ""

    path = tmp_path / "bigvgan_optimized_dataset.json"
    spec = {"name": "bigvgan_optimized_dataset", "data_dir": "/audio", "output_root": "voc",
            "base": {"steps": 4000, "use_gafilter": False, "lambda_phase": 0.0, "lora_adapter": ""},
            "experiments": [{"id": "snake", "description": "alpha only"}]}
    path.write_text(json.dumps(spec))
    (exp,) = S.read_experiments(path, VocoderOptions)
    assert exp.settings == {"train_mode": "snake_alpha_only", "steps": 4000, "lr": 1e-4, "batch_size": 4,
                            "segment_seconds": 2.0, "lambda_l2sp": 1e-3, "save_every": 500, "seed": 42,
                            "discriminator_path": "", "data_dir": "/audio"}
    del spec["base"]["use_gafilter"]  # GAFilter was on by default there
    path.write_text(json.dumps(spec))
    with pytest.raises(SelvaError, match=r"use_gafilter=True, which this version's trainer does not have"):
        S.read_experiments(path, VocoderOptions)
