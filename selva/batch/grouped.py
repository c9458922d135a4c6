"""Several clips of one length through the generator in one pass (``--batch-rows``).

Each clip keeps its own conditions, negative prompt and seed; they are stacked along the batch
dimension, so every step runs each kernel once for the group instead of once per clip. This is
the single-window branch of ``SelvaPipeline.generate`` (selva/pipeline.py: ``sample_latent`` ->
``_sample``, then ``decode``) for many clips: the same conditions (selva/conditioning.py), the same per-clip noise
``initial_noise(1, L, C, seed)``, the same Euler loop. Every op in the generator works per batch
item, so a clip's audio equals ``generate`` on that clip alone (tests/test_batch.py checks it
bit for bit on the CPU). Decoding stays per clip: it is a small share of the work and keeping it
per clip keeps its tiling exactly as in ``generate``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import accel, conditioning
from .. import audio as audio_ops
from ..features import Features
from ..hooks import Hooks, or_default
from ..long_video import WindowOptions
from ..models.generator import Conditions
from ..sampling import euler_sample, initial_noise


def group_key(pipe, features: Features, windows: WindowOptions) -> Optional[tuple]:
    """Clips with equal keys can share a pass; None: this clip needs windows (sampled alone)."""
    plan = pipe.plan(features, None, windows)
    if not plan.single:
        return None
    seq = plan.total
    return (seq.latent, seq.clip, seq.sync, features.has_video, features.clip_features is None)


def generate_group(pipe, features: Sequence[Features], negative_prompts: Sequence[str],
                   seeds: Sequence[int], *, steps: int, cfg_strength: float, windows: WindowOptions,
                   hooks: Optional[Hooks] = None) -> list[torch.Tensor]:
    """Audio (1, 1, T) float32 on the CPU per clip, as ``pipe.generate`` gives for each alone.

    All clips must have the same :func:`group_key` (not None).
    """
    hooks = or_default(hooks)
    plans = [pipe.plan(f, None, windows) for f in features]
    seq = plans[0].total
    with accel.tf32(pipe.device, pipe.options.tf32):
        # the negative prompts' CLIP text, as sample_latent gets it (before the generator loads)
        negatives = [pipe.encoding.clip_text(n) for n in negative_prompts]
        with pipe.use_generator() as gen:
            dtype = pipe.stage_dtype("generator")
            gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
            conds, unconds, noise = [], [], []
            for feats, neg, seed in zip(features, negatives, seeds):
                cond, uncond = conditioning.guided(gen, conditioning.condition_inputs(feats, seq, pipe.device, dtype),
                                                   neg, pipe.device, dtype)
                conds.append(cond)
                unconds.append(uncond)
                noise.append(initial_noise(1, seq.latent, gen.latent_dim, seed=seed, device=pipe.device,
                                           dtype=dtype))
            cond, uncond = Conditions.stack(conds), Conditions.stack(unconds)
            velocity = accel.compiled_velocity(gen) if pipe.options.compile else None
            x1 = euler_sample(lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg_strength, velocity=velocity),
                              torch.cat(noise), steps, on_step=lambda d, n: hooks.step("sampling", d, n))
            latent = gen.unnormalize(x1)
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(pipe.dtype, "fp32")
    waves = []
    for i, plan in enumerate(plans):
        wave = pipe.decode(latent[i:i + 1], hooks, spans=[w.latent for w in plan.windows])
        audio_ops.assert_finite(wave, precision)
        waves.append(wave)
    return waves
