"""The training loop's schedule, exactly: learning-rate warm-up step by step, the gradient-norm
clipping bound, and every random generator's state through a checkpoint file and back."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from comfyui_selva.selva.train import loop as L
from comfyui_selva.selva.train.files import save_torch


class ConstantGradient(L.TrainTask):
    """loss = scale * sum(w): the gradient is ``scale`` everywhere, whatever w is."""

    def __init__(self, dim: int = 4, scale: float = 1.0):
        self.w = torch.nn.Parameter(torch.zeros(dim))
        self.scale = scale

    def trainable_parameters(self):
        return [self.w]

    def num_items(self):
        return 2

    def loss(self, batch):
        return torch.stack([self.scale * self.w.sum() for _ in batch.indices])

    def describe(self):
        return {}

    def export(self, run_dir, tag):
        return None


def _cfg(**kw):
    base = dict(steps=6, lr=0.03, warmup_steps=4, batch_size=1, grad_accum=1, save_every=0, seed=0,
                run_name="sched", eval_samples=False, max_grad_norm=0.0)
    base.update(kw)
    return L.LoopConfig(**base)


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_warm_up_rises_linearly_from_lr_over_warmup_to_lr_step_by_step(tmp_path, warmup):
    task = ConstantGradient()
    moved, reported = [], []
    before = [task.w.detach().clone()]

    def on_step(info):
        moved.append(float((before[-1] - task.w.detach()).mean()))
        before.append(task.w.detach().clone())
        reported.append(info.lr)

    L.run_training(task, _cfg(warmup_steps=warmup), tmp_path, on_step=on_step)
    expected = [0.03 * min(1.0, k / warmup) if warmup else 0.03 for k in range(1, 7)]
    # AdamW's first moves under a constant gradient are exactly the learning rate (no decay)
    assert moved == pytest.approx(expected, rel=1e-6)
    assert reported == pytest.approx(expected, rel=1e-12)  # the lr each step really used


def _grad_norms_seen_by_the_optimizer(monkeypatch):
    seen = []
    real = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return seen


@pytest.mark.parametrize("bound,scale,expected", [
    (0.5, 3.0, 0.5),  # |g| = 3 * sqrt(4) = 6 > 0.5: scaled down to exactly the bound
    (100.0, 3.0, 6.0),  # under the bound: untouched
    (0.0, 3.0, 6.0),  # 0 = no clipping
])
def test_gradient_norm_is_clipped_to_the_bound(tmp_path, monkeypatch, bound, scale, expected):
    seen = _grad_norms_seen_by_the_optimizer(monkeypatch)
    L.run_training(ConstantGradient(scale=scale), _cfg(steps=3, max_grad_norm=bound), tmp_path)
    assert seen == pytest.approx([expected] * 3, rel=1e-6)


def _draws():
    return (torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist(), float(np.random.normal()))


def test_every_saved_rng_state_round_trips_through_a_checkpoint_file(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # numpy now holds a cached second Gaussian: that must come back too
    assert np.random.get_state()[3] == 1
    saved = save_torch(tmp_path / "rng.pt", {"rng": L.rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    L.set_rng_state(torch.load(saved, weights_only=True)["rng"])
    assert _draws() == expected
    state = L.rng_state()
    assert set(state) >= {"torch", "python", "numpy"}
    if torch.cuda.is_available():
        assert "cuda" in state
