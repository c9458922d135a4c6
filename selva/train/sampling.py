"""Eval samples during training: the Sampler's procedure, run on the trainer's working copy.

The trainer trains its own copy of the generator (with its adapters attached), so eval samples
are drawn from that copy directly instead of the pipeline's shared generator; the steps are the
same as :meth:`SelvaPipeline.generate` (same noise, same guidance, same Euler integrator).
"""
from __future__ import annotations

from typing import Optional

import torch

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
    gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
    sync = features.sync_features[:, :seq.sync].to(device, dtype)
    clip = (gen.empty_clip_sequence(1) if features.clip_features is None
            else features.clip_features[:, :seq.clip].to(device, dtype))
    cond = gen.preprocess_conditions(clip, sync, features.text_clip.to(device, dtype))
    negative = None if negative_text_clip is None else negative_text_clip.to(device, dtype)
    uncond = gen.empty_conditions(1, negative_text_clip_f=negative)
    x0 = initial_noise(1, seq.latent, gen.latent_dim, seed=seed, device=device, dtype=dtype)
    x1 = euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg_strength), x0, steps)
    return gen.unnormalize(x1)
