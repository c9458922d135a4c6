"""Eval samples during training: the Sampler's procedure, run on the trainer's working copy.

The trainer trains its own copy of the generator (with its adapters attached), so eval samples
are drawn from that copy directly instead of the pipeline's shared generator; the steps are the
same as :meth:`SelvaPipeline.generate` (same noise, same guidance, same Euler integrator).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import conditioning
from ..features import Features
from ..models.generator import SelvaGenerator
from ..sampling import euler_sample, initial_noise


def sample_latent_with(gen: SelvaGenerator, features: Features, negative_text_clip: Optional[torch.Tensor], *,
                       steps: int, cfg_strength: float, seed: int, seq) -> torch.Tensor:
    """Un-normalised latent (1, L, C) for ``features`` from ``gen`` as it is now.

    ``negative_text_clip`` None = the generator's learned empty-prompt features (what training
    drops in for "no text"), so no text encoder has to be loaded for eval samples.
    """
    device, dtype = gen.device, gen.dtype
    cond, uncond = conditioning.clip_conditions(gen, features, seq, negative_text_clip, device, dtype)
    x0 = initial_noise(1, seq.latent, gen.latent_dim, seed=seed, device=device, dtype=dtype)
    x1 = euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg_strength), x0, steps)
    return gen.unnormalize(x1)
