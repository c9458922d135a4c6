"""Which vocoder tensors train, and a trainable copy of a (possibly inference-mode) vocoder."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SelvaError

TRAIN_MODES = ("snake_alpha_only", "all_params")
# Snake / SnakeBeta hold their learnable frequency in ``alpha`` and magnitude in ``beta``.
SNAKE_PARAM_NAMES = ("alpha", "beta")


def check_train_mode(mode: str) -> str:
    if mode not in TRAIN_MODES:
        raise SelvaError(f"Unknown train_mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}.")
    return mode


def is_snake_parameter(name: str) -> bool:
    """True for the ``alpha`` / ``beta`` of a Snake or SnakeBeta activation (``...act.alpha``)."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] in SNAKE_PARAM_NAMES and parts[-2] == "act"


def is_gafilter_parameter(name: str) -> bool:
    """True for an attached GAFilter's weight (selva/vocoder_tuning/gafilter.py)."""
    return name.endswith(".gafilter.weight")


def trainable_parameters(vocoder: nn.Module, mode: str) -> dict[str, nn.Parameter]:
    """The parameters ``mode`` trains, by name. ``snake_alpha_only``: only the periodic
    activations' alpha and beta (54,480 numbers in both released vocoders, setting each channel's frequency
    response: the timbre moves while the learned filters stay); ``all_params``: everything.
    Attached GAFilters train in both modes."""
    check_train_mode(mode)
    params = dict(vocoder.named_parameters())
    if mode == "all_params":
        return params
    picked = {n: p for n, p in params.items() if is_snake_parameter(n) or is_gafilter_parameter(n)}
    if not picked:
        raise SelvaError("This vocoder has no Snake/SnakeBeta alpha or beta parameters to tune; "
                         "use train_mode all_params.")
    return picked


def clone_vocoder(vocoder: nn.Module, device: torch.device) -> nn.Module:
    """A new network with copies of ``vocoder``'s tensors on ``device`` (floats in fp32), frozen.

    ComfyUI loads networks inside ``torch.inference_mode()``: their tensors cannot take part in
    autograd (nor be changed outside it), so every tensor is cloned outside inference mode.
    """
    with torch.inference_mode(False):
        with torch.device("meta"):
            copy = type(vocoder)(vocoder.cfg)
        state = {k: v.detach().to(device, torch.float32 if v.is_floating_point() else v.dtype).clone()
                 for k, v in vocoder.state_dict().items()}
        copy.load_state_dict(state, strict=True, assign=True)
    return copy.eval().requires_grad_(False)


def trainable_copy(vocoder: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """:func:`clone_vocoder` whose ``mode`` parameters require grad, in training mode."""
    copy = clone_vocoder(vocoder, device)
    with torch.inference_mode(False):
        for p in trainable_parameters(copy, mode).values():
            p.requires_grad_(True)
    return copy.train()


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached copies of ``params``: the anchor L2-SP pulls back toward."""
    with torch.inference_mode(False):
        return {n: p.detach().clone() for n, p in params.items()}
