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
