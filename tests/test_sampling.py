"""Euler rectified-flow sampler and the seeded initial noise."""
from __future__ import annotations

import pytest
import torch

from comfyui_selva.selva.errors import SelvaError
from comfyui_selva.selva.sampling import euler_sample, initial_noise, time_grid


def test_time_grid_is_the_float32_linspace():
    grid = time_grid(25)
    assert grid.dtype == torch.float32
    assert torch.equal(grid, torch.linspace(0, 1, 26))
    assert grid[0].item() == 0.0 and grid[-1].item() == 1.0


def test_constant_velocity_moves_by_one_unit():
    x0 = torch.randn(2, 5, 3)
    v = torch.randn(2, 5, 3)
    for steps in (1, 7, 25):
        x1 = euler_sample(lambda t, x: v, x0, steps)
        torch.testing.assert_close(x1, x0 + v, rtol=0, atol=1e-5)


def test_linear_velocity_matches_discrete_euler_product():
    # dx/dt = a x: each Euler step multiplies by (1 + a dt), i.e. (1 + a/N)^N, not exp(a).
    a, steps = 0.7, 10
    x0 = torch.randn(4, 3, dtype=torch.float64)
    x1 = euler_sample(lambda t, x: a * x, x0, steps)
    torch.testing.assert_close(x1, x0 * (1 + a / steps)**steps, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(x1, x0 * torch.exp(torch.tensor(a, dtype=torch.float64)))


def test_velocity_sees_left_end_times_as_python_floats():
    seen = []

    def velocity(t, x):
        seen.append(t)
        return torch.full_like(x, t)

    x1 = euler_sample(velocity, torch.zeros(1), 4)
    assert all(type(t) is float for t in seen)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    # Left Riemann sum of t over [0, 1] with 4 steps.
    assert x1.item() == pytest.approx(sum(t * 0.25 for t in seen))


def test_on_step_reports_every_step_and_can_interrupt():
    calls = []
    euler_sample(lambda t, x: x, torch.ones(2), 6, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 6) for i in range(1, 7)]

    evaluated = []

    def stop_after_two(i, n):
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        euler_sample(lambda t, x: evaluated.append(t) or x, torch.ones(2), 6, on_step=stop_after_two)
    assert len(evaluated) == 2


def test_zero_steps_is_an_error():
    with pytest.raises(SelvaError):
        euler_sample(lambda t, x: x, torch.ones(1), 0)


def test_update_keeps_latent_dtype():
    x0 = torch.randn(1, 4, 2, dtype=torch.bfloat16)
    assert euler_sample(lambda t, x: x, x0, 3).dtype == torch.bfloat16


def test_single_noise_equals_the_reference_draw():
    got = initial_noise(1, 13, 5, seed=42, device="cpu", dtype=torch.float32)
    want = torch.randn((1, 13, 5), generator=torch.Generator("cpu").manual_seed(42),
                       dtype=torch.float32)
    assert torch.equal(got, want)


def test_batch_item_i_equals_a_single_run_with_seed_plus_i():
    batch = initial_noise(3, 9, 4, seed=1234, device="cpu", dtype=torch.float32)
    assert batch.shape == (3, 9, 4)
    for i in range(3):
        single = initial_noise(1, 9, 4, seed=1234 + i, device="cpu", dtype=torch.float32)
        assert torch.equal(batch[i:i + 1], single)
    assert not torch.equal(batch[0], batch[1])


def test_noise_dtype_and_large_seeds():
    half = initial_noise(2, 3, 2, seed=7, device=torch.device("cpu"), dtype=torch.float16)
    assert half.dtype == torch.float16
    top = 2**64 - 1
    wrapped = initial_noise(2, 3, 2, seed=top, device="cpu", dtype=torch.float32)
    assert torch.equal(wrapped[1:], initial_noise(1, 3, 2, seed=0, device="cpu",
                                                  dtype=torch.float32))
