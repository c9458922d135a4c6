"""Spectral surgery: after training, re-weight each LoRA update's singular components by how the
training loss responds to them.

A trained pair gives the update ``dW = s * up @ down`` (rank r; conv kernels flattened). With its
SVD ``dW = sum_k sigma_k u_k v_k^T``, the loss's derivative along component k is
``g_k = u_k^T G v_k`` with ``G = dL/d(dW)``. It is computed exactly from the gradient of ``up``:
``dL/d(up) = s * G @ down^T``, and each ``v_k`` lies in the row space of ``down``
(``v_k = down^T c_k``), so ``G v_k = dL/d(up) @ c_k / s``. The gradients are summed over a few
calibration batches of the training data.

A component whose growth would raise the loss (``g_k > 0``) is shrunk, one whose growth would
lower it is kept or grown: weights ``w_k = sigmoid(-5 g_k / max|g|)``, rescaled so that
``sum w_k sigma_k = sum sigma_k`` (the update's nuclear norm stays), then the pair is rebuilt
from ``U diag(w sigma) V^T``. Off unless asked: it changes the trained adapter.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

log = logging.getLogger(__name__)

SHARPNESS = 5.0


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().reshape(t.shape[0], -1)


def component_sensitivity(up: torch.Tensor, down: torch.Tensor, grad_up: torch.Tensor, scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, sigma_r, Vh_r, g) of ``dW = scale * up @ down``: its top-r SVD and the loss's
    derivative along each component, from ``grad_up`` = dL/d(up)."""
    up_f, down_f, grad_f = _flat(up), _flat(down), _flat(grad_up)  # (O, r), (r, I), (O, r)
    r = down_f.shape[0]
    u, s, vh = torch.linalg.svd(scale * up_f @ down_f, full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    # c_k with down^T c_k = v_k (exact: v_k is in down's row space whenever sigma_k > 0)
    c = torch.linalg.lstsq(down_f.T, vh.T).solution  # (r, r)
    g = torch.einsum("ok,or,rk->k", u, grad_f, c) / scale
    return u, s, vh, g


def reweighted_pair(up: torch.Tensor, down: torch.Tensor, grad_up: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New (up, down) in the input's shapes and dtype, and the weights applied to the components."""
    u, s, vh, g = component_sensitivity(up, down, grad_up, scale)
    w = torch.sigmoid(-SHARPNESS * g / g.abs().max().clamp_min(1e-12))
    w = w * (s.sum() / (w * s).sum().clamp_min(1e-12))
    root = (w * s / scale).clamp_min(0).sqrt()
    new_up = (u * root).reshape(up.shape).to(up.dtype)
    new_down = (root[:, None] * vh).reshape(down.shape).to(down.dtype)
    return new_up, new_down, w


def spectral_surgery(layers: Iterable[tuple[str, torch.nn.Parameter, torch.nn.Parameter, float]],
                     calibrate: Callable[[int], torch.Tensor], samples: int) -> None:
    """Re-weight every (name, up, down, scale) pair in place; ``calibrate(i)`` returns the loss
    of calibration batch ``i`` (its gradients reach the ``up`` tensors)."""
    layers = list(layers)
    if not layers or samples < 1:
        return
    for _, up, _, _ in layers:
        up.grad = None
    for i in range(samples):
        (calibrate(i) / samples).backward()
    with torch.no_grad():
        for name, up, down, scale in layers:
            if up.grad is None:
                continue
            new_up, new_down, w = reweighted_pair(up, down, up.grad, scale)
            up.copy_(new_up)
            down.copy_(new_down)
            log.debug("spectral surgery %s: weights %s", name, [round(float(v), 3) for v in w])
    for _, up, down, _ in layers:
        up.grad = down.grad = None
    log.info("Spectral surgery: %d LoRA layers re-weighted from %d calibration batches.", len(layers), samples)
