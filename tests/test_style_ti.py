"""Textual inversion: training with the shared loop, save/load, strength 0 = the Sampler, resume."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import run_node, sampler_waveform as sample
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
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(path="t5"))
    with pytest.raises(SelvaError, match="backbone_cache_mb"):
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(path="clip_t5", backbone_cache_mb=-1))
    with pytest.raises(SelvaError, match="n_tokens"):
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(n_tokens=0))


# ------------------------------------------------------------------------------------ nodes
@pytest.fixture(scope="module")
def features(model, data_dir):
    return Features.load(sorted(data_dir.glob("*.npz"))[0])


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


@pytest.mark.parametrize("run", ["trained", "trained_t5"])
def test_ditto_applies_textual_inversion_like_the_sampler(model, features, run, request, tmp_path):
    from style_helpers import reference_dir

    trained = request.getfixturevalue(run)  # clip, then clip_t5 (sync features re-encoded)
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
            "--offline", "--steps", "2", "--n_tokens", "2", "--save_every", "2", "--no_eval_samples",
            "--path", "clip_t5", "--backbone_cache_mb", "1"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "textual_inversion_001" / "embeddings_final.safetensors"
    loaded = ti_mod.TextualInversion.load(path)
    assert loaded.n_tokens == 2 and loaded.path_kind == "clip_t5" and loaded.embeddings_t5.shape == (2, 32)


# ------------------------------------------------------------------------- path clip_t5
T5_DIM = 32  # the tiny T5 width (tests/tiny.py)


@pytest.fixture(scope="module")
def trained_t5(model, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ti_t5_out")
    with torch.inference_mode():  # as inside ComfyUI
        return ti_mod.train_textual_inversion(model, data_dir, out, opts(init_text="a metal clang", path="clip_t5"))


def test_clip_t5_training_inside_inference_mode_learns_both_token_sets(model, trained_t5):
    ti = trained_t5.embedding
    assert ti.path_kind == "clip_t5"
    init = ti_mod.initial_tokens(model, "a metal clang", 3)
    init_t5 = ti_mod.initial_t5_tokens(model, "a metal clang", 3)
    assert ti.embeddings.shape == init.shape and not torch.allclose(ti.embeddings, init)
    assert ti.embeddings_t5.shape == init_t5.shape == (3, T5_DIM)
    assert not torch.allclose(ti.embeddings_t5, init_t5)
    assert len(trained_t5.result.losses) == 4 and all(torch.isfinite(torch.tensor(trained_t5.result.losses)))


def test_initial_t5_tokens_repeat_the_end_token_for_short_texts(model):
    with torch.no_grad(), model.manager.use("t5") as t5:
        feats, mask = t5.encode(["bang"])
    real = feats[0][mask[0]].float().cpu()
    tokens = ti_mod.initial_t5_tokens(model, "bang", real.shape[0] + 2)
    assert torch.equal(tokens[:real.shape[0]], real)
    assert torch.equal(tokens[-1], real[-1]) and torch.equal(tokens[-2], real[-1])


def test_clip_t5_training_changes_no_weight(model, data_dir, tmp_path):
    nets = {name: model.manager.get(name) for name in ("generator", "text_synch")}
    before = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in nets.items()}
    with torch.inference_mode():
        ti_mod.train_textual_inversion(model, data_dir, tmp_path, opts(steps=1, save_every=1, path="clip_t5"))
    for name, net in nets.items():
        after = net.state_dict()
        assert after.keys() == before[name].keys()
        assert all(torch.equal(before[name][k], v) for k, v in after.items()), name
        assert all(p.grad is None for p in net.parameters()), name


def test_clip_t5_round_trip_keeps_both_tensors_and_metadata(trained_t5):
    from safetensors import safe_open

    path = trained_t5.result.run_dir / "embeddings_final.safetensors"
    loaded = ti_mod.TextualInversion.load(path)
    assert torch.equal(loaded.embeddings, trained_t5.embedding.embeddings)
    assert torch.equal(loaded.embeddings_t5, trained_t5.embedding.embeddings_t5)
    assert loaded.path_kind == "clip_t5" and loaded.variant == "tiny_16k" and loaded.n_tokens == 3
    assert loaded.info["options"]["path"] == "clip_t5" and loaded.info["init_text"] == "a metal clang"
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"embeddings", "embeddings_t5"}
        assert f.metadata()["path"] == '"clip_t5"' and f.metadata()["t5_dim"] == str(T5_DIM)


def test_clip_only_files_still_load(trained, tmp_path):
    artifacts = pack_module("selva.artifacts")
    loaded = ti_mod.TextualInversion.load(trained.result.run_dir / "embeddings_final.safetensors")
    assert loaded.path_kind == "clip" and loaded.embeddings_t5 is None
    # a file written before paths were recorded at all reads as clip
    old = artifacts.save_safetensors(tmp_path / "old.safetensors", {"embeddings": torch.ones(2, 32)},
                                     {"format": ti_mod.FORMAT, "version": 1, "variant": "tiny_16k"})
    legacy = ti_mod.TextualInversion.load(old)
    assert legacy.path_kind == "clip" and legacy.embeddings_t5 is None and legacy.n_tokens == 2


def test_clip_t5_file_checks(model, features, tmp_path):
    artifacts = pack_module("selva.artifacts")
    wrong = ti_mod.TextualInversion(torch.zeros(3, 32), "tiny_16k", "clip_t5", embeddings_t5=torch.zeros(3, 5))
    loaded = ti_mod.TextualInversion.load(wrong.save(tmp_path / "wrong.safetensors"))
    with pytest.raises(SelvaError, match=r"5 wide.*width 32"):
        ti_mod.apply_to_features(features, loaded, 1.0, pipe=model)
    missing = artifacts.save_safetensors(tmp_path / "missing.safetensors", {"embeddings": torch.ones(3, 32)},
                                         {"format": ti_mod.FORMAT, "version": 1, "variant": "tiny_16k",
                                          "path": "clip_t5"})
    with pytest.raises(SelvaError, match="embeddings_t5"):
        ti_mod.TextualInversion.load(missing)
    with pytest.raises(SelvaError, match="T5 tokens"):
        ti_mod.TextualInversion(torch.zeros(3, 32), "tiny_16k", "clip_t5")
    ok = ti_mod.TextualInversion(torch.zeros(3, 32), "tiny_16k", "clip_t5", embeddings_t5=torch.zeros(3, T5_DIM))
    with pytest.raises(SelvaError, match="needs the model"):
        ti_mod.apply_to_features(features, ok, 1.0)


def test_clip_t5_resume_is_exact_and_the_token_cache_changes_nothing(model, data_dir, tmp_path):
    t5 = dict(path="clip_t5")
    with torch.inference_mode():
        full = ti_mod.train_textual_inversion(model, data_dir, tmp_path / "a", opts(**t5))
        # no backbone tokens kept at all: every step recomputes them, with the same result
        ti_mod.train_textual_inversion(model, data_dir, tmp_path / "b", opts(steps=2, backbone_cache_mb=0, **t5))
        resumed = ti_mod.train_textual_inversion(model, data_dir, tmp_path / "b", opts(**t5), resume="latest")
        with pytest.raises(SelvaError):  # a clip checkpoint does not resume as clip_t5
            ti_mod.train_textual_inversion(model, data_dir, tmp_path / "b", opts(), resume="latest")
    assert torch.equal(resumed.embedding.embeddings, full.embedding.embeddings)
    assert torch.equal(resumed.embedding.embeddings_t5, full.embedding.embeddings_t5)


def test_clip_t5_apply_appends_t5_tokens_and_reencodes_sync(model, features, trained_t5, monkeypatch):
    ti = trained_t5.embedding
    assert ti_mod.apply_to_features(features, ti, 0.0, pipe=model) is features
    calls = []
    real_encode = model.encoding.encode_sync
    monkeypatch.setattr(model.encoding, "encode_sync", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    full = ti_mod.apply_to_features(features, ti, 1.0, pipe=model)
    length = features.text_t5.shape[1]
    assert full.text_t5.shape == (1, length + 3, T5_DIM) and full.text_t5_mask.shape == (1, length + 3)
    assert torch.equal(full.text_t5[:, :length], features.text_t5) and torch.equal(full.text_t5[0, length:], ti.embeddings_t5)
    assert bool(full.text_t5_mask[0, length:].all())
    assert full.sync_features.shape == features.sync_features.shape
    assert not torch.allclose(full.sync_features, features.sync_features)
    assert torch.equal(full.text_clip[0, -3:], ti.embeddings)
    again = ti_mod.apply_to_features(features, ti, 1.0, pipe=model)
    assert torch.equal(again.sync_features, full.sync_features) and len(calls) == 1  # remembered
    half = ti_mod.apply_to_features(features, ti, 0.5, pipe=model)
    eos = features.text_t5[0, length - 1]
    torch.testing.assert_close(half.text_t5[0, length:], eos + 0.5 * (ti.embeddings_t5 - eos))
    assert len(calls) == 2 and not torch.allclose(half.sync_features, full.sync_features)


def test_clip_t5_training_sees_the_sync_features_sampling_uses(model, data_dir, trained_t5):
    """The task's differentiable sync features (cached backbone tokens) equal the pipeline's."""
    dataset = pack_module("selva.train.dataset").load_dataset(model, data_dir)
    ti = trained_t5.embedding
    o = opts(path="clip_t5")
    with model.use_generator() as gen, model.manager.use("text_synch") as net:
        task = ti_mod.TiTask(model, gen, dataset, o, ti.embeddings, init_t5=ti.embeddings_t5, text_synch=net)
        with torch.no_grad():
            ours = task.sync_features(1)
            assert len(task.backbone) == 1 and torch.equal(task.sync_features(1), ours)
    item = dataset.clips[1]
    theirs = ti_mod.apply_to_features(item.features, ti, 1.0, pipe=model).sync_features[0, :item.seq.sync]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_t5_tokens_follow_each_rows_last_real_token():
    text = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    tokens = torch.randn(2, 3)
    t5, m = ti_mod.with_t5_tokens(text, mask, tokens, 0.25)
    assert t5.shape == (2, 6, 3) and m.dtype == torch.bool and bool(m[:, 4:].all())
    assert torch.equal(m[:, :4], mask) and torch.equal(t5[:, :4], text)
    torch.testing.assert_close(t5[0, 4:], text[0, 3] + 0.25 * (tokens - text[0, 3]))
    torch.testing.assert_close(t5[1, 4:], text[1, 1] + 0.25 * (tokens - text[1, 1]))
    assert torch.equal(ti_mod.with_t5_tokens(text, mask, tokens)[0][:, 4:], tokens.expand(2, -1, -1))


def test_token_cache_keeps_a_byte_budget():
    LruCache = pack_module("selva.memo").LruCache
    cache = LruCache(max_bytes=2 * 400)
    a, b, c = (torch.full((10, 10), float(i)) for i in range(3))  # 400 bytes each
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", c)
    assert cache.get("b") is None and torch.equal(cache.get("a"), a) and torch.equal(cache.get("c"), c)
    assert cache.nbytes == 800 and len(cache) == 2
    nothing = LruCache(max_bytes=0)
    nothing.put("a", a)
    assert nothing.get("a") is None and len(nothing) == 0
    last = LruCache(max_items=1, max_bytes=500)  # the pipeline's "last clip" backbone cache
    last.put("a", a)
    last.put("b", b)
    assert last.get("a") is None and torch.equal(last.get("b"), b)
    last.put("big", torch.zeros(200))  # 800 bytes: not kept, and it still displaces "b"
    assert len(last) == 0 and last.nbytes == 0


def test_sampler_with_clip_t5_differs_and_strength_zero_is_the_sampler(model, features, trained_t5):
    (ti,) = run_node("SelvaTextualInversionLoader",
                     path=str(trained_t5.result.run_dir / "embeddings_final.safetensors"))
    assert ti.path_kind == "clip_t5"
    for kw in ({}, {"prompt": "rain"}):
        plain = sample(model, features, **kw)
        assert torch.equal(plain, sample(model, features, textual_inversion=ti, ti_strength=0.0, **kw))
        assert not torch.allclose(plain, sample(model, features, textual_inversion=ti, ti_strength=1.0, **kw))
    # the T5 tokens matter on their own: the same CLIP tokens without them sound different
    clip_only = ti_mod.TextualInversion(ti.embeddings, ti.variant)
    assert not torch.allclose(sample(model, features, textual_inversion=clip_only, ti_strength=1.0),
                              sample(model, features, textual_inversion=ti, ti_strength=1.0))


def test_trainer_node_and_sweep_take_clip_t5(model, data_dir, tmp_path):
    import json

    choices = pack_module("nodes.textual_inversion").SelvaTextualInversionTrainer.INPUT_TYPES()
    assert choices["optional"]["path"][0] == ["clip", "clip_t5"]
    path, _ = run_node("SelvaTextualInversionTrainer", model=model, data_dir=str(data_dir),
                       output_path=str(tmp_path / "node"), n_tokens=2, init_text="", steps=2, lr=1e-2,
                       batch_size=1, save_every=2, seed=0, path="clip_t5")
    assert ti_mod.TextualInversion.load(path).embeddings_t5.shape == (2, T5_DIM)
    spec = {"base": {"data_dir": str(data_dir), "steps": 2, "save_every": 2, "lr": 1e-2, "eval_samples": False},
            "experiments": [{"name": "t5", "n_tokens": 2, "path": "clip_t5"}]}
    exp = tmp_path / "ti_t5_sweep.json"
    exp.write_text(json.dumps(spec))
    result = ti_mod.run_ti_sweep(model, exp, tmp_path / "sweep")
    assert result.summary["runs"]["t5"]["status"] == "finished"
    made = ti_mod.TextualInversion.load(next((tmp_path / "sweep" / "ti_t5_sweep").glob("t5_*/embeddings_final.safetensors")))
    assert made.path_kind == "clip_t5"


def test_width_mismatch_of_an_unnamed_models_tokens_says_so():
    """An earlier-pack file records no variant: the message must not read 'trained on  ('."""
    ti = ti_mod.TextualInversion(torch.zeros(4, 768), "")
    with pytest.raises(SelvaError) as e:
        ti_mod.check_compatible(ti, "tiny_16k", torch.Size([1, 77, 32]))
    assert str(e.value) == ("This textual inversion was trained on a model the file does not name (token "
                            "width 768), but the model is tiny_16k (width 32). Train one for this model.")
