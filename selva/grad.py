"""Differentiating through frozen networks that ComfyUI loaded inside ``torch.inference_mode``.

Tensors created under inference mode (weights loaded by a node, or moved between devices by
the offload manager while a node ran) cannot be saved for backward, so autograd refuses any
graph through them. :func:`make_differentiable` swaps such tensors for ordinary copies of the
same values in place (a new ``Parameter`` object: one made under inference mode has no version
counter, so even a view of it fails outside inference mode). Modules keep their identity, so
hooks on them stay valid, and outputs stay bit-identical, so plain sampling is unaffected.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def make_differentiable(module: nn.Module) -> nn.Module:
    """Replace every inference-mode parameter / buffer of ``module`` by a normal copy.

    Must run outside inference mode (the copies would be inference tensors again).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("make_differentiable must run outside torch.inference_mode()")
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and param.is_inference():
                sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=param.requires_grad)
        for name, buf in sub._buffers.items():
            if buf is not None and buf.is_inference():
                sub._buffers[name] = buf.clone()
    return module


def make_patches_differentiable(patches: Iterable[object]) -> None:
    """:func:`make_differentiable` for the networks generator patches hold.

    A patch (a LoRA's frozen weights, say) may have built its tensors during an earlier Sampler
    run inside inference mode; differentiating through the patched generator needs ordinary
    tensors there too. Patches are opaque objects, so their attributes are searched for modules.
    """
    for patch in patches:
        for value in getattr(patch, "__dict__", {}).values():
            if isinstance(value, nn.Module):
                make_differentiable(value)
