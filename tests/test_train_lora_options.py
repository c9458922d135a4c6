"""Issue 23's LoRA training options, each shown to do what it says (tiny models, synthetic data)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from comfyui_selva.selva.train import lora_trainer as LT
from comfyui_selva.selva.train.eval_metrics import reference_metrics
from comfyui_selva.selva.train.loop import COSINE_FLOOR_LR, LoopConfig, lr_factor, load_checkpoint
from comfyui_selva.selva.train.loss import sample_time, timestep_mode_at
from comfyui_selva.selva.train.spectral_surgery import component_sensitivity, reweighted_pair
from comfyui_selva.selva.train.lora_trainer import LoraTrainOptions, mixup, train_lora

from test_train_lora import load
from train_data import make_dataset


@pytest.fixture(scope="module")
def pipe(models_dir):
    return load(models_dir)


@pytest.fixture(scope="module")
def data_dir(pipe, tmp_path_factory):
    return make_dataset(pipe, tmp_path_factory.mktemp("data") / "my_sounds")


def opts(**kw):
    base = dict(steps=3, rank=4, alpha=4.0, lr=1e-3, warmup_steps=0, batch_size=2, grad_accum=1,
                save_every=0, seed=5, eval_samples=False)
    base.update(kw)
    return LoraTrainOptions(**base)


def final_state(run) -> dict:
    return load_checkpoint(run.result.checkpoint)["task"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- one run, reused
@pytest.fixture(scope="module")
def plain(pipe, data_dir, tmp_path_factory):
    return train_lora(pipe, data_dir, tmp_path_factory.mktemp("plain"), opts())


def test_options_at_their_defaults_train_exactly_as_before(pipe, data_dir, tmp_path, plain):
    """dropout 0, LoRA+ 1, constant lr, sigma 1, no mixup/noise/surgery: the same numbers as a
    run given none of them (the draws of today's runs are untouched)."""
    run = train_lora(pipe, data_dir, tmp_path, opts(lora_dropout=0.0, lora_plus_ratio=1.0, lr_schedule="constant",
                                                    logit_normal_sigma=1.0, latent_mixup_alpha=0.0,
                                                    latent_noise_sigma=0.0, spectral_surgery=False))
    assert same(final_state(run), final_state(plain)) and run.result.losses == plain.result.losses


@pytest.mark.parametrize("change", [dict(lora_dropout=0.2), dict(logit_normal_sigma=2.0),
                                    dict(latent_mixup_alpha=0.4), dict(latent_noise_sigma=0.05),
                                    dict(timestep_sampling="uniform")])
def test_each_option_changes_the_training(pipe, data_dir, tmp_path, plain, change):
    run = train_lora(pipe, data_dir, tmp_path, opts(**change))
    assert run.result.losses != plain.result.losses


def test_lora_plus_scales_b_steps_by_exactly_the_ratio_and_leaves_a(pipe, data_dir, tmp_path):
    """One AdamW step from PiSSA's start (both A and B get gradients): B moves `ratio` times as
    far, A exactly as far as in plain LoRA."""
    def step_of(ratio):
        run = train_lora(pipe, data_dir, tmp_path / str(ratio), opts(steps=1, init="pissa", lora_plus_ratio=ratio,
                                                                      max_grad_norm=0.0))
        state = final_state(run)
        return ({k: state[k] - state[k.replace(".down", ".init_down")] for k in state if k.endswith(".down")},
                {k: state[k] - state[k.replace(".up", ".init_up")] for k in state if k.endswith(".up")})

    a1, b1 = step_of(1.0)
    a4, b4 = step_of(4.0)
    assert a1 and b1
    for k in a1:
        assert torch.allclose(a4[k], a1[k], rtol=1e-6, atol=0), k
        assert a1[k].abs().max() > 0
    for k in b1:
        assert torch.allclose(b4[k], 4.0 * b1[k], rtol=1e-4, atol=1e-12), k
        assert b1[k].abs().max() > 0


def test_cosine_schedule_warms_up_then_reaches_its_floor_at_the_last_step():
    cfg = LoopConfig(steps=10, lr=1e-3, warmup_steps=3, lr_schedule="cosine")
    factors = [lr_factor(cfg, k - 1) for k in range(1, 11)]  # optimizer steps 1..10
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(COSINE_FLOOR_LR / cfg.lr, abs=1e-12)
    assert factors[-2] > factors[-1]
    constant = LoopConfig(steps=10, lr=1e-3, warmup_steps=3)
    assert [lr_factor(constant, s) for s in range(10)] == [min(1.0, (s + 1) / 3) for s in range(10)]


def test_the_trainer_uses_the_cosine_schedule(pipe, data_dir, tmp_path):
    seen = []
    train_lora(pipe, data_dir, tmp_path, opts(steps=4, lr_schedule="cosine"), on_step=seen.append)
    # StepInfo.lr is the rate the step used: the last (fourth) step used the floor
    assert seen[3].lr == pytest.approx(COSINE_FLOOR_LR)
    assert seen[0].lr > seen[1].lr > seen[2].lr > seen[3].lr


def test_curriculum_switches_at_the_given_fraction(pipe, data_dir, tmp_path, monkeypatch):
    modes = [timestep_mode_at("curriculum", k, 10, 0.6) for k in range(1, 11)]
    assert modes == ["logit_normal"] * 6 + ["uniform"] * 4
    assert timestep_mode_at("uniform", 1, 10, 0.6) == "uniform"
    seen = {}
    real = LT.draw_noise

    def spy(shape, mode, generator, **kw):
        seen.setdefault(current[0], set()).add(mode)
        return real(shape, mode, generator, **kw)

    current = [0]
    original_loss = LT.LoraTask.loss

    def loss(self, batch):
        current[0] = batch.step
        return original_loss(self, batch)

    monkeypatch.setattr(LT, "draw_noise", spy)
    monkeypatch.setattr(LT.LoraTask, "loss", loss)
    train_lora(pipe, data_dir, tmp_path, opts(steps=5, timestep_sampling="curriculum", curriculum_switch=0.4))
    assert seen == {1: {"logit_normal"}, 2: {"logit_normal"}, 3: {"uniform"}, 4: {"uniform"}, 5: {"uniform"}}


def test_logit_normal_sigma_spreads_the_times():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    u = torch.randn((), generator=g())
    assert torch.equal(sample_time("logit_normal", g()), torch.sigmoid(u))  # sigma 1: as before
    assert torch.equal(sample_time("logit_normal", g(), 2.5), torch.sigmoid(u * 2.5))


def test_mixup_blends_each_latent_with_another_of_the_batch():
    x = torch.randn(4, 6, 3)
    mixed = mixup(x, 0.4, seed=11)
    assert not torch.allclose(mixed, x)
    assert torch.allclose(mixed.sum(0), x.sum(0), atol=1e-5)  # lam*sum + (1-lam)*sum(perm)
    assert torch.equal(mixup(x, 0.4, seed=11), mixed)


def test_dropout_only_acts_while_training_and_never_with_pissa(pipe, data_dir, tmp_path, plain, caplog):
    from comfyui_selva.selva.adapters.lora import LoraLayer

    layer = LoraLayer(torch.randn(2, 5), torch.randn(3, 2), 2.0, trainable=False)
    x = torch.randn(4, 5)
    ref = layer.delta(x)
    layer.dropout = 0.5
    layer.eval()
    assert torch.equal(layer.delta(x), ref)
    layer.train()
    assert not torch.equal(layer.delta(x), ref)
    a = train_lora(pipe, data_dir, tmp_path / "a", opts(init="pissa"))
    b = train_lora(pipe, data_dir, tmp_path / "b", opts(init="pissa", lora_dropout=0.3))
    assert same(final_state(a), final_state(b))
    assert "lora_dropout 0.3 is not used with init pissa" in caplog.text


# --------------------------------------------------------------------------- spectral surgery
def test_component_sensitivity_is_the_exact_derivative_along_each_component():
    torch.manual_seed(0)
    up, down, scale = torch.randn(7, 3), torch.randn(3, 5), 0.5
    G = torch.randn(7, 5)  # dL/d(dW) of the linear loss L = <dW, G>
    grad_up = scale * G @ down.T
    u, s, vh, g = component_sensitivity(up, down, grad_up, scale)
    assert torch.allclose(u @ torch.diag(s) @ vh, scale * up @ down, atol=1e-5)
    direct = torch.stack([u[:, k] @ G @ vh[k] for k in range(3)])
    assert torch.allclose(g, direct, atol=1e-4)


def test_surgery_shrinks_the_harmful_component_and_keeps_the_nuclear_norm():
    torch.manual_seed(1)
    up, down, scale = torch.randn(6, 3), torch.randn(3, 4, 3), 0.25  # a conv pair (kernel 3)
    u, s, vh, _ = component_sensitivity(up, down, torch.zeros_like(up), scale)
    G = torch.outer(u[:, 0], vh[0])  # growing component 0 raises the loss; the others are neutral
    new_up, new_down, w = reweighted_pair(up, down, scale * G @ down.reshape(3, -1).T, scale)
    assert new_up.shape == up.shape and new_down.shape == down.shape
    s_new = torch.linalg.svdvals(scale * new_up @ new_down.reshape(3, -1))
    assert s_new.sum() == pytest.approx(float(s.sum()), rel=1e-5)
    assert w[0] < w[1] and w[1] == pytest.approx(float(w[2]), rel=1e-6)
    assert w[0] < 0.1 and w[1] > 1


def test_spectral_surgery_is_off_unless_asked_and_changes_only_the_final_adapter(pipe, data_dir, tmp_path, plain):
    from comfyui_selva.selva.adapters import load_adapter

    run = train_lora(pipe, data_dir, tmp_path, opts(spectral_surgery=True))
    assert same(final_state(run), final_state(plain))  # the checkpoint holds the trained state
    before, after = load_adapter(plain.result.exported), load_adapter(run.result.exported)
    changed = [n for n, w in after.modules.items() if not torch.allclose(w.dense_delta(), before.modules[n].dense_delta())]
    assert changed
    def nuclear(w):
        d = w.dense_delta()
        return float(torch.linalg.svdvals(d.reshape(d.shape[0], -1)).sum())

    for n, w in after.modules.items():
        assert nuclear(w) == pytest.approx(nuclear(before.modules[n]), rel=1e-3), n


# --------------------------------------------------------------------------- reference metrics
def test_reference_metrics_are_zero_for_the_same_sound_and_grow_with_the_difference():
    rate = 16000
    t = torch.arange(rate) / rate
    tone = (0.5 * torch.sin(2 * math.pi * 440 * t) * (1 + torch.sin(2 * math.pi * 3 * t)))[None]
    same_m = reference_metrics(tone, rate, tone, rate)
    assert same_m["log_spectral_distance_db"] == 0 and same_m["mel_cepstral_distortion"] == 0
    assert same_m["per_band_correlation"] == pytest.approx(1.0, abs=1e-3)
    noise = 0.1 * torch.randn(1, rate, generator=torch.Generator().manual_seed(0))
    other = reference_metrics(noise, rate, tone, rate)
    assert other["log_spectral_distance_db"] > 5 and other["mel_cepstral_distortion"] > 5
    assert other["per_band_correlation"] < 0.5
    # a reference at another rate is resampled first
    up = reference_metrics(tone, rate, torch.repeat_interleave(tone, 2, dim=-1), 2 * rate)
    assert up["log_spectral_distance_db"] < other["log_spectral_distance_db"]


def test_eval_samples_are_measured_against_the_eval_clips_recording(pipe, data_dir, tmp_path):
    run = train_lora(pipe, data_dir, tmp_path, opts(steps=2, eval_samples=True, eval_steps=2))
    metrics = json.loads((run.result.run_dir / "samples" / "metrics.json").read_text())
    assert set(metrics) == {"0", "2"}
    assert set(metrics["2"]) == {"log_spectral_distance_db", "mel_cepstral_distortion", "per_band_correlation"}
    meta = json.loads((run.result.run_dir / "meta.json").read_text())
    assert meta["eval_metrics"] == metrics


def test_eval_clip_with_glob_characters_in_its_name_is_still_measured(pipe, data_dir, tmp_path):
    """The reference recording is the clip's own audio file, whatever its name holds ("[1]" is
    not read as a pattern)."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for src in data_dir.glob("clip_*.*"):  # clip_000 -> "a take [1]", the first clip by name
        shutil.copy(src, data / src.name.replace("clip_000", "a take [1]"))
    run = train_lora(pipe, data, tmp_path / "out", opts(steps=1, eval_samples=True, eval_steps=2))
    assert run.dataset.clips[0].name == "a take [1]"
    metrics = json.loads((run.result.run_dir / "samples" / "metrics.json").read_text())
    assert set(metrics) == {"0", "1"}

def test_the_earlier_vocoder_finetune_sweep_runs_once_its_names_are_mapped(pipe, data_dir, tmp_path):
    """The layout of the earlier pack's experiments/vocoder_finetune.json (a LoRA sweep run beside a
    tuned vocoder), steps cut to 2, data pointed at the test dataset. Every option it sets is one of
    ours; only the renames the earlier-layout reader does (selva/compat, issue 24) are applied here
    by hand: id -> name, top-level data_dir -> base, timestep_mode -> timestep_sampling,
    alpha 0 -> 2 x rank."""
    from comfyui_selva.selva.train.sweep import run_sweep

    earlier = {"name": "vocoder_finetune", "description": "LoRA run with a tuned vocoder.",
               "data_dir": str(data_dir), "output_root": str(tmp_path / "out"),
               "base": {"steps": 2, "rank": 4, "alpha": 0.0, "lr": 3e-4, "batch_size": 2, "warmup_steps": 1,
                        "grad_accum": 1, "save_every": 2, "seed": 42, "target": "attn.qkv",
                        "timestep_mode": "uniform", "logit_normal_sigma": 1.0, "curriculum_switch": 0.6,
                        "lora_dropout": 0.0, "lora_plus_ratio": 1.0, "lr_schedule": "constant"},
               "experiments": [{"id": "r128_lr_3e4_bj_vocoder", "description": "baseline"}]}
    base = dict(earlier["base"], data_dir=earlier["data_dir"], eval_samples=False)
    base["timestep_sampling"] = base.pop("timestep_mode")
    base["alpha"] = base["alpha"] or 2.0 * base["rank"]
    mapped = {"base": base, "experiments": [{"name": e["id"]} for e in earlier["experiments"]]}
    file = tmp_path / "vocoder_finetune.json"
    file.write_text(json.dumps(mapped))
    result = run_sweep(pipe, file, tmp_path / "sweeps")
    run = result.summary["runs"]["r128_lr_3e4_bj_vocoder"]
    assert run["status"] == "finished", run["error"]
    assert run["steps_done"] == 2
