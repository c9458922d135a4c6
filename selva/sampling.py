"""Rectified-flow sampling: the fixed-step Euler integrator and the initial noise.

Both reproduce the reference (``FlowMatching(min_sigma=0, inference_mode='euler')`` and the
noise draw of ``generate()``) bit for bit, so a seed gives the same audio as the official code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .errors import SelvaError

VelocityFn = Callable[[float, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]

_SEED_MODULUS = 1 << 64  # torch.Generator.manual_seed accepts unsigned 64-bit seeds


def time_grid(steps: int, start: float = 0.0) -> torch.Tensor:
    """The ``steps + 1`` float32 times ``start`` .. 1 (the reference integrates from 0)."""
    if steps < 1:
        raise SelvaError(f"the number of sampling steps must be at least 1, got {steps}")
    return torch.linspace(float(start), 1.0, steps + 1, dtype=torch.float32)


@dataclass(frozen=True)
class FlowSchedule:
    """Editing's changes to the plain integration: a later start and latent frames held known.

    ``start`` is the flow time t0 the integration starts from (0 = pure noise, the plain
    Sampler); the step count then covers [t0, 1]. Where ``hold`` is 1, the latent is set to the
    ``known`` latent re-noised to the current time with ``noise`` -- (1 - t) noise + t known --
    before every step and to ``known`` itself at the end (inpainting / continuation). ``known``
    and ``noise`` are (B | 1, L, C) in the generator's normalised space; ``hold`` is (L,).
    """

    start: float = 0.0
    known: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    hold: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < 1.0:
            raise SelvaError(f"The flow start time must be within [0, 1), got {self.start}.")
        if (self.hold is None) != (self.known is None) or (self.hold is not None and self.noise is None):
            raise SelvaError("A held latent needs the known latent, its noise and the hold mask together.")

    def held(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its held frames set to the known latent at time ``t``."""
        if self.hold is None:
            return x
        tt = torch.tensor(t, dtype=torch.float32)
        target = self.known if t >= 1.0 else (1 - tt) * self.noise + tt * self.known
        mask = self.hold.to(x.device, torch.bool)[None, :, None]
        return torch.where(mask, target.to(x.device, x.dtype), x)


def euler_sample(velocity_fn: VelocityFn,
                 x0: torch.Tensor,
                 steps: int,
                 *,
                 on_step: Optional[StepCallback] = None,
                 schedule: Optional[FlowSchedule] = None) -> torch.Tensor:
    """Integrate ``dx/dt = velocity_fn(t, x)`` from noise ``x0`` at t=0 to data at t=1.

    ``velocity_fn`` receives the step's start time as a Python float (exactly the float32 grid
    value). ``on_step(done, steps)`` runs after each step with ``done`` = 1..steps; an exception
    it raises (e.g. an interrupt) stops sampling and propagates. ``schedule`` (editing) starts at
    a later time -- ``x0`` is then the state at that time -- and/or holds known latent frames.
    """
    grid = time_grid(steps, 0.0 if schedule is None else schedule.start)
    x = x0
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        if schedule is not None:
            x = schedule.held(float(t), x)
        velocity = velocity_fn(float(t), x)
        # dt stays a float32 0-d tensor, as in the reference: the update then runs in x's dtype
        # with the float32 step size.
        x = x + (t_next - t) * velocity
        if on_step is not None:
            on_step(i + 1, steps)
    if schedule is not None:
        x = schedule.held(1.0, x)
    return x


def initial_noise(batch: int,
                  seq_len: int,
                  dim: int,
                  *,
                  seed: int,
                  device: torch.device | str,
                  dtype: torch.dtype) -> torch.Tensor:
    """Standard normal ``(batch, seq_len, dim)`` noise, one generator per batch item.

    Item ``i`` is what the reference draws for a single clip with seed ``seed + i`` (mod 2**64),
    so batch variations can be reproduced one by one.
    """
    if batch < 1:
        raise SelvaError(f"batch size must be at least 1, got {batch}")
    device = torch.device(device)
    draws = []
    for i in range(batch):
        gen = torch.Generator(device).manual_seed((int(seed) + i) % _SEED_MODULUS)
        draws.append(torch.randn((1, seq_len, dim), generator=gen, device=device, dtype=dtype))
    return torch.cat(draws, dim=0)
