"""Issue 23's textual-inversion options: prefix injection and the token-norm clamp."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva.style.textual_inversion import (TextualInversion, TiTrainOptions, apply_to_features,
                                                          train_textual_inversion, with_tokens)

from test_train_lora import load
from train_data import make_dataset


@pytest.fixture(scope="module")
def pipe(models_dir):
    return load(models_dir)


@pytest.fixture(scope="module")
def data_dir(pipe, tmp_path_factory):
    return make_dataset(pipe, tmp_path_factory.mktemp("data") / "my_sounds", clips=2)


def test_prefix_puts_the_tokens_after_the_start_token_suffix_at_the_end():
    text = torch.randn(2, 77, 8)
    tokens = torch.randn(3, 8)
    suffix = with_tokens(text, tokens)
    prefix = with_tokens(text, tokens, inject_mode="prefix")
    assert torch.equal(suffix[:, -3:], tokens.expand(2, -1, -1)) and torch.equal(suffix[:, :-3], text[:, :-3])
    assert torch.equal(prefix[:, 1:4], tokens.expand(2, -1, -1))
    assert torch.equal(prefix[:, :1], text[:, :1]) and torch.equal(prefix[:, 4:], text[:, 4:])
    half = with_tokens(text, tokens, 0.5, inject_mode="prefix")
    assert torch.allclose(half[:, 1:4], 0.5 * (text[:, 1:4] + tokens))


def test_prefix_tokens_are_trained_saved_and_applied_in_place(pipe, data_dir, tmp_path):
    opts = TiTrainOptions(n_tokens=2, steps=2, save_every=2, eval_samples=False, inject_mode="prefix")
    run = train_textual_inversion(pipe, data_dir, tmp_path, opts)
    loaded = TextualInversion.load(run.embedding.path)
    assert loaded.inject_mode == "prefix"
    from comfyui_selva.selva.train.dataset import load_dataset

    features = load_dataset(pipe, data_dir).clips[0].features
    applied = apply_to_features(features, loaded, 1.0)
    assert torch.equal(applied.text_clip[0, 1:3], loaded.embeddings)
    assert torch.equal(applied.text_clip[0, 3:], features.text_clip[0, 3:].float())


def test_token_norm_clamp_keeps_tokens_near_the_prompts_norm(pipe, data_dir, tmp_path):
    from comfyui_selva.selva.train.dataset import load_dataset

    clips = load_dataset(pipe, data_dir).clips
    ref = float(torch.cat([c.conditions.text_clip[1:21].norm(dim=-1) for c in clips]).mean())
    free = train_textual_inversion(pipe, data_dir, tmp_path / "a",
                                   TiTrainOptions(n_tokens=2, steps=4, lr=0.5, save_every=4, eval_samples=False))
    clamped = train_textual_inversion(pipe, data_dir, tmp_path / "b",
                                      TiTrainOptions(n_tokens=2, steps=4, lr=0.5, save_every=4, eval_samples=False,
                                                     token_norm_clamp=0.5))
    assert float(free.embedding.embeddings.norm(dim=-1).max()) > 0.5 * ref
    assert float(clamped.embedding.embeddings.norm(dim=-1).max()) <= 0.5 * ref * (1 + 1e-5)
