"""Rectified-flow sampling: the fixed-step Euler integrator and the initial noise.

Both reproduce the reference (``FlowMatching(min_sigma=0, inference_mode='euler')`` and the
noise draw of ``generate()``) bit for bit, so a seed gives the same audio as the official code.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .errors import SelvaError

VelocityFn = Callable[[float, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]

_SEED_MODULUS = 1 << 64  # torch.Generator.manual_seed accepts unsigned 64-bit seeds


def time_grid(steps: int) -> torch.Tensor:
    """The ``steps + 1`` float32 times 0 .. 1 the reference integrates over."""
    if steps < 1:
        raise SelvaError(f"the number of sampling steps must be at least 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)


def euler_sample(velocity_fn: VelocityFn,
                 x0: torch.Tensor,
                 steps: int,
                 *,
                 on_step: Optional[StepCallback] = None) -> torch.Tensor:
    """Integrate ``dx/dt = velocity_fn(t, x)`` from noise ``x0`` at t=0 to data at t=1.

    ``velocity_fn`` receives the step's start time as a Python float (exactly the float32 grid
    value). ``on_step(done, steps)`` runs after each step with ``done`` = 1..steps; an exception
    it raises (e.g. an interrupt) stops sampling and propagates.
    """
    grid = time_grid(steps)
    x = x0
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        velocity = velocity_fn(float(t), x)
        # dt stays a float32 0-d tensor, as in the reference: the update then runs in x's dtype
        # with the float32 step size.
        x = x + (t_next - t) * velocity
        if on_step is not None:
            on_step(i + 1, steps)
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
