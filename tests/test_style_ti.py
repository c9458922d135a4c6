"""Textual inversion: training with the shared loop, save/load, strength 0 = the Sampler, resume."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import run_node
from train_data import make_dataset

SelvaError = pack_module("selva.errors").SelvaError
ti_mod = pack_module("selva.style.textual_inversion")
Features = pack_module("selva.features").Features


@pytest.fixture(scope="module")
def data_dir(model, tmp_path_factory):
    with torch.inference_mode():
        return make_dataset(model, tmp_path_factory.mktemp("ti_data") / "my_sounds", clips=2)


def opts(**kw):
    base = dict(n_tokens=3, steps=4, lr=5e-2, batch_size=2, save_every=2, seed=1, eval_samples=False)
    base.update(kw)
    return ti_mod.TiTrainOptions(**base)


@pytest.fixture(scope="module")
def trained(model, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti_out")
    with torch.inference_mode():  # as inside ComfyUI
        run = ti_mod.train_textual_inversion(model, data_dir, out, opts(init_text="a metal clang"))
    return run


def test_training_inside_inference_mode_learns_tokens(model, trained):
    run = trained
    init = ti_mod.initial_tokens(model, "a metal clang", 3)
    emb = run.embedding.embeddings
    assert emb.shape == init.shape and not torch.allclose(emb, init)
    assert len(run.result.losses) == 4 and all(torch.isfinite(torch.tensor(run.result.losses)))
    files = sorted(p.name for p in run.result.run_dir.glob("embeddings_*.safetensors"))
    assert files == ["embeddings_final.safetensors", "embeddings_step_000002.safetensors"]


def test_frozen_generator_is_unchanged(model, data_dir, tmp_path):
    gen = model.manager.get("generator")
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    with torch.inference_mode():
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(steps=1, save_every=1))
    assert all(torch.equal(before[k], v) for k, v in gen.state_dict().items())


def test_round_trip_keeps_tokens_and_metadata(trained, tmp_path):
    ti = trained.embedding
    loaded = ti_mod.TextualInversion.load(trained.result.run_dir / "embeddings_final.safetensors")
    assert torch.equal(loaded.embeddings, ti.embeddings)
    assert loaded.variant == "tiny_16k" and loaded.path_kind == "clip"
    assert loaded.info["init_text"] == "a metal clang" and loaded.info["steps"] == 4
    assert loaded.info["options"]["n_tokens"] == 3


def test_resume_is_exact(model, data_dir, tmp_path):
    with torch.inference_mode():
        full = ti_mod.train_textual_inversion(model, data_dir, tmp_path / "a", opts())
        ti_mod.train_textual_inversion(model, data_dir, tmp_path / "b", opts(steps=2))
        resumed = ti_mod.train_textual_inversion(model, data_dir, tmp_path / "b", opts(), resume="latest")
    assert torch.equal(resumed.embedding.embeddings, full.embedding.embeddings)


def test_apply_blends_only_the_last_positions(trained):
    ti = trained.embedding
    text = torch.randn(1, 77, ti.embeddings.shape[1])
    feats = Features(variant="tiny_16k", prompt="x", duration=1.0, fps=25.0, text_t5=torch.zeros(1, 2, 4),
                     text_t5_mask=torch.ones(1, 2), text_clip=text, sync_features=torch.zeros(1, 8, 4),
                     sync_frames_u8=torch.zeros(1, 2, 2, 3, dtype=torch.uint8))
    assert ti_mod.apply_to_features(feats, ti, 0.0) is feats
    full = ti_mod.apply_to_features(feats, ti, 1.0).text_clip
    half = ti_mod.apply_to_features(feats, ti, 0.5).text_clip
    assert torch.equal(full[:, :-3], text[:, :-3]) and torch.equal(full[0, -3:], ti.embeddings)
    torch.testing.assert_close(half[0, -3:], 0.5 * (text[0, -3:] + ti.embeddings))
    wrong = ti_mod.TextualInversion(torch.zeros(3, 5), "tiny_16k")
    with pytest.raises(SelvaError, match="width"):
        ti_mod.apply_to_features(feats, wrong, 1.0)


def test_bad_options_are_refused(model, data_dir, tmp_path):
    with pytest.raises(SelvaError, match="path"):
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(path="clip_t5"))
    with pytest.raises(SelvaError, match="n_tokens"):
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(n_tokens=0))


# ------------------------------------------------------------------------------------ nodes
@pytest.fixture(scope="module")
def features(model, data_dir):
    return Features.load(sorted(data_dir.glob("*.npz"))[0])


def sample(model, features, **kw):
    args = dict(model=model, features=features, prompt="", negative_prompt="", duration=0.0, steps=2,
                cfg_strength=4.5, seed=0, normalize=False, batch_size=1)
    args.update(kw)
    (audio,) = run_node("SelvaSampler", **args)
    return audio["waveform"]


def test_trainer_node_writes_tokens_and_a_curve(model, data_dir, tmp_path):
    path, curve = run_node("SelvaTextualInversionTrainer", model=model, data_dir=str(data_dir),
                           output_path=str(tmp_path), n_tokens=2, init_text="", steps=2, lr=1e-2,
                           batch_size=1, save_every=2, seed=0)
    assert path.endswith("embeddings_final.safetensors") and curve.dim() == 4 and curve.shape[-1] == 3
    (ti,) = run_node("SelvaTextualInversionLoader", path=path)
    assert ti.n_tokens == 2 and ti.info["init_text"]  # the dataset's first prompt


def test_strength_zero_is_the_sampler_and_above_zero_differs(model, features, trained):
    (ti,) = run_node("SelvaTextualInversionLoader",
                     path=str(trained.result.run_dir / "embeddings_final.safetensors"))
    for kw in ({}, {"prompt": "rain"}):
        plain = sample(model, features, **kw)
        assert torch.equal(plain, sample(model, features, textual_inversion=ti, ti_strength=0.0, **kw))
        with_ti = sample(model, features, textual_inversion=ti, ti_strength=1.0, **kw)
        assert not torch.allclose(plain, with_ti)
    # a prompt given to the Sampler is encoded first, then the tokens go in (not lost to it)
    a = sample(model, features, textual_inversion=ti, ti_strength=1.0, prompt="rain")
    b = sample(model, features, textual_inversion=ti, ti_strength=1.0)
    assert not torch.allclose(a, b)


def test_ditto_takes_textual_inversion_too(model, features, trained, tmp_path):
    from style_helpers import reference_dir

    (ti,) = run_node("SelvaTextualInversionLoader",
                     path=str(trained.result.run_dir / "embeddings_final.safetensors"))
    with_ti = sample(model, features, textual_inversion=ti, ti_strength=0.7)
    (audio,) = run_node("SelvaDittoOptimizer", model=model, features=features, prompt="", negative_prompt="",
                        reference_dir=str(reference_dir(tmp_path)), n_opt_steps=0, opt_lr=0.1,
                        n_ode_steps=2, n_grad_steps=1, style_weight=1.0, steps=2, cfg_strength=4.5,
                        seed=0, normalize=False, textual_inversion=ti, ti_strength=0.7)
    assert torch.equal(audio["waveform"], with_ti)


def test_loader_refuses_other_files(tmp_path, trained):
    steering = pack_module("selva.style.steering")
    other = steering.SteeringVectors(torch.ones(2, 4), torch.ones(2), torch.ones(2), "tiny_16k", ["a", "b"])
    other.save(tmp_path / "steer.safetensors")
    with pytest.raises(SelvaError, match="not a SelVA textual-inversion file"):
        run_node("SelvaTextualInversionLoader", path=str(tmp_path / "steer.safetensors"))
    with pytest.raises(SelvaError, match="does not exist"):
        run_node("SelvaTextualInversionLoader", path=str(tmp_path / "none.safetensors"))


def test_scheduler_runs_each_experiment_and_compares_them(model, data_dir, tmp_path):
    import json

    spec = {"base": {"data_dir": str(data_dir), "steps": 2, "save_every": 2, "lr": 1e-2, "eval_samples": False},
            "experiments": [{"name": "t2", "n_tokens": 2}, {"name": "t3", "n_tokens": 3, "init_text": "bang"}]}
    exp = tmp_path / "ti_sweep.json"
    exp.write_text(json.dumps(spec))
    summary_path, curves = run_node("SelvaTiScheduler", model=model, experiments_file=str(exp),
                                    output_path=str(tmp_path / "out"))
    summary = json.loads(open(summary_path).read())
    assert {k: v["status"] for k, v in summary["runs"].items()} == {"t2": "finished", "t3": "finished"}
    assert curves.dim() == 4
    t3 = ti_mod.TextualInversion.load(next((tmp_path / "out" / "ti_sweep").glob("t3_*/embeddings_final.safetensors")))
    assert t3.n_tokens == 3 and t3.info["init_text"] == "bang"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"experiments": [{"name": "x", "data_dir": "d", "rank": 4}]}))
    with pytest.raises(SelvaError, match="rank"):
        run_node("SelvaTiScheduler", model=model, experiments_file=str(bad), output_path=str(tmp_path))


def test_command_line_trains_tokens(models_dir, data_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    cli = str(Path(__file__).resolve().parent / "tiny_cli.py")
    args = [sys.executable, cli, "train-ti", "--data_dir", str(data_dir), "--output_dir", str(tmp_path),
            "--variant", "tiny_16k", "--models-dir", str(models_dir), "--precision", "fp32", "--device", "cpu",
            "--offline", "--steps", "2", "--n_tokens", "2", "--save_every", "2", "--no_eval_samples"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "textual_inversion_001" / "embeddings_final.safetensors"
    assert ti_mod.TextualInversion.load(path).n_tokens == 2
