"""The generator's own training objective: conditional rectified flow, as MMAudio trains it.

Per clip: x1 = a sample of the VAE posterior (mean + std * noise) normalised with the
generator's latent mean/std; x0 = Gaussian noise; t ~ logit-normal (sigmoid of N(0, 1)) or
uniform; x_t = (1 - t) x0 + t x1; the network predicts the velocity x1 - x0 and the loss is the
mean squared error. With probability 0.1 each, the video features are swapped for the learned
empty CLIP/sync sequences and the text for the learned empty-string features, so classifier-free
guidance keeps working after fine-tuning.

Every random number of an item comes from that item's own generator, drawn in a fixed order,
so the loss of a clip at a step does not depend on how the batch is split across processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..conditioning import training_inputs
from ..errors import SelvaError
from ..models.generator import SelvaGenerator

# curriculum: logit_normal until a given fraction of the steps, uniform after (see timestep_mode_at)
TIMESTEP_SAMPLING = ("logit_normal", "uniform", "curriculum")
NULL_CONDITION_PROBABILITY = 0.1


@dataclass
class ItemNoise:
    """All random draws for one clip at one step."""

    posterior: torch.Tensor  # (L, C) standard normal: which sample of the VAE posterior
    x0: torch.Tensor  # (L, C) the flow's starting noise
    t: torch.Tensor  # () flow time in (0, 1)
    null_video: bool
    null_text: bool


def timestep_mode_at(mode: str, step: int, steps: int, curriculum_switch: float) -> str:
    """The distribution optimizer step ``step`` (1-based) of ``steps`` draws its flow times from:
    ``curriculum`` is logit_normal up to step ``int(steps * curriculum_switch)`` and uniform after
    (the middle times first, where the velocity is hardest to learn, then every time evenly)."""
    if mode != "curriculum":
        return mode
    return "logit_normal" if step <= int(steps * curriculum_switch) else "uniform"


def sample_time(mode: str, generator: torch.Generator, sigma: float = 1.0) -> torch.Tensor:
    """One flow time: ``logit_normal`` = sigmoid(sigma * N(0, 1)) (sigma 1 is how the model was
    trained; larger spreads the times toward 0 and 1), ``uniform`` = U(0, 1)."""
    if mode == "logit_normal":  # u * 1.0 is u exactly: sigma 1 draws what it always drew
        return torch.sigmoid(torch.randn((), generator=generator) * sigma)
    if mode == "uniform":
        return torch.rand((), generator=generator)
    raise SelvaError(f"Unknown timestep_sampling {mode!r}; choose one of {', '.join(TIMESTEP_SAMPLING)}.")


def draw_noise(latent_shape: Sequence[int], mode: str, generator: torch.Generator,
               null_probability: float = NULL_CONDITION_PROBABILITY, sigma: float = 1.0) -> ItemNoise:
    """The draws for one clip, always in the same order (posterior, x0, t, video, text).
    ``mode`` is logit_normal or uniform (resolve curriculum with :func:`timestep_mode_at`)."""
    shape = tuple(latent_shape)
    posterior = torch.randn(shape, generator=generator)
    x0 = torch.randn(shape, generator=generator)
    t = sample_time(mode, generator, sigma)
    null_video = bool(torch.rand((), generator=generator) < null_probability)
    null_text = bool(torch.rand((), generator=generator) < null_probability)
    return ItemNoise(posterior, x0, t, null_video, null_text)


@dataclass
class ClipConditions:
    """One clip's raw condition features (before the generator's input projections)."""

    clip_f: Optional[torch.Tensor]  # (Tc, clip_dim) CLIP frame features, None = learned empty
    sync_f: torch.Tensor  # (S, sync_dim)
    text_clip: torch.Tensor  # (77, text_dim)


def flow_matching_loss(gen: SelvaGenerator, latent_mean: torch.Tensor, latent_std: torch.Tensor,
                       conditions: Sequence[ClipConditions], noises: Sequence[ItemNoise],
                       target_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Per-clip losses (B,) for VAE posteriors (B, L, C) of clips that share one duration.

    The generator's sequence lengths must already match the clips (``set_seq_lengths``).
    ``target_transform``: changes the normalised clean latents x1 (B, L, C) before the flow is
    built from them (latent mixup, latent noise); None = as drawn.
    """
    device, dtype = gen.device, gen.dtype
    posterior = torch.stack([n.posterior for n in noises]).to(device)
    x0 = torch.stack([n.x0 for n in noises]).to(device, dtype)
    t = torch.stack([n.t for n in noises]).to(device)
    x1 = gen.normalize((latent_mean.to(device) + latent_std.to(device) * posterior).to(dtype))
    if target_transform is not None:
        x1 = target_transform(x1)
    tb = t.to(dtype)[:, None, None]
    xt = (1 - tb) * x0 + tb * x1
    # stacked inputs with the null conditions dropped in where drawn (the objective's condition dropout)
    clip_f, sync_f, text_clip = training_inputs(gen, [c.clip_f for c in conditions], [c.sync_f for c in conditions],
                                                [c.text_clip for c in conditions], [n.null_video for n in noises],
                                                [n.null_text for n in noises], device, dtype)
    velocity = gen.predict_flow(xt, t.to(dtype), gen.preprocess_conditions(clip_f, sync_f, text_clip))
    target = x1 - x0
    return (velocity.float() - target.float()).pow(2).mean(dim=(1, 2))
