"""The BigVGAN generator shared by v1 (16 kHz, Make-An-Audio 2 weights) and v2 (NVIDIA 44 kHz).

Both versions have the same layer graph; v2 only adds two switches (bias on the last conv, tanh
or clamp at the end). Convolutions are plain ``nn.Conv1d`` / ``nn.ConvTranspose1d``: the released
files store weight-norm factors, which ``bigvgan.loading`` folds into plain weights before the
strict load - the inference-time state the reference reaches with ``remove_weight_norm()``.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
from torch import nn

from .activations import Activation1d, make_activation


class GeneratorConfig(Protocol):
    """The hyperparameters the generator reads (both config dataclasses provide them)."""

    num_mels: int
    upsample_rates: Sequence[int]
    upsample_kernel_sizes: Sequence[int]
    upsample_initial_channel: int
    resblock: str
    resblock_kernel_sizes: Sequence[int]
    resblock_dilation_sizes: Sequence[Sequence[int]]
    activation: str
    snake_logscale: bool
    use_bias_at_final: bool
    use_tanh_at_final: bool


class UpsamplingHop:
    """Config mixin: waveform samples per mel frame, the product of the upsampling rates."""

    upsample_rates: Sequence[int]

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


def _dilated_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation,
                     padding=_same_padding(kernel_size, dilation))


def _anti_aliased(kind: str, channels: int, logscale: bool) -> Activation1d:
    return Activation1d(make_activation(kind, channels, logscale))


class AMPBlock1(nn.Module):
    """Residual block: per dilation, act -> dilated conv -> act -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int], *,
                 activation: str, logscale: bool) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_dilated_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_dilated_conv(channels, kernel_size, 1) for _ in dilations)
        n_acts = 2 * len(dilations)
        # interleaved: even entries precede convs1[i], odd entries precede convs2[i]
        self.activations = nn.ModuleList(
            _anti_aliased(activation, channels, logscale) for _ in range(n_acts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv_a, conv_b) in enumerate(zip(self.convs1, self.convs2)):
            h = conv_a(self.activations[2 * i](x))
            h = conv_b(self.activations[2 * i + 1](h))
            x = h + x
        return x


class AMPBlock2(nn.Module):
    """Lighter residual block: one act -> dilated conv per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int], *,
                 activation: str, logscale: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_dilated_conv(channels, kernel_size, d) for d in dilations)
        self.activations = nn.ModuleList(
            _anti_aliased(activation, channels, logscale) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations):
            x = conv(act(x)) + x
        return x


_RESBLOCKS = {"1": AMPBlock1, "2": AMPBlock2}


class BigVGANGenerator(nn.Module):
    """Mel spectrogram [B, num_mels, T] -> waveform [B, 1, T * hop_length] in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.resblock not in _RESBLOCKS:
            raise ValueError(f"resblock must be '1' or '2', got {cfg.resblock!r}")
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.num_upsamples = len(cfg.upsample_rates)
        self.hop_length = math.prod(cfg.upsample_rates)
        base = cfg.upsample_initial_channel

        self.conv_pre = nn.Conv1d(cfg.num_mels, base, 7, 1, padding=3)

        # each stage is wrapped in a one-element ModuleList: the checkpoints say ups.<i>.0.*
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            upsampler = nn.ConvTranspose1d(base // 2 ** i, base // 2 ** (i + 1), kernel, rate,
                                           padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([upsampler]))

        block_cls = _RESBLOCKS[cfg.resblock]
        self.resblocks = nn.ModuleList()
        channels = base
        for i in range(self.num_upsamples):
            channels = base // 2 ** (i + 1)
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(block_cls(channels, kernel, dilations,
                                                activation=cfg.activation,
                                                logscale=cfg.snake_logscale))

        self.activation_post = _anti_aliased(cfg.activation, channels, cfg.snake_logscale)
        self.conv_post = nn.Conv1d(channels, 1, 7, 1, padding=3, bias=cfg.use_bias_at_final)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i in range(self.num_upsamples):
            x = self.ups[i][0](x)
            # multi-receptive-field fusion: mean of the stage's parallel residual blocks
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            acc = blocks[0](x)
            for block in blocks[1:]:
                acc = acc + block(x)
            x = acc / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        if self.cfg.use_tanh_at_final:
            return torch.tanh(x)
        return x.clamp(-1.0, 1.0)
