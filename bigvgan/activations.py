"""Periodic activations (Snake / SnakeBeta) and the anti-aliased wrapper BigVGAN puts around them.

Pure PyTorch; the optional fused CUDA kernel of BigVGAN v2 is deliberately not used (the torch
path is what the reference runs with ``use_cuda_kernel=False``).

Attribute names (``alpha``, ``beta``, ``act``, ``upsample.filter``, ``downsample.lowpass.filter``)
equal the released checkpoints' keys.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

# Added to the divisor so an (almost) zero magnitude parameter never divides by zero.
_DIV_EPS = 1e-9

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _snake(x: torch.Tensor, freq: torch.Tensor, mag: torch.Tensor, logscale: bool) -> torch.Tensor:
    """x + sin^2(freq * x) / mag, with per-channel parameters broadcast over [B, C, T]."""
    out_dtype = x.dtype
    if out_dtype in _LOW_PRECISION:
        # exp() of the log-scale parameters and 1/mag leave the half range easily, and the
        # epsilon vanishes in fp16: evaluate in fp32 and return in the caller's dtype.
        x, freq, mag = x.float(), freq.float(), mag.float()
    freq = freq[None, :, None]
    mag = mag[None, :, None]
    if logscale:
        freq = torch.exp(freq)
        mag = torch.exp(mag)
    y = x + (1.0 / (mag + _DIV_EPS)) * torch.sin(x * freq).pow(2)
    return y.to(out_dtype)


class Snake(nn.Module):
    """Snake activation: the same parameter sets the frequency and the magnitude."""

    def __init__(self, channels: int, *, alpha_logscale: bool = False) -> None:
        super().__init__()
        self.in_features = channels
        self.alpha_logscale = alpha_logscale
        # log-scale parameters start at 0 (= 1 after exp), linear ones at 1.
        init = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _snake(x, self.alpha, self.alpha, self.alpha_logscale)


class SnakeBeta(nn.Module):
    """Snake with separate frequency (alpha) and magnitude (beta) parameters."""

    def __init__(self, channels: int, *, alpha_logscale: bool = False) -> None:
        super().__init__()
        self.in_features = channels
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(channels) if alpha_logscale else torch.ones(channels)
        self.alpha = nn.Parameter(init.clone())
        self.beta = nn.Parameter(init.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _snake(x, self.alpha, self.beta, self.alpha_logscale)


def make_activation(kind: str, channels: int, logscale: bool) -> nn.Module:
    if kind == "snake":
        return Snake(channels, alpha_logscale=logscale)
    if kind == "snakebeta":
        return SnakeBeta(channels, alpha_logscale=logscale)
    raise ValueError(f"unknown BigVGAN activation {kind!r}; expected 'snake' or 'snakebeta'")


def _kaiser_beta(half_size: int, half_width: float) -> float:
    """Kaiser window shape for the requested transition band (the standard empirical formula)."""
    attenuation = 2.285 * (half_size - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        return 0.1102 * (attenuation - 8.7)
    if attenuation >= 21.0:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    return 0.0


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Windowed-sinc low-pass filter of shape [1, 1, kernel_size], normalised to unit DC gain.

    Always a (fresh) CPU float32 tensor, also while a network is being built on the meta device:
    the taps are tiny, and the loaded checkpoint replaces them anyway.
    """
    return _kaiser_sinc_filter_cpu(cutoff, half_width, kernel_size).clone()


@lru_cache(maxsize=None)
def _kaiser_sinc_filter_cpu(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    cpu = torch.device("cpu")
    half_size = kernel_size // 2
    window = torch.kaiser_window(kernel_size, beta=_kaiser_beta(half_size, half_width),
                                 periodic=False, device=cpu)
    if kernel_size % 2 == 0:
        # even length: taps sit half-way between samples
        taps = torch.arange(-half_size, half_size, device=cpu) + 0.5
    else:
        taps = torch.arange(kernel_size, device=cpu) - half_size
    if cutoff == 0:
        raise ValueError("a zero cutoff gives an all-zero filter")
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * taps)
    # unit DC gain, so a constant signal passes unchanged
    filt /= filt.sum()
    return filt.view(1, 1, kernel_size)


class LowPassFilter1d(nn.Module):
    """Depthwise low-pass filter with edge-replicating padding (optionally strided)."""

    def __init__(self, *, cutoff: float = 0.5, half_width: float = 0.6, stride: int = 1,
                 kernel_size: int = 12) -> None:
        super().__init__()
        if not 0.0 <= cutoff <= 0.5:
            raise ValueError(f"cutoff must be within [0, 0.5], got {cutoff}")
        self.kernel_size = kernel_size
        self.stride = stride
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        return F.conv1d(x, weight, stride=self.stride, groups=channels)


class UpSample1d(nn.Module):
    """Zero-stuffing upsampler followed by the low-pass filter (as one transposed conv)."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.kernel_size = int(6 * ratio // 2) * 2 if kernel_size is None else kernel_size
        self.stride = ratio
        # replicate-pad the input, then crop the transposed conv's output back to T * ratio
        self.pad = self.kernel_size // ratio - 1
        self.pad_left = self.pad * ratio + (self.kernel_size - ratio) // 2
        self.pad_right = self.pad * ratio + (self.kernel_size - ratio + 1) // 2
        self.register_buffer(
            "filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        weight = self.filter.to(x.dtype).expand(channels, -1, -1)
        # the ratio factor restores the energy lost to the inserted zeros
        x = self.ratio * F.conv_transpose1d(x, weight, stride=self.stride, groups=channels)
        return x[..., self.pad_left:-self.pad_right]


class DownSample1d(nn.Module):
    """Low-pass filter then keep every ``ratio``-th sample."""

    def __init__(self, ratio: int = 2, kernel_size: int | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.kernel_size = int(6 * ratio // 2) * 2 if kernel_size is None else kernel_size
        self.lowpass = LowPassFilter1d(cutoff=0.5 / ratio, half_width=0.6 / ratio, stride=ratio,
                                       kernel_size=self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample, apply the nonlinearity, low-pass and downsample.

    Running the periodic nonlinearity at twice the rate keeps the harmonics it creates from
    folding back into the audible band.
    """

    def __init__(self, activation: nn.Module, *, up_ratio: int = 2, down_ratio: int = 2,
                 up_kernel_size: int = 12, down_kernel_size: int = 12) -> None:
        super().__init__()
        self.up_ratio = up_ratio
        self.down_ratio = down_ratio
        self.act = activation
        self.upsample = UpSample1d(up_ratio, up_kernel_size)
        self.downsample = DownSample1d(down_ratio, down_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))
