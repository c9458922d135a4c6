"""DITTO (arXiv 2401.12179): optimise only the initial noise so the result sounds like a reference set.

Every weight stays frozen. One optimisation step:

1. integrate the CFG flow from the current x0 with ``n_ode_steps`` Euler steps. The first
   ``n_ode_steps - n_grad_steps`` steps run without a graph and pass the gradient straight
   through (their velocity is treated as a constant, so d x_k / d x0 = I); the last
   ``n_grad_steps`` are differentiated, each under gradient checkpointing so that memory holds
   one step's activations whatever the number of steps;
2. decode the latent with the VAE to the model's log-mel (the vocoder runs only for the output);
3. style loss = squared error of the mean spectrum + ``style_weight`` * squared error of the
   band covariance (Gram matrix of the mean-removed mel bands), against the reference set;
4. an Adam step on x0, then x0 is projected back onto the sphere of its initial norm. A standard
   Gaussian sample of this size lies on that shell almost surely, so x0 stays a plausible noise
   draw instead of drifting to unusual norms that the generator never saw.

The output is a normal Sampler pass (``steps``, ``cfg_strength``) from the x0 with the lowest
loss. With ``n_opt_steps = 0`` nothing is optimised and the Sampler's own noise is used, so the
audio equals the Sampler's bit for bit. Optimisation runs in float32 (x0, Adam state, the loss);
the generator computes in the model's precision.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import SelvaError
from ..features import Features
from ..grad import make_differentiable, make_patches_differentiable
from ..hooks import Hooks, NO_HOOKS
from ..patches import GeneratorPatch
from ..sampling import initial_noise, time_grid
from .. import conditioning
from .reference import MelStats, differentiable_stats

if TYPE_CHECKING:
    from ..pipeline import SelvaPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DittoConfig:
    n_opt_steps: int = 50
    opt_lr: float = 0.1
    n_ode_steps: int = 10  # Euler steps per optimisation step (fewer than the final pass: speed)
    n_grad_steps: int = 5  # of those, the last ones that are differentiated
    style_weight: float = 1.0  # weight of the covariance term relative to the mean spectrum
    steps: int = 25  # the final Sampler pass
    cfg_strength: float = 4.5
    seed: int = 0
    # pull of the noise toward where it started: + anchor_weight * mean((x0 - x0_start)^2) in the
    # objective; keeps the optimised noise a typical draw (the earlier pack's anchor_weight)
    anchor_weight: float = 0.0

    def validate(self) -> None:
        if self.anchor_weight < 0 or not math.isfinite(self.anchor_weight):
            raise SelvaError(f"anchor_weight must be 0 or more, got {self.anchor_weight}.")
        if self.n_opt_steps < 0:
            raise SelvaError(f"n_opt_steps must be 0 or more, got {self.n_opt_steps}.")
        if self.n_ode_steps < 1:
            raise SelvaError(f"n_ode_steps must be at least 1, got {self.n_ode_steps}.")
        if not 1 <= self.n_grad_steps <= self.n_ode_steps:
            raise SelvaError(f"n_grad_steps ({self.n_grad_steps}) must lie between 1 and n_ode_steps "
                             f"({self.n_ode_steps}): only steps that are integrated can be "
                             f"differentiated. Lower n_grad_steps or raise n_ode_steps.")
        if not self.opt_lr > 0 or not math.isfinite(self.opt_lr):
            raise SelvaError(f"opt_lr must be a positive number, got {self.opt_lr}.")
        if self.style_weight < 0:
            raise SelvaError(f"style_weight must be 0 or more, got {self.style_weight}.")
        if self.steps < 1:
            raise SelvaError(f"steps must be at least 1, got {self.steps}.")


@dataclass
class DittoResult:
    waveform: torch.Tensor  # (1, 1, samples) float32 CPU
    losses: list[float] = field(default_factory=list)  # style loss before each Adam step
    best_loss: Optional[float] = None


def style_loss(mel: torch.Tensor, target: MelStats, style_weight: float) -> torch.Tensor:
    """Mean-spectrum error + ``style_weight`` * band-covariance error, per item then averaged."""
    mean, gram = differentiable_stats(mel.float())
    mean_err = (mean - target.mean.to(mel.device)).pow(2).mean(dim=-1)
    gram_err = (gram - target.gram.to(mel.device)).pow(2).mean(dim=(-2, -1))
    return (mean_err + style_weight * gram_err).mean()


def ditto_generate(pipe: "SelvaPipeline", features: Features, target: MelStats, config: DittoConfig, *,
                   prompt: Optional[str] = None, negative_prompt: str = "",
                   extra_patches: Sequence[GeneratorPatch] = (),
                   hooks: Optional[Hooks] = None) -> DittoResult:
    """Optimise x0 toward ``target`` and sample from it; interrupt raises before any output."""
    hooks = hooks or NO_HOOKS
    config.validate()
    features = pipe.encoding.features_for_prompt(features, prompt, hooks)
    x0, losses, best = None, [], None  # n_opt_steps 0: the Sampler's own noise for the seed
    if config.n_opt_steps:
        x0, losses, best = optimise_noise(pipe, features, target, config, negative_prompt=negative_prompt,
                                          extra_patches=extra_patches, hooks=hooks)
    wave = pipe.generate(features, negative_prompt=negative_prompt, steps=config.steps,
                         cfg_strength=config.cfg_strength, seed=config.seed, hooks=hooks,
                         extra_patches=extra_patches, noise=x0)
    return DittoResult(wave, losses, best)


def optimise_noise(pipe: "SelvaPipeline", features: Features, target: MelStats, config: DittoConfig, *,
                   negative_prompt: str = "", extra_patches: Sequence[GeneratorPatch] = (),
                   hooks: Hooks = NO_HOOKS) -> tuple[torch.Tensor, list[float], float]:
    """The optimised x0 (1, L, C) in the generator's dtype, the loss history and the best loss."""
    seq = pipe.variant.seq_lengths(features.duration)
    neg_clip = pipe.encoding.encode_clip_text([negative_prompt])
    gen_dtype = pipe.stage_dtype("generator")
    vae_dtype = pipe.stage_dtype("vae")
    losses: list[float] = []
    # Nodes run inside inference mode; the graph through the frozen networks needs it off.
    with torch.inference_mode(False), torch.enable_grad():
        with pipe.use_generator(extra_patches) as gen, pipe.manager.use("vae") as vae:
            make_differentiable(vae)
            gen.set_seq_lengths(seq.latent, seq.clip, seq.sync)
            make_differentiable(gen)
            make_patches_differentiable(pipe.generator_patches + tuple(extra_patches))
            velocity = _guided_velocity(pipe, gen, features, neg_clip.clone(), seq, config.cfg_strength)
            start = initial_noise(1, seq.latent, gen.latent_dim, seed=config.seed, device=pipe.device,
                                  dtype=gen_dtype).float()
            radius = start.norm()
            z = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=config.opt_lr)
            best_loss, best_z = math.inf, start.clone()
            grid = time_grid(config.n_ode_steps)
            curve = _LossPreview(enabled=hooks.preview is not None)
            for step in range(config.n_opt_steps):
                opt.zero_grad(set_to_none=True)
                x1 = _integrate(velocity, z.to(gen_dtype), grid, config.n_grad_steps)
                mel = vae.decode(gen.unnormalize(x1).to(vae_dtype).transpose(1, 2))
                loss = style_loss(mel, target, config.style_weight)
                if config.anchor_weight:  # 0: exactly the style loss, as before
                    loss = loss + config.anchor_weight * (z - start).pow(2).mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise SelvaError(f"DITTO's style loss became {value} at step {step + 1}. Lower "
                                     f"opt_lr, or load the model in fp32 or bf16 instead of fp16.")
                losses.append(value)
                if value < best_loss:
                    best_loss, best_z = value, z.detach().clone()
                loss.backward()
                if not torch.isfinite(z.grad).all():
                    raise SelvaError(f"DITTO's gradient overflowed at step {step + 1}; lower opt_lr "
                                     f"or n_grad_steps, or load the model in fp32/bf16.")
                opt.step()
                with torch.no_grad():
                    z.mul_(radius / z.norm())  # back onto the Gaussian shell
                log.info("DITTO step %d/%d: style loss %.5f", step + 1, config.n_opt_steps, value)
                hooks.step("DITTO", step + 1, config.n_opt_steps,
                           image=curve.image(losses, last=step + 1 == config.n_opt_steps))
    return best_z.to(gen_dtype), losses, best_loss


class _LossPreview:
    """The style-loss curve as the progress preview, re-drawn at most every couple of seconds."""

    def __init__(self, enabled: bool, every_s: float = 2.0):
        self.enabled, self.every_s, self._last = enabled, every_s, -math.inf

    def image(self, losses: list[float], last: bool = False):
        now = time.monotonic()
        if not self.enabled or (not last and now - self._last < self.every_s):
            return None
        self._last = now
        from ..train.plots import loss_curve_image

        return loss_curve_image(losses, smoothed=False, title="DITTO style loss")


def _guided_velocity(pipe: "SelvaPipeline", gen, features: Features, neg_clip: torch.Tensor, seq,
                     cfg_strength: float):
    """v(t, x) with classifier-free guidance, conditions projected once (they need no gradient)."""
    with torch.no_grad():
        dtype = pipe.stage_dtype("generator")
        inputs = conditioning.condition_inputs(features, seq, pipe.device, dtype).cloned()
        cond, uncond = conditioning.guided(gen, inputs, neg_clip, pipe.device, dtype)
    return lambda t, x: gen.cfg_velocity(t, x, cond, uncond, cfg_strength)


def _integrate(velocity, x: torch.Tensor, grid: torch.Tensor, n_grad_steps: int) -> torch.Tensor:
    """Euler from t=0 to 1; straight-through early steps, checkpointed differentiated late ones."""
    n = len(grid) - 1
    for i in range(n):
        t, dt = float(grid[i]), (grid[i + 1] - grid[i])
        if i < n - n_grad_steps:
            with torch.no_grad():
                v = velocity(t, x.detach())
            x = x + dt * v  # v is a constant here: the gradient passes straight through
        else:
            x = x + dt * checkpoint(velocity, t, x, use_reentrant=False)
    return x
