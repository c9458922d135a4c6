"""BigVGAN v1 as SelVA's 16 kHz vocoder uses it (``ext_weights/best_netG.pt``, 80 mel bands).

The released generator always ends in tanh and has a bias on its last conv.
"""
from __future__ import annotations

from dataclasses import dataclass

from .generator import BigVGANGenerator, UpsamplingHop


@dataclass(frozen=True)
class BigVGANv1Config(UpsamplingHop):
    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    activation: str = "snakebeta"
    snake_logscale: bool = True
    sampling_rate: int = 16_000

    # v1 has no switches for these; they are fixed so the shared generator can read them
    @property
    def use_bias_at_final(self) -> bool:
        return True

    @property
    def use_tanh_at_final(self) -> bool:
        return True


# The values of the reference's bigvgan_vocoder.yml (hop 256 at 16 kHz).
BIGVGAN_V1_16K = BigVGANv1Config()


class BigVGANv1(BigVGANGenerator):
    """16 kHz BigVGAN v1: mel [B, 80, T] (log10 mel of MEL_16K) -> waveform [B, 1, T * 256]."""

    def __init__(self, cfg: BigVGANv1Config = BIGVGAN_V1_16K) -> None:
        super().__init__(cfg)
