"""Six sweep files of the earlier SelVA pack, their layout rebuilt here, run to the end in our
Schedulers: the LoRA Scheduler, the Textual Inversion Scheduler and the BigVGAN Scheduler.

Each file keeps the earlier file's structure: top-level ``name``/``description``/``data_dir``/
``output_root``, a ``base`` with that file's keys, experiments named by ``id`` with its
``description``/``group`` and the per-experiment keys and values it varies. Only what the test
machine needs changes: ``data_dir`` points at a tiny dataset, ``steps`` is 2 (3 where an
experiment sets its own), ranks and alphas are divided by 16 (the tiny generator's
layers are 32 wide, too narrow for PiSSA at rank 128), and the vocoder's paths point at files
made here. The values are written here, not copied from that pack.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from node_helpers import run_node

SCALE = 16  # ranks and alphas of the earlier files / this


def _rank(r: int) -> int:
    return max(1, r // SCALE)


def _lora_base(**over):
    """The base most of its LoRA files share (tier1 / r64 / r128 / vocoder_finetune)."""
    base = {"steps": 2, "rank": _rank(128), "alpha": 0.0, "lr": 1e-4, "batch_size": 16, "warmup_steps": 1,
            "grad_accum": 1, "save_every": 2000, "seed": 42, "target": "attn.qkv", "timestep_mode": "uniform",
            "logit_normal_sigma": 1.0, "curriculum_switch": 0.6, "lora_dropout": 0.0, "lora_plus_ratio": 1.0}
    base.update(over)
    return base


def _file(name: str, description: str, data_dir: Path, output_root: Path, base: dict, experiments: list) -> dict:
    return {"name": name, "description": description, "data_dir": str(data_dir), "output_root": str(output_root),
            "base": base, "experiments": experiments}


def tier1_thorough(data_dir, out, **_):
    """Groups; per-experiment rank, alpha (0 = 2 x rank, or a number), lr, target, timestep mode,
    dropout, LoRA+ ratio, steps and save_every."""
    return _file("tier1_thorough", "Tier 1, thorough", data_dir, out,
                 _lora_base(rank=_rank(64), lr=1e-4, timestep_mode="curriculum", save_every=1000), [
        {"id": "g1_r16_a8", "group": "rank_alpha", "description": "small rank, own alpha",
         "rank": _rank(16), "alpha": 8.0 / SCALE, "lr": 3e-4},
        {"id": "g2_r32_linear1", "group": "targets", "description": "attention and first MLP layer",
         "rank": _rank(32), "alpha": 32.0 / SCALE, "target": "attn.qkv linear1", "lr": 3e-5},
        {"id": "g3_dropout_plus_longer", "group": "regularise", "description": "dropout, LoRA+, more steps",
         "lora_dropout": 0.1, "lora_plus_ratio": 16.0, "timestep_mode": "uniform", "steps": 3, "save_every": 2},
    ])


def pissa_sweep(data_dir, out, **_):
    """init_mode standard / pissa, use_rslora on / off, lr and dropout per experiment, alpha 0."""
    return _file("pissa_sweep", "PiSSA against standard init", data_dir, out,
                 _lora_base(init_mode="pissa", use_rslora=True, lr_schedule="constant", lr=3e-4), [
        {"id": "standard_baseline", "description": "classic init, no rsLoRA", "init_mode": "standard",
         "use_rslora": False},
        {"id": "pissa_rslora", "description": "the earlier defaults"},
        {"id": "pissa_no_rslora_dropout", "description": "PiSSA without rsLoRA, higher lr, dropout",
         "use_rslora": False, "lr": 5e-4, "lora_dropout": 0.05},
    ])


def lora_optimized_dataset(data_dir, out, **_):
    """No alpha or dropout keys (the earlier defaults apply); timestep modes uniform / logit_normal /
    curriculum; constant and cosine lr; latent mixup and latent noise."""
    base = {"rank": _rank(128), "lr": 3e-4, "steps": 2, "batch_size": 16, "warmup_steps": 1, "save_every": 1000,
            "seed": 42, "init_mode": "pissa", "use_rslora": True, "target": "attn.qkv",
            "timestep_mode": "uniform", "lr_schedule": "constant"}
    return _file("lora_optimized_dataset", "LoRA on the cleaned dataset", data_dir, out, base, [
        {"id": "baseline", "description": "as before"},
        {"id": "logit_cosine", "description": "logit-normal timesteps, cosine lr",
         "timestep_mode": "logit_normal", "lr_schedule": "cosine"},
        {"id": "curriculum_mixup_noise", "description": "curriculum timesteps, latent mixup and noise",
         "timestep_mode": "curriculum", "latent_mixup_alpha": 0.4, "latent_noise_sigma": 0.02},
    ])


def vocoder_finetune(data_dir, out, **_):
    """One experiment with nothing of its own: the base alone (lr schedule in the base)."""
    return _file("vocoder_finetune", "One LoRA run beside a tuned vocoder", data_dir, out,
                 _lora_base(lr=3e-4, lr_schedule="constant"),
                 [{"id": "r128_lr_3e4", "description": "the best known settings"}])


def ti_sweep_1(data_dir, out, **_):
    """Textual inversion: inject_mode prefix / suffix, init_text empty or words, n_tokens 4 / 8."""
    base = {"steps": 2, "batch_size": 4, "warmup_steps": 1, "save_every": 1000, "seed": 42, "init_text": "",
            "lr": 2e-4, "n_tokens": 4, "inject_mode": "suffix"}
    return _file("ti_sweep_1", "Textual inversion, first sweep", data_dir, out, base, [
        {"id": "suffix_4", "group": "mode", "description": "suffix, 4 tokens"},
        {"id": "prefix_8_init", "group": "init", "description": "prefix, 8 tokens from words", "n_tokens": 8,
         "inject_mode": "prefix", "init_text": "mechanical impact sound design"},
    ])


def bigvgan_overnight(data_dir, out, *, lora_adapter, discriminator):
    """Vocoder: snake_alpha_only and all_params, GAFilter on and off, lambda_phase 0 / 1 / 2, L2-SP,
    lr and steps per experiment, a LoRA adapter for the training mels, a discriminator file."""
    base = {"train_mode": "snake_alpha_only", "steps": 2, "lr": 1e-4, "batch_size": 2, "segment_seconds": 0.3,
            "lambda_l2sp": 1e-3, "use_gafilter": True, "gafilter_kernel_size": 9, "lambda_phase": 1.0,
            "save_every": 1000, "seed": 42, "lora_adapter": str(lora_adapter)}
    return _file("bigvgan_overnight", "Vocoder tuning, overnight", data_dir, out, base, [
        {"id": "snake_gaf", "description": "the base"},
        {"id": "all_params_no_gaf", "description": "whole network, no GAFilter, no phase loss, stronger L2-SP",
         "train_mode": "all_params", "use_gafilter": False, "lambda_phase": 0.0, "lr": 1e-5,
         "lambda_l2sp": 1e-2, "steps": 3},
        {"id": "disc_phase2", "description": "discriminator feature matching, phase 2",
         "discriminator_path": str(discriminator), "lambda_phase": 2.0, "lr": 5e-5},
    ])


LORA_FILES = {"tier1_thorough": tier1_thorough, "pissa_sweep": pissa_sweep,
              "lora_optimized_dataset": lora_optimized_dataset, "vocoder_finetune": vocoder_finetune}


@pytest.fixture(scope="module")
def features_dir(model, tmp_path_factory):
    from train_data import make_dataset

    return make_dataset(model, tmp_path_factory.mktemp("earlier_sweep_data"), clips=2)


def _write(builder, folder: Path, data_dir: Path, **kw) -> tuple[Path, dict]:
    spec = builder(data_dir, folder / "output_root" / builder.__name__, **kw)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{builder.__name__}.json"
    path.write_text(json.dumps(spec, indent=2))
    return path, spec


def _check_summary(summary_path: str, spec: dict) -> dict:
    summary = json.loads(Path(summary_path).read_text())
    runs = summary["runs"]
    assert list(runs) == [e["id"] for e in spec["experiments"]]
    for exp in spec["experiments"]:
        run = runs[exp["id"]]
        assert run["status"] == "finished", (exp["id"], run.get("error"))
        assert run["description"] == exp["description"] and run.get("group") == exp.get("group")
    assert summary["name"] == spec["name"] and summary["description"] == spec["description"]
    assert Path(summary_path).parent == Path(spec["output_root"])  # its output_root, not ours
    return runs


@pytest.mark.parametrize("name", list(LORA_FILES))
def test_earlier_lora_sweep_files_run_to_the_end(model, features_dir, tmp_path, name):
    path, spec = _write(LORA_FILES[name], tmp_path, features_dir)
    summary_path = run_node("SelvaLoraScheduler", model=model, experiments_file=str(path),
                            output_dir=str(tmp_path / "unused"))[0]
    runs = _check_summary(summary_path, spec)
    sweep_dir = Path(summary_path).parent
    from comfyui_selva.selva.adapters import load_adapter

    for exp in spec["experiments"]:
        settings = {**spec["base"], **exp}
        adapter = load_adapter(sweep_dir / runs[exp["id"]]["adapter"])
        alpha = float(settings.get("alpha", 0.0)) or 2.0 * adapter.meta.rank  # 0 = 2 x rank there
        assert adapter.meta.rank == settings["rank"] and adapter.meta.alpha == alpha
        assert adapter.meta.init == {"standard": "default"}.get(settings.get("init_mode", "pissa"),
                                                                settings.get("init_mode", "pissa"))
        assert adapter.meta.rslora == settings.get("use_rslora", True)  # rsLoRA on: the earlier default
        assert runs[exp["id"]]["steps_done"] == settings["steps"]
        ran = runs[exp["id"]]["settings"]
        for earlier, ours in (("timestep_mode", "timestep_sampling"), ("lr_schedule", "lr_schedule"),
                              ("lora_dropout", "lora_dropout"), ("lora_plus_ratio", "lora_plus_ratio"),
                              ("latent_mixup_alpha", "latent_mixup_alpha"), ("target", "target"),
                              ("latent_noise_sigma", "latent_noise_sigma"), ("lr", "lr")):
            if earlier in settings:
                assert ran[ours] == settings[earlier], (exp["id"], earlier, ran)


def test_earlier_ti_sweep_file_runs_to_the_end(model, features_dir, tmp_path):
    from comfyui_selva.selva.style.textual_inversion import TextualInversion

    path, spec = _write(ti_sweep_1, tmp_path, features_dir)
    summary_path, _ = run_node("SelvaTiScheduler", model=model, experiments_file=str(path),
                               output_path=str(tmp_path / "unused"))
    runs = _check_summary(summary_path, spec)
    for exp in spec["experiments"]:
        settings = {**spec["base"], **exp}
        run = runs[exp["id"]]
        ti = TextualInversion.load(Path(summary_path).parent / run["adapter"])
        assert ti.inject_mode == settings["inject_mode"] and ti.n_tokens == settings["n_tokens"]
        assert run["steps_done"] == settings["steps"]


def test_earlier_vocoder_sweep_file_runs_to_the_end(model, features_dir, tmp_path):
    from test_vocoder_sweep import tiny_discriminator

    from comfyui_selva.selva.vocoder_tuning import checkpoint as ck

    # the LoRA adapter its vocoder runs train on the mels of: one of ours, trained here
    adapter_sweep, _ = _write(vocoder_finetune, tmp_path / "lora", features_dir)
    lora_summary = run_node("SelvaLoraScheduler", model=model, experiments_file=str(adapter_sweep),
                            output_dir=str(tmp_path / "unused"))[0]
    lora_run = json.loads(Path(lora_summary).read_text())["runs"]["r128_lr_3e4"]
    adapter = Path(lora_summary).parent / lora_run["adapter"]
    # its data_dir was the features folder (clip .npz beside its audio), as the adapter's mels need
    path, spec = _write(bigvgan_overnight, tmp_path, features_dir, lora_adapter=adapter,
                        discriminator=tiny_discriminator(tmp_path / "disc"))
    summary_path, _ = run_node("SelvaBigvganScheduler", model=model, experiments_file=str(path),
                               output_dir=str(tmp_path / "unused"))
    runs = _check_summary(summary_path, spec)
    for exp in spec["experiments"]:
        settings = {**spec["base"], **exp}
        run = runs[exp["id"]]
        assert run["steps_done"] == settings["steps"]
        tuned = ck.read_tuned_vocoder(Path(summary_path).parent / run["vocoder"])
        assert tuned.mode == settings["train_mode"]
        assert any(".gafilter." in k for k in tuned.tensors) == settings["use_gafilter"]
