"""GAFilter: a learnable per-channel FIR filter after each anti-aliased activation of the
vocoder's residual blocks (the "GAFilter" of AF-Vocoder, Interspeech 2025).

Each filter is a depthwise convolution of odd length that starts as the identity (a unit tap in
the middle), so a tuning run starts from the pretrained sound; training then shapes each
channel's frequency response, which can remove harmonic artefacts the Snake parameters alone
cannot. The filter is attached to the existing ``Activation1d`` modules as a ``gafilter`` child
run by a forward hook: the Snake parameters keep their names, and the filter weights are saved
as ``resblocks.<i>.activations.<j>.gafilter.weight``. A tuned file holding such weights gets the
filters attached again when it is loaded (their length read from the weights).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelvaError

_KEY = re.compile(r"^(resblocks\.\d+\.activations\.\d+)\.gafilter\.weight$")


class GAFilter(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise SelvaError(f"gafilter_kernel_size must be an odd number, got {kernel_size}.")
        weight = torch.zeros(channels, 1, kernel_size)
        weight[:, 0, kernel_size // 2] = 1.0  # identity: the pretrained vocoder's output
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[-1]
        return F.conv1d(x, self.weight.to(x.dtype), padding=k // 2, groups=self.weight.shape[0])


def _run_filter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.gafilter(output)


def _activations(vocoder: nn.Module):
    for block in getattr(vocoder, "resblocks", []):
        yield from getattr(block, "activations", [])


def attach_gafilters(vocoder: nn.Module, kernel_size: int) -> int:
    """Attach an identity GAFilter after every residual-block activation; returns how many."""
    if any(hasattr(act, "gafilter") for act in _activations(vocoder)):
        raise SelvaError("This vocoder already has GAFilters attached.")
    count = 0
    device = next(vocoder.parameters()).device
    for act in _activations(vocoder):
        channels = _channels(act)
        with torch.inference_mode(False):
            act.gafilter = GAFilter(channels, kernel_size).to(device)
        act.register_forward_hook(_run_filter)
        count += 1
    if not count:
        raise SelvaError("This vocoder has no residual-block activations to put GAFilters after.")
    return count


def _channels(act: nn.Module) -> int:
    for p in act.parameters():  # the Snake alpha: one per channel
        return int(p.shape[0])
    raise SelvaError("A vocoder activation without parameters cannot take a GAFilter.")


def gafilter_kernel_size(tensors: Mapping[str, torch.Tensor]) -> int:
    """The filter length of a tuned file's GAFilters (0 when it has none)."""
    sizes = {int(v.shape[-1]) for k, v in tensors.items() if _KEY.match(k)}
    if len(sizes) > 1:
        raise SelvaError(f"The file's GAFilters have different lengths {sorted(sizes)}; it is damaged.")
    return sizes.pop() if sizes else 0
