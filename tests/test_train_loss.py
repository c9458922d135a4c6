"""The flow-matching objective against a hand computation on a tiny generator."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.models.generator import SelvaGenerator
from comfyui_selva.selva.train import loss as F

import tiny


@pytest.fixture(scope="module")
def gen():
    g = SelvaGenerator(tiny.tiny_generator(8), latent_seq_len=12, clip_seq_len=8, sync_seq_len=16)
    tiny._randomize(g, 0.05)
    return g.eval()


def clip_item(seed: int, gen):
    g = torch.Generator().manual_seed(seed)
    cfg = gen.cfg
    return F.ClipConditions(clip_f=torch.randn(8, cfg.clip_dim, generator=g),
                            sync_f=torch.randn(16, cfg.sync_dim, generator=g),
                            text_clip=torch.randn(77, cfg.text_dim, generator=g))


def test_draws_follow_the_documented_order():
    noise = F.draw_noise((12, 8), "logit_normal", torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(noise.posterior, torch.randn(12, 8, generator=g))
    assert torch.equal(noise.x0, torch.randn(12, 8, generator=g))
    assert noise.t == torch.sigmoid(torch.randn((), generator=g))
    assert noise.null_video == bool(torch.rand((), generator=g) < 0.1)
    uniform = F.draw_noise((2, 2), "uniform", torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    assert uniform.t == torch.rand((), generator=g)
    with pytest.raises(SelvaError, match="timestep_sampling"):
        F.draw_noise((2, 2), "cosine", torch.Generator())


def test_null_conditions_are_dropped_about_one_time_in_ten():
    draws = [F.draw_noise((1, 1), "uniform", torch.Generator().manual_seed(s)) for s in range(3000)]
    video = sum(d.null_video for d in draws) / len(draws)
    text = sum(d.null_text for d in draws) / len(draws)
    both = sum(d.null_video and d.null_text for d in draws) / len(draws)
    assert 0.08 < video < 0.12 and 0.08 < text < 0.12 and both < 0.03  # independent draws


@pytest.mark.parametrize("null_video,null_text", [(False, False), (True, False), (False, True)])
def test_loss_matches_a_hand_computation(gen, null_video, null_text):
    items = [clip_item(1, gen), clip_item(2, gen)]
    g = torch.Generator().manual_seed(9)
    mean, std = torch.randn(2, 12, 8, generator=g), torch.rand(2, 12, 8, generator=g) + 0.1
    noises = [F.ItemNoise(torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g),
                          torch.tensor(t), null_video, null_text) for t in (0.25, 0.8)]
    with torch.no_grad():
        losses = F.flow_matching_loss(gen, mean, std, items, noises)
        expected = []
        for b in range(2):
            n = noises[b]
            x1 = (mean[b] + std[b] * n.posterior - gen.latent_mean[0]) / gen.latent_std[0]
            xt = (1 - n.t) * n.x0 + n.t * x1
            clip = gen.empty_clip_feat.expand(8, -1) if null_video else items[b].clip_f
            sync = gen.empty_sync_feat.expand(16, -1) if null_video else items[b].sync_f
            text = gen.empty_string_feat if null_text else items[b].text_clip
            v = gen(xt[None], clip[None], sync[None], text[None], n.t.reshape(1))
            expected.append(((v[0] - (x1 - n.x0)) ** 2).mean())
    torch.testing.assert_close(losses, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert losses.shape == (2,)
