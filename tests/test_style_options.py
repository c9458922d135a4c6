"""Issue 23's style options: DITTO's anchor_weight, steering's per-position mode."""
from __future__ import annotations

import pytest
import torch

from comfy_pack import pack_module
from node_helpers import dog_features
from style_helpers import reference_dir

ditto = pack_module("selva.style.ditto")
sampling = pack_module("selva.sampling")


@pytest.fixture(scope="module")
def features(model, tmp_path_factory):
    return dog_features(model, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def target(model, tmp_path_factory):
    from test_style_ditto import stats_of

    return stats_of(model, reference_dir(tmp_path_factory.mktemp("ditto")))


def test_anchor_weight_keeps_the_noise_near_its_start(model, features, target):
    seq = model.variant.seq_lengths(features.duration)
    gen = model.manager.get("generator")
    start = sampling.initial_noise(1, seq.latent, gen.latent_dim, seed=0, device=model.device,
                                   dtype=model.stage_dtype("generator")).float()
    base = dict(n_opt_steps=4, opt_lr=0.5, n_ode_steps=2, n_grad_steps=1, steps=2, seed=0)
    free, free_losses, _ = ditto.optimise_noise(model, features, target, ditto.DittoConfig(**base))
    held, held_losses, _ = ditto.optimise_noise(model, features, target, ditto.DittoConfig(**base, anchor_weight=1e4))
    same, same_losses, _ = ditto.optimise_noise(model, features, target, ditto.DittoConfig(**base, anchor_weight=0.0))
    assert torch.equal(same, free) and same_losses == free_losses  # 0 = as before, bit for bit
    dist = lambda z: float((z.float() - start).pow(2).mean())  # noqa: E731
    assert dist(held) < 0.5 * dist(free)
    with pytest.raises(pack_module("selva.errors").SelvaError, match="anchor_weight must be 0 or more, got -1"):
        ditto.DittoConfig(anchor_weight=-1.0).validate()
